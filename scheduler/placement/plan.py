"""A placement decision: the feasible nodes in the order to try them, and why the others fail.

`plan` decides over a `NodeTable` (vectorised, what the scheduler uses); `plan_candidates`
makes the same decision node by node in plain Python (the readable statement of the rules, the
oracle of the tests and the baseline of the benchmark). Both return a `Plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from scheduler.model import NO_RESOURCES, Resources, Strategy
from scheduler.placement.dimensions import amounts, column_amounts
from scheduler.placement.feasible import (
    FEASIBLE,
    REASON_BY_CODE,
    REASON_CODES,
    Candidate,
    Reason,
    reject_reason,
)
from scheduler.placement.kept import Kept, kept_for
from scheduler.placement.rank import priority_rows, score
from scheduler.placement.requests import ranking_request
from scheduler.placement.table import Columns, NodeTable

HEAD = 2  # nodes put in order up front (one argmin pass each, ~4 µs at 5,000 nodes); the
# rest only once both refused (rare: the first is reserved in the tick it was chosen)


def _reason(code: int) -> Reason:
    """The reason of a rejection's code (FEASIBLE, 0, is not one)."""
    reason = REASON_BY_CODE[code]
    assert reason is not None, "FEASIBLE is not a rejection"
    return reason


class Plan:
    """The outcome of one decision.

    `order`: node ids to attempt, best first (at most `max_attempts`). Iterate
    `attempt_order()` to attempt them: it yields the first `HEAD` at once and orders the rest
    (from the table as it was at the decision) only if they are all tried, since a placement
    usually needs one node and ordering 10,000 costs more than choosing the first few.
    `rejected` and `counts` are built on first use too: the happy path needs neither, and a dict
    of 10,000 rejections costs more than the decision itself.
    """

    __slots__ = (
        "_head",
        "_order",
        "_rest",
        "feasible_count",
        "_ids",
        "_codes",
        "_rejected",
        "_counts",
    )

    def __init__(
        self,
        order: list[str],
        feasible_count: int,
        ids: Sequence[str] | np.ndarray,
        codes: Sequence[int] | np.ndarray,
        rest: Callable[[], list[str]] | None = None,
    ):
        """`order` is the whole order, or with `rest` its head and how to get the whole.
        `ids` and `codes`: nodes and their reason codes; FEASIBLE ones are not rejections."""
        self._head = order
        self._order = order if rest is None else None
        self._rest = rest
        self.feasible_count = feasible_count  # feasible nodes, including those cut from `order`
        self._ids = ids
        self._codes = codes
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
            yield from self.order[len(self._head) :]

    @property
    def rejected(self) -> dict[str, Reason]:
        """Each infeasible node's id and its one reason."""
        if self._rejected is None:
            codes = np.asarray(self._codes, dtype=np.int64)
            rows = np.flatnonzero(codes != FEASIBLE)
            ids = np.asarray(self._ids, dtype=object)[rows].tolist()
            self._rejected = {
                node_id: _reason(code)
                for node_id, code in zip(ids, codes[rows].tolist(), strict=True)
            }
        return self._rejected

    @property
    def counts(self) -> dict[Reason, int]:
        """How many nodes each reason rejected (only reasons that occurred, in check order)."""
        if self._counts is None:
            per_code = np.bincount(
                np.asarray(self._codes, dtype=np.int64), minlength=len(REASON_BY_CODE)
            )
            self._counts = {
                _reason(code): int(count)
                for code, count in enumerate(per_code.tolist())
                if code != FEASIBLE and count
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
    kept = kept_for(
        table, column_amounts(request), column_amounts(ranking_request(request)), strategy
    )
    ranking = _Ranking(table.columns(), kept)
    if (max_attempts and max_attempts <= HEAD) or ranking.size <= HEAD:
        return Plan(ranking.ordered(max_attempts), ranking.size, ranking.ids, ranking.codes)
    return Plan(
        ranking.ordered(HEAD),
        ranking.size,
        ranking.ids,
        ranking.codes,
        rest=lambda: ranking.ordered(max_attempts),
    )


class _Ranking:
    """The feasible rows of one decision and their order: nodes with room in the strategy's
    order, then those without room most free first.

    It keeps what it reads as it was at the decision: the ids column and the kept codes and
    keys (which are never changed in place once handed out) and copies of the tie-breakers,
    so a plan's later attempts follow the decision, whatever changed since.
    """

    __slots__ = ("size", "ids", "codes", "_groups", "_instances", "_id_rank", "_bound")

    def __init__(self, columns: Columns, kept: Kept) -> None:
        self.ids = columns.ids
        self.codes, room_key, spill_key = kept.share()
        self._groups = ((room_key, kept.with_room), (spill_key, kept.without_room))
        self._instances = columns.instances.copy()
        self._id_rank = columns.id_rank.copy()
        self._bound = columns.id_rank_bound
        self.size = kept.with_room + kept.without_room

    def ordered(self, limit: int) -> list[str]:
        """The first `limit` node ids in priority order (0: all)."""
        order: list[str] = []
        for key, size in self._groups:
            wanted = limit - len(order) if limit else 0
            if limit and wanted <= 0:
                break
            if size:
                rows = priority_rows(key, size, self._instances, self._id_rank, self._bound, wanted)
                order += self.ids[rows].tolist()
        return order


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
        ids=[node_id for node_id, _ in rejected],
        codes=[REASON_CODES[reason] for _, reason in rejected],
    )
