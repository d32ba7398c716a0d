"""Placement rules on small hand-made tables: filters, reasons, priority, ties, reservations."""

import pytest

from scheduler.model import MIB, NodeMetrics, Resources
from scheduler.placement import (
    NodeTable,
    Plan,
    Reason,
    Reservations,
    Strategy,
    node_reason,
    plan,
    reserve_if_fits,
)

GIB = 1024 * MIB


def metrics(memory=None, cpu=None, disk=None) -> NodeMetrics:
    """Metrics from (total GiB, free GiB) memory/disk and (cores, load %) cpu; None = unreported."""
    fields = {}
    if memory is not None:
        fields.update(memory_total=memory[0] * GIB, memory_free=memory[1] * GIB)
    if cpu is not None:
        fields.update(cpu_cores=cpu[0], cpu_load=cpu[1])
    if disk is not None:
        fields.update(disk_total=disk[0] * GIB, disk_free=disk[1] * GIB)
    return NodeMetrics(**fields)


def table_of(
    nodes: dict[str, NodeMetrics | None], *, instances: dict[str, int] | None = None
) -> NodeTable:
    table = NodeTable()
    for node_id, node_metrics in nodes.items():
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(node_id, node_metrics)
        table.set_instance_count(node_id, (instances or {}).get(node_id, 0))
    return table


def gib(n: float) -> int:
    """A memory or disk request of n GiB, in MiB."""
    return int(n * 1024)


# --- priority ---------------------------------------------------------------------------------


def test_spread_tries_most_free_first_and_binpack_least_free_first():
    table = table_of(
        {
            "a": metrics(memory=(10, 5), cpu=(4, 50), disk=(100, 50)),  # 0.5 free everywhere
            "b": metrics(memory=(10, 9), cpu=(4, 10), disk=(100, 90)),  # 0.9
            "c": metrics(memory=(10, 2), cpu=(4, 80), disk=(100, 20)),  # 0.2
        }
    )
    request = Resources(cpu=500, memory=gib(1), disk=gib(1))
    assert plan(table, request).order == ["b", "a", "c"]
    assert plan(table, request, Strategy.SPREAD).order == ["b", "a", "c"]
    assert plan(table, request, Strategy.BINPACK).order == ["c", "a", "b"]


def test_score_is_the_free_fraction_after_placement():
    # Before placement a is freer (5/8 = 0.625 vs 6/10 = 0.6); after placing 3 GiB a keeps
    # 2/8 = 0.25 and b keeps 3/10 = 0.3: the request itself changes the order.
    table = table_of({"a": metrics(memory=(8, 5)), "b": metrics(memory=(10, 6))})
    assert plan(table).order == ["a", "b"]
    assert plan(table, Resources(memory=gib(3))).order == ["b", "a"]


def test_equal_scores_go_to_fewer_instances_then_smaller_id():
    same = metrics(memory=(8, 4), cpu=(2, 50))
    table = table_of(
        {"d": same, "c": same, "b": same, "a": same}, instances={"a": 2, "b": 1, "c": 1, "d": 0}
    )
    for strategy in Strategy:
        assert plan(table, strategy=strategy).order == ["d", "b", "c", "a"]


def test_ties_within_score_groups_keep_scores_first():
    table = table_of(
        {
            "z-free": metrics(memory=(10, 8)),
            "y-half": metrics(memory=(10, 5)),
            "x-half": metrics(memory=(10, 5)),
            "w-full": metrics(memory=(10, 1)),
        },
        instances={"z-free": 9, "x-half": 1},
    )
    assert plan(table).order == ["z-free", "y-half", "x-half", "w-full"]
    assert plan(table, strategy=Strategy.BINPACK).order == ["w-full", "y-half", "x-half", "z-free"]


def test_unknown_dimensions_neither_filter_nor_penalise():
    table = table_of(
        {
            "old": metrics(memory=(10, 5)),  # an old Agent: no cores, no disk
            "new": metrics(memory=(10, 5), cpu=(4, 50), disk=(100, 50)),
            "silent": NodeMetrics(),  # reports nothing at all: neutral 0.5
        }
    )
    request = Resources(cpu=100_000, disk=gib(10_000))  # far more than any node has
    decision = plan(table, request)
    assert decision.order == ["silent", "old"]  # old keeps 0.4875 of its memory (see below)
    assert decision.rejected == {"new": Reason.CPU}

    # Asking for nothing, ranking counts 128 MiB and 100 millicores, on what each node reports:
    # old keeps (5 GiB - 128 MiB) / 10 GiB = 0.4875; new the same, plus 0.475 of its cpu and
    # 0.5 of its disk, the same mean (a tie: by id). Silent reports nothing: neutral 0.5.
    assert plan(table, Resources(memory=0)).order == ["silent", "new", "old"]
    assert plan(table, Resources(memory=0), Strategy.BINPACK).order == ["new", "old", "silent"]


