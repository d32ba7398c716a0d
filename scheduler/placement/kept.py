"""A request's filter codes and ranking keys over a table, kept between decisions.

Between two placements only a few rows of the table change: a status report, a reservation, a
node that became ready or was lost. Recomputing every row's code and score for each decision
(numpy over every column of 5,000 rows) was most of a decision's cost in the scheduler, where
the columns are rarely in the CPU's caches. A `Kept` holds them for one request and, before
each decision, refreshes the rows the table's change log names with the plain per-node rules
(`dimension_reason`, `dimension_score`: the rules the vectorised forms agree with to the last
bit). After rows were added, removed or moved, or when so many rows changed that a vectorised
pass costs less, it computes every row afresh.

The keys are what ordering needs: per row, its priority key if it is feasible and has room
(`room_key`), or its most-free-first key if it is feasible without room (`spill_key`), else
infinity (see `rank`: nodes with room first, in the strategy's order; then those without
room, most free first).
"""

from __future__ import annotations

import numpy as np

from scheduler.model import Strategy
from scheduler.placement.feasible import (
    FEASIBLE,
    REASON_CODES,
    Reason,
    dimension_reason,
    reason_codes,
)
from scheduler.placement.rank import dimension_score, scores, sort_key
from scheduler.placement.table import NodeTable

ROW_REFRESH_COST = 100  # rows of a vectorised pass that cost as much as refreshing one row
# alone (measured: 3.8 µs against ~0.035 µs a row, and ~30 µs a pass at any size)
REFRESH_AT_LEAST = 8  # changed rows refreshed one by one, however small the table
KEPT_REQUESTS = 8  # requests (amounts and strategy) whose keys a table keeps, most recent

Amounts = tuple[float, ...]  # a request in column units (`column_amounts`)


def kept_for(table: NodeTable, wanted: Amounts, ranked: Amounts, strategy: Strategy) -> Kept:
    """The table's kept codes and keys for this request, current (made on first use)."""
    key = (wanted, ranked, strategy)
    kept: Kept | None = table.kept.pop(key, None)  # re-inserted below: the least recent comes first
    if kept is None:
        kept = Kept(table, wanted, ranked, strategy)
    else:
        kept.refresh(table)
    table.kept[key] = kept
    if len(table.kept) > KEPT_REQUESTS:
        del table.kept[next(iter(table.kept))]
    return kept


class Kept:
    """Codes and keys of every row for one request; `refresh` before reading them."""

    __slots__ = (
        "_wanted",
        "_ranked",
        "_strategy",
        "_mark",
        "_shared",
        "codes",
        "room_key",
        "spill_key",
        "with_room",
        "without_room",
    )
    _mark: tuple[int, int]
    _shared: bool
    codes: np.ndarray
    room_key: np.ndarray
    spill_key: np.ndarray

    def __init__(
        self, table: NodeTable, wanted: Amounts, ranked: Amounts, strategy: Strategy
    ) -> None:
        self._wanted = wanted  # what feasibility counts
        self._ranked = ranked  # what ranking counts
        self._strategy = strategy
        self._compute(table)

    def refresh(self, table: NodeTable) -> None:
        """Bring the codes and keys up to the table as it is now."""
        changed = table.changed_since(self._mark)
        rows = dict.fromkeys(changed) if changed is not None else None
        if rows is None or len(rows) > max(REFRESH_AT_LEAST, len(table) // ROW_REFRESH_COST):
            self._compute(table)
            return
        if rows and self._shared:  # a plan holds the arrays: it keeps its decision's
            self.codes, self.room_key, self.spill_key = (
                self.codes.copy(),
                self.room_key.copy(),
                self.spill_key.copy(),
            )
            self._shared = False
        for row in rows:
            self._refresh_row(table, row)
        self._mark = table.change_mark()

    def share(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, room_key, spill_key) for a plan: never changed in place afterwards."""
        self._shared = True
        return self.codes, self.room_key, self.spill_key

    def _compute(self, table: NodeTable) -> None:
        columns = table.columns()
        codes = reason_codes(columns, self._wanted)
        row_scores, no_room = scores(columns, self._ranked)
        feasible = codes == FEASIBLE
        with_room = feasible & ~no_room
        without_room = feasible & no_room
        self.codes = codes
        self.room_key = np.where(with_room, sort_key(row_scores, self._strategy), np.inf)
        self.spill_key = np.where(without_room, sort_key(row_scores, Strategy.SPREAD), np.inf)
        self.with_room = int(np.count_nonzero(with_room))
        self.without_room = int(np.count_nonzero(without_room))
        self._shared = False
        self._mark = table.change_mark()

    def _refresh_row(self, table: NodeTable, row: int) -> None:
        self.with_room -= bool(self.room_key[row] < np.inf)
        self.without_room -= bool(self.spill_key[row] < np.inf)
        facts = table.row(row)
        reason = (
            dimension_reason(facts.dimensions, facts.reserved, self._wanted)
            if facts.eligible
            else Reason.NOT_READY
        )
        self.codes[row] = FEASIBLE if reason is None else REASON_CODES[reason]
        room_key = spill_key = np.inf
        if reason is None:
            score, room = dimension_score(facts.dimensions, facts.ranking_reserved, self._ranked)
            if room:
                room_key = sort_key(score, self._strategy)
                self.with_room += 1
            else:
                spill_key = sort_key(score, Strategy.SPREAD)
                self.without_room += 1
        self.room_key[row] = room_key
        self.spill_key[row] = spill_key
