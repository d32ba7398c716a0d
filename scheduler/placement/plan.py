"""A placement decision: the feasible nodes in the order to try them, and why the others fail.

`plan` decides over a `NodeTable` (vectorised, what the scheduler uses); `plan_candidates`
makes the same decision node by node in plain Python (the readable statement of the rules, the
oracle of the tests and the baseline of the benchmark). Both return a `Plan`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from scheduler.model import NO_RESOURCES, Resources
from scheduler.placement.feasible import (
    FEASIBLE, REASON_BY_CODE, REASON_CODES, Candidate, Reason, reason_codes, reject_reason,
)
from scheduler.placement.rank import Strategy, priority_order, score, scores
from scheduler.placement.table import NodeTable, column_amounts


class Plan:
    """The outcome of one decision.

    `order`: node ids to attempt, best first (at most `max_attempts`). `rejected` and `counts`
    are built on first use: the happy path needs only `order`, and a dict of 10,000 rejections
    costs more than the decision itself.
    """

    __slots__ = ("order", "feasible_count", "_rejected_ids", "_rejected_codes", "_rejected",
                 "_counts")

    def __init__(self, order: list[str], feasible_count: int, rejected_ids: Sequence[str],
                 rejected_codes: Sequence[int]):
        self.order = order
        self.feasible_count = feasible_count  # feasible nodes, including those cut from `order`
        self._rejected_ids = rejected_ids
        self._rejected_codes = rejected_codes
        self._rejected: dict[str, Reason] | None = None
        self._counts: dict[Reason, int] | None = None

    @property
    def rejected(self) -> dict[str, Reason]:
        """Each infeasible node's id and its one reason."""
        if self._rejected is None:
            codes = np.asarray(self._rejected_codes).tolist()
            self._rejected = {
                node_id: REASON_BY_CODE[code] for node_id, code in zip(self._rejected_ids, codes)
            }
        return self._rejected

    @property
    def counts(self) -> dict[Reason, int]:
        """How many nodes each reason rejected (only reasons that occurred, in check order)."""
        if self._counts is None:
            per_code = np.bincount(np.asarray(self._rejected_codes, dtype=np.int64),
                                   minlength=len(REASON_BY_CODE))
            self._counts = {
                REASON_BY_CODE[code]: int(count)
                for code, count in enumerate(per_code.tolist()) if code != FEASIBLE and count
            }
        return self._counts

    def __repr__(self) -> str:
        return f"Plan(order={self.order!r}, counts={self.counts!r})"


def _checked(request: Resources, max_attempts: int) -> None:
    if min(request.cpu or 0, request.memory or 0, request.disk or 0) < 0:
        raise ValueError(f"request must not be negative: {request}")
    if max_attempts < 0:
        raise ValueError(f"max_attempts must be >= 0 (0: every feasible node), not {max_attempts}")


def plan(
    table: NodeTable,
    request: Resources = NO_RESOURCES,
    strategy: Strategy | str = Strategy.SPREAD,
    max_attempts: int = 0,
) -> Plan:
    """Decide where `request` may go, over the table as it is now (max_attempts 0: no cut)."""
    _checked(request, max_attempts)
    strategy = Strategy(strategy)
    columns = table.columns()
    wanted = column_amounts(request)
    codes = reason_codes(columns, wanted)
    feasible_rows = np.flatnonzero(codes == FEASIBLE)
    row_scores = scores(columns, wanted)[feasible_rows]
    chosen = priority_order(columns, feasible_rows, row_scores, strategy, max_attempts)
    rejected_rows = np.flatnonzero(codes != FEASIBLE)
    # Fancy indexing copies: the plan stays valid when the table changes afterwards.
    return Plan(
        order=columns.ids[chosen].tolist(),
        feasible_count=len(feasible_rows),
        rejected_ids=columns.ids[rejected_rows],
        rejected_codes=codes[rejected_rows],
    )


def plan_candidates(
    candidates: Iterable[Candidate],
    request: Resources = NO_RESOURCES,
    strategy: Strategy | str = Strategy.SPREAD,
    max_attempts: int = 0,
) -> Plan:
    """The same decision as `plan`, node by node: slow, obviously right."""
    _checked(request, max_attempts)
    strategy = Strategy(strategy)
    sign = -1.0 if strategy is Strategy.SPREAD else 1.0
    ranked: list[tuple[float, int, str]] = []
    rejected: list[tuple[str, Reason]] = []
    for candidate in candidates:
        reason = reject_reason(candidate, request)
        if reason is None:
            key = sign * score(candidate, request)
            ranked.append((key, candidate.instances, candidate.node_id))
        else:
            rejected.append((candidate.node_id, reason))
    ranked.sort()
    chosen = ranked[:max_attempts] if max_attempts else ranked
    return Plan(
        order=[node_id for _, _, node_id in chosen],
        feasible_count=len(ranked),
        rejected_ids=[node_id for node_id, _ in rejected],
        rejected_codes=[REASON_CODES[reason] for _, reason in rejected],
    )