def test_cpu_is_known_only_with_cores_and_load():
    table = table_of(
        {
            "no-cores": NodeMetrics(cpu_load=99.0),
            "zero-cores": NodeMetrics(cpu_cores=0, cpu_load=99.0),  # what an old Agent decodes to
            "no-load": NodeMetrics(cpu_cores=1),
            "busy": NodeMetrics(cpu_cores=4, cpu_load=75.0),  # 1000 mc free
        }
    )
    decision = plan(table, Resources(cpu=1001))
    assert decision.rejected == {"busy": Reason.CPU}
    assert decision.order == ["no-cores", "no-load", "zero-cores"]
    assert plan(table, Resources(cpu=1000)).feasible_count == 4


def test_a_reported_zero_capacity_is_known_and_has_nothing_free():
    table = table_of({"zero": metrics(memory=(0, 0)), "some": metrics(memory=(10, 1))})
    assert plan(table, Resources(memory=1)).rejected == {"zero": Reason.MEMORY}
    assert plan(table).order == ["some", "zero"]  # 0.1 free beats 0.0
    # Ranking counts 128 MiB even for a request of nothing: zero has no room for it, so it
    # comes after every node that has room, binpack or not.
    assert plan(table, strategy=Strategy.BINPACK).order == ["some", "zero"]


def test_a_request_dimension_of_none_or_zero_always_fits():
    table = table_of({"full": metrics(memory=(10, 0), cpu=(2, 100), disk=(10, 0))})
    table.reserve("full", "i-1", Resources(cpu=500, memory=gib(1), disk=gib(1)))  # below zero
    for request in (Resources(), Resources(cpu=0, memory=0, disk=0)):
        assert plan(table, request).order == ["full"]


# --- rejections -------------------------------------------------------------------------------


def test_each_rejection_has_its_reason():
    table = table_of(
        {
            "fits": metrics(memory=(16, 8), cpu=(4, 0), disk=(100, 50)),
            "memory": metrics(memory=(16, 1), cpu=(4, 0), disk=(100, 50)),
            "cpu": metrics(memory=(16, 8), cpu=(4, 90), disk=(100, 50)),
            "disk": metrics(memory=(16, 8), cpu=(4, 0), disk=(100, 1)),
            "memory-first": metrics(memory=(16, 1), cpu=(4, 90), disk=(100, 1)),
            "cpu-before-disk": metrics(memory=(16, 8), cpu=(4, 90), disk=(100, 1)),
            "no-status": None,
            "left": metrics(memory=(16, 8), cpu=(4, 0), disk=(100, 50)),
        }
    )
    table.set_ready("left", False)
    table.upsert("joining")  # has a row, not READY yet
    decision = plan(table, Resources(cpu=1000, memory=gib(2), disk=gib(2)))
    assert decision.order == ["fits"]
    assert decision.feasible_count == 1
    assert decision.rejected == {
        "memory": Reason.MEMORY,
        "cpu": Reason.CPU,
        "disk": Reason.DISK,
        "memory-first": Reason.MEMORY,
        "cpu-before-disk": Reason.CPU,
        "no-status": Reason.NOT_READY,
        "left": Reason.NOT_READY,
        "joining": Reason.NOT_READY,
    }
    assert decision.counts == {Reason.NOT_READY: 3, Reason.MEMORY: 2, Reason.CPU: 2, Reason.DISK: 1}


def test_counts_of_a_table_with_nothing_feasible():
    table = table_of({f"n{i}": metrics(memory=(4, 1)) for i in range(5)})
    table.set_ready("n0", False)
    decision = plan(table, Resources(memory=gib(2)))
    assert decision.order == []
    assert decision.feasible_count == 0
    assert decision.counts == {Reason.NOT_READY: 1, Reason.MEMORY: 4}
    assert list(decision.counts) == [Reason.NOT_READY, Reason.MEMORY]  # check order


def test_an_empty_table_plans_nothing():
    decision = plan(NodeTable(), Resources(cpu=1))
    assert (decision.order, decision.rejected, decision.counts) == ([], {}, {})


def test_reasons_are_their_wire_names():
    assert [str(reason) for reason in Reason] == ["not-ready", "memory", "cpu", "disk"]


