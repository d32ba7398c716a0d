"""Operator logs: a problem retried many times a second is logged once, then once a minute
with its count, and its end once (scheduler.logs.Repeating)."""
from __future__ import annotations

import logging

from scheduler.logs import Repeating


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

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
