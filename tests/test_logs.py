"""Operator logs: a problem retried many times a second is logged once, then once a minute
with its count, and its end once (scheduler.logs.Repeating); lines a peer can provoke at will
stay few, and say how many (RateLimited, Repeats)."""

from __future__ import annotations

import logging

from scheduler.logs import RateLimited, Repeating, Repeats, setup


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeating_problem_is_one_line_then_one_a_minute_with_its_count_then_its_end(caplog):
    clock = Clock()
    problem = Repeating(logging.getLogger("t"), every=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(240):  # 0.25 s apart: 60 s
            problem.occurred("cannot reach %s", "etcd")
            clock.now += 0.25
        problem.occurred("cannot reach %s", "etcd")
        problem.over("reachable again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "cannot reach etcd"),
        ("WARNING", "cannot reach etcd (240 more times in 60 s)"),
        ("INFO", "reachable again (after 241 failed attempts in 60 s)"),
    ]


def test_a_problem_that_happened_once_ends_without_a_line_and_can_begin_again(caplog):
    clock = Clock()
    problem = Repeating(logging.getLogger("t"), level=logging.INFO, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        problem.occurred("watch ended")
        problem.over("watch open again")  # one break, mended at once: no news
        problem.over("watch open again")
        clock.now += 1
        problem.occurred("watch ended")  # a new problem: logged again
    assert [r.getMessage() for r in caplog.records] == ["watch ended", "watch ended"]
    assert all(r.levelname == "INFO" for r in caplog.records)


def test_one_line_per_key_and_interval_then_the_count_of_those_left_out(caplog):
    clock = Clock()
    limited = RateLimited(logging.getLogger("test"), interval=10.0, clock=clock)
    written = [limited.warning("peer-a", "refused %s", n) for n in range(5)]
    assert written == [True, False, False, False, False]
    assert limited.warning("peer-b", "refused %s", "b"), "another key has its own interval"
    clock.now = 10.0
    assert limited.warning("peer-a", "refused %s", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused b",
        "refused 5 (and 4 more like it since the previous such line)",
    ]


def test_keys_are_bounded_the_least_recently_logged_forgotten():
    clock = Clock()
    limited = RateLimited(logging.getLogger("test"), interval=10.0, keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        limited.warning(key, "x")
    assert len(limited._throttle._state) == 3 and "a" not in limited._throttle._state
    assert limited.warning("a", "x"), "a forgotten key logs again"


def test_asyncio_lines_a_peer_can_provoke_are_rate_limited_too(capsys, restore_logging):
    # A client that drops a connection with 100 calls being answered: one asyncio warning per
    # answer ("socket.send() raised exception.") without the filter setup() installs.
    asyncio_log = logging.getLogger("asyncio")
    setup("info")
    for _ in range(100):
        asyncio_log.warning("socket.send() raised exception.")
    lines = [line for line in capsys.readouterr().err.splitlines() if "socket.send()" in line]
    assert len(lines) == 1, lines
    assert sum(isinstance(f, Repeats) for f in asyncio_log.filters) == 1