def test_a_plan_is_a_snapshot():
    table = table_of({"a": metrics(memory=(4, 1)), "b": metrics(memory=(4, 3))})
    decision = plan(table, Resources(memory=gib(2)))
    table.update_metrics("a", metrics(memory=(4, 4)))
    table.remove("b")
    assert decision.order == ["b"]
    assert decision.rejected == {"a": Reason.MEMORY}


# --- reservations -----------------------------------------------------------------------------


def test_a_reservation_makes_a_node_infeasible_until_released():
    table = table_of({"a": metrics(memory=(8, 4)), "b": metrics(memory=(8, 3))})
    request = Resources(memory=gib(2))
    assert plan(table, request).order == ["a", "b"]

    table.reserve("a", "i-1", request)  # a: 2 GiB left, still fits, now behind b
    assert plan(table, request).order == ["b", "a"]
    table.reserve("a", "i-2", request)  # a: nothing left
    assert plan(table, request).rejected == {"a": Reason.MEMORY}
    assert table.reservations.node_total("a") == Resources(cpu=0, memory=gib(4), disk=0)

    assert table.release("i-2") is True
    assert table.release("i-2") is False
    assert plan(table, request).order == ["b", "a"]
    table.release("i-1")
    assert plan(table, request).order == ["a", "b"]
    assert table.reservations.node_total("a") == Resources(cpu=0, memory=0, disk=0)


def test_reservations_apply_to_every_dimension():
    table = table_of({"n": metrics(memory=(8, 8), cpu=(2, 0), disk=(10, 10))})
    table.reserve("n", "i-1", Resources(cpu=1500, memory=gib(7), disk=gib(9)))
    assert plan(table, Resources(memory=gib(2))).rejected == {"n": Reason.MEMORY}
    assert plan(table, Resources(cpu=501)).rejected == {"n": Reason.CPU}
    assert plan(table, Resources(disk=gib(2))).rejected == {"n": Reason.DISK}
    assert plan(table, Resources(cpu=500, memory=gib(1), disk=gib(1))).order == ["n"]


def test_reservations_survive_a_node_leaving_the_table_and_coming_back():
    table = table_of({"n": metrics(memory=(8, 4))})
    table.reserve("n", "i-1", Resources(memory=gib(3)))
    table.reserve("later", "i-2", Resources(memory=gib(1)))  # a node not in the table yet
    table.remove("n")
    table.upsert("n")
    table.upsert("later")
    for node_id in ("n", "later"):
        table.set_ready(node_id, True)
        table.update_metrics(node_id, metrics(memory=(8, 4)))
    assert plan(table, Resources(memory=gib(2))).rejected == {"n": Reason.MEMORY}
    assert plan(table, Resources(memory=gib(3))).order == ["later"]


def test_each_attempt_rechecks_its_node_before_reserving():
    table = table_of({"a": metrics(memory=(8, 5)), "b": metrics(memory=(8, 4))})
    request = Resources(memory=gib(3))
    first, second = plan(table, request), plan(table, request)  # two decisions, same moment
    assert first.order == second.order == ["a", "b"]
    assert reserve_if_fits(table, "a", "i-1", request) is None
    assert reserve_if_fits(table, "a", "i-2", request) is Reason.MEMORY  # a is taken: next
    assert reserve_if_fits(table, "b", "i-2", request) is None
    assert table.reservations.instances_on("a") == ("i-1",)
    assert table.reservations.instances_on("b") == ("i-2",)
    table.set_ready("b", False)
    assert node_reason(table, "b", Resources()) is Reason.NOT_READY
    assert node_reason(table, "gone", Resources()) is Reason.NOT_READY
    assert node_reason(table, "a", Resources(cpu=10**6, disk=10**9)) is None  # unknown: fits


def test_the_ledger():
    ledger = Reservations()
    ledger.reserve("n", "i-1", Resources(cpu=100, memory=10))
    ledger.reserve("n", "i-2", Resources(disk=5))
    ledger.reserve("m", "i-3", Resources(memory=1))
    assert ledger.node_total("n") == Resources(cpu=100, memory=10, disk=5)
    assert ledger.instances_on("n") == ("i-1", "i-2")
    assert ledger.node_of("i-3") == "m"
    assert len(ledger) == 3 and "i-1" in ledger
    with pytest.raises(ValueError, match="already holds a reservation"):
        ledger.reserve("m", "i-1", Resources())
    with pytest.raises(ValueError, match="negative"):
        ledger.reserve("m", "i-9", Resources(cpu=-1))
    assert ledger.release("i-1") and not ledger.release("i-1")
    assert ledger.node_total("n") == Resources(cpu=0, memory=0, disk=5)
    assert ledger.release("i-2")
    assert ledger.instances_on("n") == ()
    assert ledger.node_total("n") == Resources(cpu=0, memory=0, disk=0)
    assert ledger.node_of("i-2") is None


