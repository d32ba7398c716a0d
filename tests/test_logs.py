"""scheduler.logs.RateLimited: lines a peer can provoke at will stay few, and say how many."""
from __future__ import annotations

import logging

from scheduler.logs import RateLimited


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
    assert len(limited._state) == 3 and "a" not in limited._state
    assert limited.warning("a", "x"), "a forgotten key logs again"
