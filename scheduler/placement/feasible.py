"""Feasibility (SPEC §2.2 step 2): which nodes can take a request, and why the others cannot.

A node is feasible when it is READY, has reported a status, and fits the request on every
dimension it reports after subtracting its reservations. A dimension the node does not report
filters nothing; a dimension the request leaves at None or 0 always fits. Every rejected node
gets exactly one reason: the first failing check in the order not-ready, memory, cpu, disk.

Two forms of the same rule: `reject_reason` for one node in plain Python (readable, the oracle
of the tests), `reason_codes` over a table's columns (what decisions use). `reserve_if_fits`
re-checks one node of a table just before reserving on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from scheduler.model import NodeMetrics, Resources
from scheduler.placement.dimensions import CPU, DISK, MEMORY, column_amounts
from scheduler.placement.requests import summed
from scheduler.placement.table import Columns, Dimension, NodeTable, node_dimensions


class Reason(enum.StrEnum):
    """Why a node cannot take a request; the value is what operators and the Controller see."""

    NOT_READY = "not-ready"
    """The node is not READY (left, lost) or has not reported a status yet."""
    MEMORY = "memory"
    """Reported free memory minus reservations is below the requested memory."""
    CPU = "cpu"
    """Free cpu (cores x 1000 x (1 - load/100)) minus reservations is below the requested cpu."""
    DISK = "disk"
    """Reported free disk minus reservations is below the requested disk."""


FEASIBLE = 0  # reason code of a node that can take the request
REASON_CODES = {Reason.NOT_READY: 1, Reason.MEMORY: 2, Reason.CPU: 3, Reason.DISK: 4}
REASON_BY_CODE = (None, Reason.NOT_READY, Reason.MEMORY, Reason.CPU, Reason.DISK)
_CHECKS = ((MEMORY, Reason.MEMORY), (CPU, Reason.CPU), (DISK, Reason.DISK))  # in check order


@dataclass(frozen=True, slots=True)
class Candidate:
    """One node as the plain per-node rules see it (the table holds the same facts as columns)."""

    node_id: str
    ready: bool
    metrics: NodeMetrics | None  # None: no status reported yet
    reservations: tuple[Resources, ...] = ()  # requests reserved on the node, as declared
    instances: int = 0


def reject_reason(candidate: Candidate, request: Resources) -> Reason | None:
    """Why the node cannot take the request, or None if it can."""
    if not candidate.ready or candidate.metrics is None:
        return Reason.NOT_READY
    return dimension_reason(
        node_dimensions(candidate.metrics),
        column_amounts(summed(candidate.reservations)),
        column_amounts(request),
    )


def dimension_reason(
    dimensions: tuple[Dimension, ...], reserved: tuple[float, ...], wanted: tuple[float, ...]
) -> Reason | None:
    """The first dimension a ready node with these (total, free) amounts cannot fit `wanted`
    on after `reserved` (all in column units), or None if it fits."""
    for dimension, reason in _CHECKS:
        reported = dimensions[dimension]
        if wanted[dimension] > 0 and reported is not None:
            _, free = reported
            if free - reserved[dimension] - wanted[dimension] < 0:
                return reason
    return None


def reason_codes(columns: Columns, wanted: tuple[float, ...]) -> np.ndarray:
    """One code per row: FEASIBLE or the REASON_CODES value of the first failing check.

    `wanted` is the request in column units (`column_amounts`). Unknown dimensions are NaN, and
    a comparison with NaN is false, so they never reject.
    """
    codes = np.zeros(len(columns.ids), dtype=np.int8)
    for dimension, reason in reversed(_CHECKS):  # later checks first: earlier ones overwrite
        if wanted[dimension] > 0:
            left = columns.free[dimension] - columns.reserved[dimension]
            left -= wanted[dimension]
            np.copyto(codes, REASON_CODES[reason], where=left < 0)
    np.copyto(codes, REASON_CODES[Reason.NOT_READY], where=~columns.eligible)
    return codes


def node_reason(table: NodeTable, node_id: str, request: Resources) -> Reason | None:
    """Why the table's node cannot take the request now, or None if it can; O(1).

    A plan is a moment's view: while its first attempts run, other decisions reserve and nodes
    leave. Checking again just before reserving is what keeps later attempts from overcommitting.
    A node no longer in the table is not-ready.
    """
    if node_id not in table:
        return Reason.NOT_READY
    row = table.row(table.row_of(node_id))
    if not row.eligible:
        return Reason.NOT_READY
    return dimension_reason(row.dimensions, row.reserved, column_amounts(request))


def reserve_if_fits(
    table: NodeTable, node_id: str, instance_id: str, request: Resources
) -> Reason | None:
    """Reserve `request` on the node for the instance if it still fits; else say why not."""
    reason = node_reason(table, node_id, request)
    if reason is None:
        table.reserve(node_id, instance_id, request)
    return reason
