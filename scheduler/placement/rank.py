"""Priority (SPEC §2.2 step 3): in which order feasible nodes are tried.

Ranking counts what is placed, not only what the last report shows: the request and every
reservation on the node count as `ranking_request` makes them (a workload without limits takes
100 millicores and 128 MiB), and reservations last until the node's reports show the instance.

A node's score is the mean, over the dimensions it reports, of the fraction left free after
placement, as ranking counts it: (free - ranking reserved - ranking request) / total. `spread`
tries the highest score first (keeps headroom everywhere: the freest nodes take instances until
their free amounts meet), `binpack` the lowest (fills nodes up, keeps others empty).

A node *without room* -- the placement would take it below zero free on a dimension it reports,
as ranking counts it -- comes after every node with room, whatever the strategy, and such nodes
are tried most free first. Feasibility counts only declared requests, so a workload without
limits never fails the filter: without this rule binpack would keep choosing its fullest node
forever. With it, binpack fills one node until it has no room, then starts the next; and once
the whole cluster is past what it can hold, the overflow spreads instead of piling up.

Ties go to the node with fewer instances, then to the smaller node id, so a decision is fully
deterministic.

As in `feasible`: `score` for one node in plain Python, `scores` / `priority_rows` over
columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scheduler.model import Resources, Strategy
from scheduler.placement.dimensions import CPU, DISK, MEMORY, column_amounts
from scheduler.placement.feasible import Candidate
from scheduler.placement.requests import ranking_request, summed
from scheduler.placement.table import Columns, Dimension, node_dimensions

NEUTRAL_SCORE = 0.5  # a node that reports no dimension ranks midway: it is neither full nor empty
FEW_BY_ARGMIN = 8  # a head up to this size is found by repeated argmin, larger by partition
TIES_SORTED = 64  # rows tying for a head's last place sorted whole; more: only those it needs
_NOT_TIED = np.iinfo(np.int64).max  # the tie-break of a row that does not tie: never chosen
_COMPOSITE_LIMIT = 2**62  # a tie-break key must stay below this to fit int64 without overflow


def score(candidate: Candidate, request: Resources) -> tuple[float, bool]:
    """The node's mean free fraction after placing `request` (NEUTRAL_SCORE if it reports no
    dimension), and whether it has room: nothing it reports goes below zero free."""
    assert candidate.metrics is not None, "only nodes with a status are ranked"
    return dimension_score(
        node_dimensions(candidate.metrics),
        column_amounts(summed(ranking_request(r) for r in candidate.reservations)),
        column_amounts(ranking_request(request)),
    )


def dimension_score(
    dimensions: tuple[Dimension, ...], reserved: tuple[float, ...], wanted: tuple[float, ...]
) -> tuple[float, bool]:
    """`score` of a node with these (total, free) amounts, `reserved` and `wanted` as ranking
    counts them (all in column units)."""
    fractions = 0.0
    known = 0
    room = True
    for dimension, reported in enumerate(dimensions):
        if reported is None:
            continue
        total, free = reported
        left = free - reserved[dimension] - wanted[dimension]
        room = room and left >= 0
        known += 1
        # A known zero capacity has nothing free (and must not divide by zero).
        fractions += left / total if total > 0 else 0.0
    return (fractions / known if known else NEUTRAL_SCORE), room


def scores(columns: Columns, ranked: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`score` of every row, vectorised, as (scores, no room); `ranked` is `ranking_request` of
    the request in column units. Rows that are not feasible get meaningless values.

    Every dimension at once: a few passes over (3, n) columns cost less than three times as
    many numpy calls over (n,) rows.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        left = columns.free - columns.ranking_reserved
        left -= np.array(ranked)[:, np.newaxis]
        below = left < 0  # False for NaN: an unknown dimension has room
        no_room = below[MEMORY] | below[CPU]
        no_room |= below[DISK]
        left /= columns.total
        # NaN (unknown) and ±inf or NaN (a zero total) count as 0, as in `score`.
        np.copyto(left, 0.0, where=~(columns.total > 0))
        summed_fractions = left[MEMORY] + left[CPU]  # the order `score` adds: the same last bit
        summed_fractions += left[DISK]
        summed_fractions /= columns.known
    np.copyto(summed_fractions, NEUTRAL_SCORE, where=columns.known == 0)
    return summed_fractions, no_room


def sort_key(row_scores: Any, strategy: Strategy) -> Any:
    """Ascending = tried first (of an array of scores, or of one)."""
    return -row_scores if strategy is Strategy.SPREAD else row_scores


def priority_rows(
    key: np.ndarray,
    size: int,
    instances: np.ndarray,
    id_rank: np.ndarray,
    id_rank_bound: int,
    limit: int,
) -> np.ndarray:
    """The rows whose key is finite (`size` of them; infinity marks the others) in priority
    order, the first `limit` of them (0: all). Arrays are whole columns, one entry per row.

    For a few first rows of many, only the rows that can be among them are sorted (see
    `_head_rows`), so this is exactly the head of the whole order.
    """
    if 0 < limit < size:
        rows = _head_rows(key, instances, id_rank, id_rank_bound, limit)
    else:
        rows = np.flatnonzero(key < np.inf)
    order = _sort_with_ties(key[rows], instances[rows], id_rank[rows], id_rank_bound)
    head: np.ndarray = rows[order[:limit] if limit else order]
    return head


def _head_rows(
    key: np.ndarray,
    instances: np.ndarray,
    id_rank: np.ndarray,
    id_rank_bound: int,
    limit: int,
) -> np.ndarray:
    """Rows holding the first `limit` of the order (0 < limit < the finite keys): every row
    whose key is below the `limit`-th smallest key (the cutoff), and the rows tying at the
    cutoff -- all of them when they are few, else only the ones a whole sort would put first
    (fewest instances, then smallest id rank), as many as the head still needs. A fleet of
    equal, idle nodes ties by thousands, and sorting them all was most of such a decision.

    The cutoff is found one argmin at a time up to FEW_BY_ARGMIN (a vectorised pass of a few
    µs; a partition of 10,000 keys costs ten times one pass), else with one partition.
    """
    if limit > FEW_BY_ARGMIN:
        cutoff = np.partition(key, limit - 1)[limit - 1]
        below = np.flatnonzero(key < cutoff)
    else:
        scratch, taken = key.copy(), []
        for _ in range(limit):
            row = int(scratch.argmin())
            taken.append(row)
            cutoff = scratch[row]
            scratch[row] = np.inf
        below = np.array([row for row in taken if key[row] < cutoff], dtype=np.int64)
    ties = key == cutoff
    needed = limit - len(below)  # >= 1: fewer than `limit` keys are below the cutoff
    if np.count_nonzero(ties) <= needed + TIES_SORTED:
        return np.concatenate((below, np.flatnonzero(ties)))
    tie_break = np.where(ties, instances * id_rank_bound + id_rank, _NOT_TIED)  # unique
    if needed > FEW_BY_ARGMIN:
        chosen = np.argpartition(tie_break, needed - 1)[:needed]
    else:  # as above: a few argmin passes cost far less than a partition
        picked = []
        for _ in range(needed):
            row = int(tie_break.argmin())
            picked.append(row)
            tie_break[row] = _NOT_TIED
        chosen = np.array(picked, dtype=np.int64)
    head: np.ndarray = np.concatenate((below, chosen))
    return head


def _sort_with_ties(
    key: np.ndarray, instances: np.ndarray, id_rank: np.ndarray, id_rank_bound: int
) -> np.ndarray:
    """Indices ordering (key, instances, id_rank) lexicographically.

    One fast unstable sort by key suffices when no two keys are equal (id ranks are unique, so
    the order is still total). With ties, the key's dense rank, the instance count and the id
    rank are packed into one int64 and sorted again: two O(n log n) sorts cost far less than a
    three-key `np.lexsort`.
    """
    by_key = np.argsort(key)
    sorted_key = key[by_key]
    new_value = sorted_key[1:] != sorted_key[:-1]
    if new_value.all():
        return by_key
    dense = np.empty(len(key), dtype=np.int64)
    dense[by_key] = np.concatenate(([0], np.cumsum(new_value)))
    instance_span = int(instances.max()) + 1
    if (int(dense.max()) + 1) * instance_span * id_rank_bound >= _COMPOSITE_LIMIT:
        return np.lexsort((id_rank, instances, key))
    return np.argsort((dense * instance_span + instances) * id_rank_bound + id_rank)
