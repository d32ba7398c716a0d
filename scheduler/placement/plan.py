"""A placement decision: the feasible nodes in the order to try them, and why the others fail.

`plan` decides over a `NodeTable` (vectorised, what the scheduler uses); `plan_candidates`
makes the same decision node by node in plain Python (the readable statement of the rules, the
oracle of the tests and the baseline of the benchmark). Both return a `Plan`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from scheduler.model import NO_RESOURCES, Resources
from scheduler.placement.dimensions import amounts, column_amounts
from scheduler.placement.feasible import (
    FEASIBLE, REASON_BY_CODE, REASON_CODES, Candidate, Reason, reason_codes, reject_reason,
)
from scheduler.placement.rank import Strategy, priority_positions, score, scores, sort_key
from scheduler.placement.requests import ranking_request
from scheduler.placement.table import Columns, NodeTable

HEAD = 8  # nodes put in order up front; the rest only once all of these refused (rare)


class Plan:
    """The outcome of one decision.

    `order`: node ids to attempt, best first (at most `max_attempts`). Iterate
    `attempt_order()` to attempt them: it yields the first `HEAD` at once and orders the rest
    (from the table as it was at the decision) only if they are all tried, since a placement
    usually needs one node and ordering 10,000 costs more than choosing the first few.
    `rejected` and `counts` are built on first use too: the happy path needs neither, and a dict
    of 10,000 rejections costs more than the decision itself.
    """

    __slots__ = ("_head", "_order", "_rest", "feasible_count", "_rejected_ids",
                 "_rejected_codes", "_rejected", "_counts")

    def __init__(self, order: list[str], feasible_count: int, rejected_ids: Sequence[str],
                 rejected_codes: Sequence[int], rest: Callable[[], list[str]] | None = None):
        """`order` is the whole order, or with `rest` its head and how to get the whole."""
        self._head = order
        self._order = order if rest is None else None
        self._rest = rest
        self.feasible_count = feasible_count  # feasible nodes, including those cut from `order`
        self._rejected_ids = rejected_ids
        self._rejected_codes = rejected_codes
        self._rejected: dict[str, Reason] | None = None
        self._counts: dict[Reason, int] | None = None

    @property
    def order(self) -> list[str]:
        """Every node id to attempt, best first."""
        if self._order is None:
            assert self._rest is not None
            self._order = self._rest()
        return self._order

    def attempt_order(self) -> Iterator[str]:
        """`order`, computing beyond the head only when the head has been used up."""
        yield from self._head
        if self._rest is not None:
            yield from self.order[len(self._head):]

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


def _checked(request: Resources, strategy: Strategy, max_attempts: int) -> None:
    if not isinstance(strategy, Strategy):  # config parses the text; a str here is a bug
        raise ValueError(f"strategy must be a Strategy, not {strategy!r}")
    if min(amounts(request)) < 0:
        raise ValueError(f"request must not be negative: {request}")
    if max_attempts < 0:
        raise ValueError(f"max_attempts must be >= 0 (0: every feasible node), not {max_attempts}")


def plan(
    table: NodeTable,
    request: Resources = NO_RESOURCES,
    strategy: Strategy = Strategy.SPREAD,
    max_attempts: int = 0,
) -> Plan:
    """Decide where `request` may go, over the table as it is now (max_attempts 0: no cut)."""
    _checked(request, strategy, max_attempts)
    columns = table.columns()
    codes = reason_codes(columns, column_amounts(request))
    row_scores, no_room = scores(columns, column_amounts(ranking_request(request)))
    feasible = codes == FEASIBLE
    # Nodes with room in the strategy's order, then those without room most free first.
    groups = [_Group(columns, np.flatnonzero(feasible & ~no_room), row_scores, strategy),
              _Group(columns, np.flatnonzero(feasible & no_room), row_scores, Strategy.SPREAD)]
    groups = [group for group in groups if group.size]
    feasible_count = sum(group.size for group in groups)

    def ordered(limit: int) -> list[str]:
        order: list[str] = []
        for group in groups:
            if limit and len(order) >= limit:
                break
            order += group.ordered(limit - len(order) if limit else 0)
        return order

    rejected_rows = np.flatnonzero(~feasible)
    rejected = (columns.ids[rejected_rows], codes[rejected_rows])
    if (max_attempts and max_attempts <= HEAD) or feasible_count <= HEAD:
        return Plan(ordered(max_attempts), feasible_count, *rejected)
    return Plan(ordered(HEAD), feasible_count, *rejected, rest=lambda: ordered(max_attempts))


class _Group:
    """Some feasible rows of a decision, ordered among themselves by one strategy."""

    __slots__ = ("size", "_ids", "_key", "_instances", "_id_rank", "_bound")

    def __init__(self, columns: Columns, rows: np.ndarray, row_scores: np.ndarray,
                 strategy: Strategy) -> None:
        # Fancy indexing copies: the plan stays valid when the table changes afterwards.
        self.size = len(rows)
        self._ids = columns.ids[rows]
        self._key = sort_key(row_scores[rows], strategy)
        self._instances = columns.instances[rows]
        self._id_rank = columns.id_rank[rows]
        self._bound = columns.id_rank_bound

    def ordered(self, limit: int) -> list[str]:
        """The first `limit` node ids in priority order (0: all)."""
        positions = priority_positions(self._key, self._instances, self._id_rank, self._bound,
                                       limit)
        return self._ids[positions].tolist()


def plan_candidates(
    candidates: Iterable[Candidate],
    request: Resources = NO_RESOURCES,
    strategy: Strategy = Strategy.SPREAD,
    max_attempts: int = 0,
) -> Plan:
    """The same decision as `plan`, node by node: slow, obviously right."""
    _checked(request, strategy, max_attempts)
    ranked: list[tuple[bool, float, int, str]] = []
    rejected: list[tuple[str, Reason]] = []
    for candidate in candidates:
        reason = reject_reason(candidate, request)
        if reason is None:
            value, room = score(candidate, request)
            # Nodes without room come last, most free first, whatever the strategy.
            key = -value if strategy is Strategy.SPREAD or not room else value
            ranked.append((not room, key, candidate.instances, candidate.node_id))
        else:
            rejected.append((candidate.node_id, reason))
    ranked.sort()
    chosen = ranked[:max_attempts] if max_attempts else ranked
    return Plan(
        order=[node_id for *_, node_id in chosen],
        feasible_count=len(ranked),
        rejected_ids=[node_id for node_id, _ in rejected],
        rejected_codes=[REASON_CODES[reason] for _, reason in rejected],
    )
