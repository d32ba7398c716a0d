"""Priority (SPEC §2.2 step 3): in which order feasible nodes are tried.

A node's score is the mean, over the dimensions it reports, of the fraction left free after
placement: (free - reserved - requested) / total. `spread` tries the highest score first (keeps
headroom everywhere), `binpack` the lowest (fills nodes up, keeps others empty). Ties go to the
node with fewer instances, then to the smaller node id, so a decision is fully deterministic.

As in `feasible`: `score` for one node in plain Python, `scores` / `priority_positions` over
columns.
"""
from __future__ import annotations

import enum

import numpy as np

from scheduler.model import Resources
from scheduler.placement.feasible import Candidate
from scheduler.placement.table import CPU, DISK, MEMORY, Columns, column_amounts, node_dimensions

NEUTRAL_SCORE = 0.5  # a node that reports no dimension ranks midway: it is neither full nor empty
_COMPOSITE_LIMIT = 2**62  # a tie-break key must stay below this to fit int64 without overflow


class Strategy(enum.StrEnum):
    """How feasible nodes are ordered (config `[scheduling] strategy`)."""

    SPREAD = "spread"
    """Most free fraction after placement first: load spreads over the cluster."""
    BINPACK = "binpack"
    """Least free fraction after placement first: nodes fill up one after another."""


def score(candidate: Candidate, request: Resources) -> float:
    """The node's mean free fraction after placing `request`; NEUTRAL_SCORE if it reports none."""
    assert candidate.metrics is not None, "only nodes with a status are scored"
    reserved = column_amounts(candidate.reserved)
    wanted = column_amounts(request)
    fractions = 0.0
    known = 0
    for dimension, reported in enumerate(node_dimensions(candidate.metrics)):
        if reported is None:
            continue
        total, free = reported
        known += 1
        # A known zero capacity has nothing free (and must not divide by zero).
        fractions += (free - reserved[dimension] - wanted[dimension]) / total if total > 0 else 0.0
    return fractions / known if known else NEUTRAL_SCORE


def scores(columns: Columns, wanted: tuple[float, float, float]) -> np.ndarray:
    """`score` of every row, vectorised; rows that are not feasible get meaningless values.

    One dimension at a time, in place: whole-table temporaries are large enough that the
    allocator maps fresh pages for each, which once cost more than the arithmetic.
    """
    summed = np.zeros(len(columns.ids))
    with np.errstate(divide="ignore", invalid="ignore"):
        for dimension in (MEMORY, CPU, DISK):  # the order `score` adds, to agree to the last bit
            fraction = columns.free[dimension] - columns.reserved[dimension]
            fraction -= wanted[dimension]
            fraction /= columns.total[dimension]
            # NaN (unknown) and ±inf or NaN (a zero total) count as 0, as in `score`.
            np.nan_to_num(fraction, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            summed += fraction
        summed /= columns.known
    summed[columns.known == 0] = NEUTRAL_SCORE
    return summed


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
        return keep[order[:limit]]
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
