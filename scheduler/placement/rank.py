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

As in `feasible`: `score` for one node in plain Python, `scores` / `priority_positions` over
columns.
"""
from __future__ import annotations

import numpy as np

from scheduler.model import Resources, Strategy
from scheduler.placement.dimensions import DIMENSIONS, column_amounts
from scheduler.placement.feasible import Candidate
from scheduler.placement.requests import ranking_request, summed
from scheduler.placement.table import Columns, node_dimensions

NEUTRAL_SCORE = 0.5  # a node that reports no dimension ranks midway: it is neither full nor empty
_COMPOSITE_LIMIT = 2**62  # a tie-break key must stay below this to fit int64 without overflow


def score(candidate: Candidate, request: Resources) -> tuple[float, bool]:
    """The node's mean free fraction after placing `request` (NEUTRAL_SCORE if it reports no
    dimension), and whether it has room: nothing it reports goes below zero free."""
    assert candidate.metrics is not None, "only nodes with a status are ranked"
    reserved = column_amounts(summed(ranking_request(r) for r in candidate.reservations))
    wanted = column_amounts(ranking_request(request))
    fractions = 0.0
    known = 0
    room = True
    for dimension, reported in enumerate(node_dimensions(candidate.metrics)):
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

    One dimension at a time, in place: whole-table temporaries are large enough that the
    allocator maps fresh pages for each, which once cost more than the arithmetic.
    """
    summed_fractions = np.zeros(len(columns.ids))
    no_room = np.zeros(len(columns.ids), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for dimension in range(len(DIMENSIONS)):  # the order `score` adds: agree to the last bit
            fraction = columns.free[dimension] - columns.ranking_reserved[dimension]
            fraction -= ranked[dimension]
            no_room |= fraction < 0  # False for NaN: an unknown dimension has room
            fraction /= columns.total[dimension]
            # NaN (unknown) and ±inf or NaN (a zero total) count as 0, as in `score`.
            np.nan_to_num(fraction, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            summed_fractions += fraction
        summed_fractions /= columns.known
    summed_fractions[columns.known == 0] = NEUTRAL_SCORE
    return summed_fractions, no_room


def sort_key(row_scores: np.ndarray, strategy: Strategy) -> np.ndarray:
    """Ascending = tried first."""
    return -row_scores if strategy is Strategy.SPREAD else row_scores


def priority_positions(key: np.ndarray, instances: np.ndarray, id_rank: np.ndarray,
                       id_rank_bound: int, limit: int) -> np.ndarray:
    """Positions into the given arrays in priority order, the first `limit` of them (0: all)."""
    if 0 < limit < len(key):
        # Only positions that can be among the first `limit` are sorted; ties with the last
        # one stay, so this is exactly the head of the whole order.
        cutoff = np.partition(key, limit - 1)[limit - 1]
        keep = np.flatnonzero(key <= cutoff)
        order = _sort_with_ties(key[keep], instances[keep], id_rank[keep], id_rank_bound)
        head: np.ndarray = keep[order[:limit]]
        return head
    order = _sort_with_ties(key, instances, id_rank, id_rank_bound)
    return order[:limit] if limit else order


def _sort_with_ties(key: np.ndarray, instances: np.ndarray, id_rank: np.ndarray,
                    id_rank_bound: int) -> np.ndarray:
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
