"""The resource dimensions placement weighs: one table, in one order.

The order is the one feasibility checks them in (a node gets the reason of the first that does
not fit), and it is also the order of the rows of the table's 2-D columns, of the ledger's
amounts and of every tuple of amounts in between. Adding a dimension: a field of
`model.Resources` (and of `NodeMetrics`), a row here, how a node reports it
(`table.node_dimensions`) and its `feasible.Reason`.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from scheduler.model import MIB, Resources

# (field of model.Resources, column units per request unit): memory and disk are requested in
# MiB and reported in bytes; cpu is requested and counted in millicores.
DIMENSIONS: tuple[tuple[str, int], ...] = (("memory", MIB), ("cpu", 1), ("disk", MIB))
NAMES = tuple(name for name, _ in DIMENSIONS)
MEMORY, CPU, DISK = (NAMES.index(name) for name in ("memory", "cpu", "disk"))  # rows, positions

Amounts = tuple[int, ...]  # one amount per dimension, in request units, in DIMENSIONS order
ZERO: Amounts = (0,) * len(DIMENSIONS)
_read = attrgetter(*NAMES)  # Resources -> its fields in DIMENSIONS order (a decision's hot path)
_UNITS = tuple(unit for _, unit in DIMENSIONS)


def amounts(resources: Resources) -> Amounts:
    """The amount of each dimension in request units, in DIMENSIONS order; None counts 0."""
    return tuple([amount or 0 for amount in _read(resources)])


def column_amounts(resources: Resources) -> tuple[float, ...]:
    """A request or reservation in column units (bytes, millicores), in DIMENSIONS order."""
    pairs = zip(_read(resources), _UNITS, strict=True)
    return tuple([float((amount or 0) * unit) for amount, unit in pairs])


def resources(values: Iterable[int]) -> Resources:
    """The Resources holding `values`, one per dimension in DIMENSIONS order."""
    return Resources(**dict(zip(NAMES, values, strict=True)))