# --- max_attempts -----------------------------------------------------------------------------


def test_max_attempts_cuts_the_order():
    table = table_of({f"n{i}": metrics(memory=(10, i)) for i in range(10)})
    assert plan(table, max_attempts=3).order == ["n9", "n8", "n7"]
    # n0 has no free memory: no room for the 128 MiB ranking counts, so it comes last.
    assert plan(table, strategy=Strategy.BINPACK, max_attempts=2).order == ["n1", "n2"]
    assert plan(table, max_attempts=0).order == [f"n{i}" for i in reversed(range(10))]
    assert plan(table, max_attempts=50).order == plan(table).order
    assert plan(table, max_attempts=3).feasible_count == 10


def test_max_attempts_keeps_exact_ties_at_the_cut():
    table = table_of(
        {node_id: metrics(memory=(10, 5)) for node_id in "edcba"}, instances={"a": 1, "e": 1}
    )
    assert plan(table, max_attempts=2).order == ["b", "c"]
    assert plan(table, max_attempts=4).order == ["b", "c", "d", "a"]


# --- the table follows the cluster ------------------------------------------------------------


def test_metric_updates_and_readiness_are_reflected():
    table = table_of({"a": metrics(memory=(8, 6)), "b": metrics(memory=(8, 4))})
    assert plan(table).order == ["a", "b"]
    table.update_metrics("a", metrics(memory=(8, 1)))
    assert plan(table).order == ["b", "a"]
    table.set_ready("b", False)
    assert plan(table).rejected == {"b": Reason.NOT_READY}
    table.set_ready("b", True)
    table.update_metrics("b", None)  # e.g. a new session that has not reported yet
    assert plan(table).rejected == {"b": Reason.NOT_READY}
    table.update_metrics("b", metrics(memory=(8, 8)))
    table.update_metrics("a", NodeMetrics())  # a dimension that disappears becomes unknown
    assert plan(table, Resources(memory=gib(100))).order == ["a"]


def test_instance_counts_are_reflected():
    table = table_of({"a": None, "b": None})
    for node_id in "ab":
        table.update_metrics(node_id, NodeMetrics())
    assert plan(table).order == ["a", "b"]
    table.set_instance_count("a", 3)
    assert plan(table).order == ["b", "a"]
    with pytest.raises(ValueError):
        table.set_instance_count("a", -1)


def test_nodes_added_and_removed_keep_id_order_and_rows():
    table = NodeTable(capacity=2)  # forces growth
    ids = ["m", "c", "x", "a", "k", "b", "z", "d"]
    for node_id in ids:
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(node_id, NodeMetrics())
        plan(table)  # decisions between additions
    assert plan(table).order == sorted(ids)
    assert table.remove("c") and table.remove("a") and not table.remove("a")
    assert plan(table).order == sorted(set(ids) - {"a", "c"})
    assert table.upsert("c") is True and table.upsert("c") is False
    table.set_ready("c", True)
    table.update_metrics("c", NodeMetrics())
    assert plan(table).order == sorted(set(ids) - {"a"})
    assert len(table) == 7 and "c" in table and "a" not in table
    assert sorted(table.node_ids()) == sorted(set(ids) - {"a"})
    columns = table.columns()
    assert sorted(columns.id_rank.tolist()) == list(range(7))  # exact positions, no gaps
    assert [columns.ids[row] for row in columns.id_rank.argsort()] == sorted(table.node_ids())


def test_unknown_nodes_raise_key_error():
    table = NodeTable()
    with pytest.raises(KeyError):
        table.set_ready("ghost", True)
    with pytest.raises(KeyError):
        table.update_metrics("ghost", NodeMetrics())


def test_bad_arguments_are_refused():
    table = table_of({"a": NodeMetrics()})
    with pytest.raises(ValueError):
        plan(table, Resources(memory=-1))
    with pytest.raises(ValueError):
        plan(table, max_attempts=-1)
    with pytest.raises(ValueError):
        plan(table, strategy="random")
    with pytest.raises(ValueError):
        plan(table, strategy="binpack")  # its text: the enum, from config to plan


def test_plan_repr_names_order_and_counts():
    assert "order=[]" in repr(plan(NodeTable()))
    assert isinstance(plan(NodeTable()), Plan)
