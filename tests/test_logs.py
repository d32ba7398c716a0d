"""scheduler.logs.RateLimited: lines a peer can provoke at will stay few, and say how many."""
from __future__ import annotations

import logging

from scheduler.logs import RateLimited, Repeats, setup


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_and_interval_then_the_count_of_those_left_out(caplog):
    clock = Clock()
    limited = RateLimited(logging.getLogger("test"), interval=10.0, clock=clock)
    written = [limited.warning("peer-a", "refused %s", n) for n in range(5)]
    assert written == [True, False, False, False, False]
    assert limited.warning("peer-b", "refused %s", "b"), "another key has its own interval"
    clock.now = 10.0
    assert limited.warning("peer-a", "refused %s", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused b",
        "refused 5 (and 4 more like it since the previous such line)"]


def test_keys_are_bounded_the_least_recently_logged_forgotten():
    clock = Clock()
    limited = RateLimited(logging.getLogger("test"), interval=10.0, keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        limited.warning(key, "x")
    assert len(limited._throttle._state) == 3 and "a" not in limited._throttle._state
    assert limited.warning("a", "x"), "a forgotten key logs again"


def test_asyncio_lines_a_peer_can_provoke_are_rate_limited_too(capsys):
    # A client that drops a connection with 100 calls being answered: one asyncio warning per
    # answer ("socket.send() raised exception.") without the filter setup() installs.
    root, asyncio_log = logging.getLogger(), logging.getLogger("asyncio")
    handlers, level, filters = root.handlers[:], root.level, asyncio_log.filters[:]
    setup("info")
    try:
        for _ in range(100):
            asyncio_log.warning("socket.send() raised exception.")
        lines = [line for line in capsys.readouterr().err.splitlines() if "socket.send()" in line]
        assert len(lines) == 1, lines
        assert sum(isinstance(f, Repeats) for f in asyncio_log.filters) == 1
    finally:
        root.handlers[:], asyncio_log.filters[:] = handlers, filters
        root.setLevel(level)
