"""One table of dimensions, one order: requests, reports, the ledger, the columns and the
feasibility checks all follow `placement.dimensions.DIMENSIONS`."""

import dataclasses

from scheduler.model import MIB, NodeMetrics, Resources
from scheduler.placement import NodeTable, Reason, Reservations
from scheduler.placement.dimensions import (
    CPU,
    DIMENSIONS,
    DISK,
    MEMORY,
    NAMES,
    amounts,
    column_amounts,
    resources,
)
from scheduler.placement.feasible import _CHECKS
from scheduler.placement.requests import summed
from scheduler.placement.table import node_dimensions

REQUEST = Resources(cpu=250, memory=64, disk=8)


def test_every_dimension_is_a_request_field_and_a_reason():
    assert set(NAMES) <= {f.name for f in dataclasses.fields(Resources)}
    assert [Reason(name) for name in NAMES] == [Reason.MEMORY, Reason.CPU, Reason.DISK]
    assert (MEMORY, CPU, DISK) == (NAMES.index("memory"), NAMES.index("cpu"), NAMES.index("disk"))


def test_amounts_follow_the_table_order_both_ways():
    assert amounts(REQUEST) == (64, 250, 8)
    assert resources(amounts(REQUEST)) == REQUEST
    assert column_amounts(REQUEST) == (64.0 * MIB, 250.0, 8.0 * MIB)
    assert summed([REQUEST, Resources(cpu=50)]) == Resources(cpu=300, memory=64, disk=8)


def test_reports_and_checks_follow_the_table_order():
    dims = node_dimensions(
        NodeMetrics(memory_total=4 * MIB, memory_free=MIB, cpu_cores=2, cpu_load=50.0)
    )
    assert len(dims) == len(DIMENSIONS)
    assert dims[MEMORY] == (4.0 * MIB, 1.0 * MIB)
    assert dims[CPU] == (2000.0, 1000.0)
    assert dims[DISK] is None
    assert [row for row, _ in _CHECKS] == list(range(len(DIMENSIONS)))


def test_the_ledger_and_the_columns_hold_the_same_order():
    table = NodeTable(Reservations())
    table.upsert("n")
    table.reserve("n", "i", REQUEST)
    assert table.reservations.node_total("n") == REQUEST
    row = table.row_of("n")
    assert table.columns().reserved[:, row].tolist() == list(column_amounts(REQUEST))
