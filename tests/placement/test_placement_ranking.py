"""Ranking counts what is placed (SPEC §2.2 step 3), on plain tables: no network, no loop.

A workload without limits counts, for ranking only, as 100 millicores and 128 MiB; every
reservation on a node counts the same way until the node's reports show its instance; a node
without room for the placement comes after every node with room. Placements here reserve as
the scheduler does (`plan`, then `reserve_if_fits` on the first node) and no report arrives in
between: exactly the window in which the reports cannot show what was placed.
"""

import itertools
from collections import Counter

from scheduler.model import MIB, NodeMetrics, Resources
from scheduler.placement import NodeTable, Strategy, plan, reserve_if_fits
from scheduler.placement.dimensions import MEMORY, column_amounts
from scheduler.placement.rank import scores
from scheduler.placement.requests import (
    NONZERO_CPU_MILLICORES,
    NONZERO_MEMORY_MIB,
    ranking_request,
    summed,
)

GIB = 1024 * MIB
NO_LIMITS = Resources()
INSTANCE_NUMBERS = itertools.count()  # instance ids stay unique across placements


def cluster(
    free_mib: dict[str, int], *, total_gib: int = 8, cores: int = 4, load: float = 10.0
) -> NodeTable:
    """Ready nodes reporting memory (total, free) and cpu (cores, load)."""
    table = NodeTable()
    for node_id, free in free_mib.items():
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(
            node_id,
            NodeMetrics(
                memory_total=total_gib * GIB, memory_free=free * MIB, cpu_cores=cores, cpu_load=load
            ),
        )
    return table


def memory_only(free_mib: dict[str, int], total_gib: int = 8) -> NodeTable:
    """Ready nodes reporting only memory (an old Agent's status)."""
    table = NodeTable()
    for node_id, free in free_mib.items():
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(
            node_id, NodeMetrics(memory_total=total_gib * GIB, memory_free=free * MIB)
        )
    return table


def place(
    table: NodeTable,
    count: int,
    strategy: Strategy | str = Strategy.SPREAD,
    request: Resources = NO_LIMITS,
) -> list[str]:
    """Place `count` instances one after another, each on the first node of its plan; return
    the nodes chosen, in order."""
    chosen = []
    for _ in range(count):
        [node_id] = plan(table, request, strategy, max_attempts=1).order
        assert reserve_if_fits(table, node_id, f"i-{next(INSTANCE_NUMBERS)}", request) is None
        chosen.append(node_id)
    return chosen


def ranking_free_mib(table: NodeTable, node_id: str) -> float:
    """Reported free memory minus what ranking counts as reserved, in MiB."""
    columns = table.columns()
    row = table.row_of(node_id)
    return (columns.free[MEMORY, row] - columns.ranking_reserved[MEMORY, row]) / MIB


def test_a_workload_without_limits_counts_as_kube_schedulers_non_zero_requests():
    assert (NONZERO_CPU_MILLICORES, NONZERO_MEMORY_MIB) == (100, 128)
    assert ranking_request(Resources()) == Resources(cpu=100, memory=128, disk=0)
    assert ranking_request(Resources(cpu=0, memory=0, disk=0)) == Resources(
        cpu=100, memory=128, disk=0
    )
    assert ranking_request(Resources(cpu=50, memory=4096, disk=7)) == Resources(
        cpu=50, memory=4096, disk=7
    ), "declared amounts count as declared"
    assert ranking_request(Resources(memory=64)) == Resources(cpu=100, memory=64, disk=0)
    assert summed([Resources(cpu=1), Resources(memory=2, disk=3), Resources()]) == Resources(
        cpu=1, memory=2, disk=3
    )


def test_the_ledger_keeps_declared_and_ranking_amounts_and_releases_both():
    table = cluster({"n": 1024})
    table.reserve("n", "i-1", NO_LIMITS)
    table.reserve("n", "i-2", Resources(cpu=300, memory=0))
    ledger = table.reservations
    assert ledger.node_total("n") == Resources(cpu=300, memory=0, disk=0)
    assert ledger.node_ranking_total("n") == Resources(cpu=400, memory=256, disk=0)
    columns = table.columns()
    assert columns.reserved[:, 0].tolist() == list(column_amounts(Resources(cpu=300)))
    assert columns.ranking_reserved[:, 0].tolist() == list(
        column_amounts(Resources(cpu=400, memory=256))
    )
    assert table.release("i-1")
    assert ledger.node_ranking_total("n") == Resources(cpu=300, memory=128, disk=0)
    assert table.release("i-2")
    assert ledger.node_ranking_total("n") == Resources(cpu=0, memory=0, disk=0)
    assert table.columns().ranking_reserved[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_ranking_counts_placements_the_reports_do_not_show_yet_feasibility_does_not():
    table = cluster({"a": 1024, "b": 1024})
    assert plan(table).order == ["a", "b"]  # a tie: by id
    table.reserve("a", "i-1", NO_LIMITS)
    assert plan(table).order == ["b", "a"], "a holds an instance its reports do not show"
    # Ranking counts a's 8 instances as its whole free memory; declared, they hold nothing.
    for number in range(2, 10):
        table.reserve("a", f"i-{number}", NO_LIMITS)
    decision = plan(table, Resources(memory=1024))
    assert decision.order == ["b", "a"] and decision.rejected == {}, "a still fits 1 GiB"


def test_spread_water_fills_the_freest_nodes_first_until_the_free_amounts_meet():
    # 20 nodes reporting only memory, free 3 GiB + 100 MiB x i: 60 instances of 128 MiB go to
    # the freest until the free amounts meet, and the least free get none.
    free = {f"n{i:02d}": 3072 + 100 * i for i in range(20)}
    table = memory_only(free)
    placed = Counter(place(table, 60))
    by_freeness = sorted(free, key=free.get, reverse=True)
    counts = [placed[node_id] for node_id in by_freeness]
    assert counts == sorted(counts, reverse=True) and counts[0] < 60 / 2, counts
    receivers = [node_id for node_id in free if placed[node_id]]
    assert 1 < len(receivers) < 20, counts
    left = {node_id: ranking_free_mib(table, node_id) for node_id in free}
    level = min(left[node_id] for node_id in receivers)
    assert max(left.values()) - level <= NONZERO_MEMORY_MIB, f"the free amounts met: {left}"
    assert all(
        free[node_id] <= level + NONZERO_MEMORY_MIB for node_id in free if not placed[node_id]
    ), "a node that got nothing was never above the level"


def test_spread_water_fills_by_the_mean_free_fraction_of_memory_and_cpu():
    # Memory differs slightly, cpu is the same: each instance takes a step of the mean free
    # fraction (128 MiB of 8 GiB and 100 of 4,000 millicores), larger than the differences,
    # so after the freest take one each the nodes are level and take turns.
    free = {f"n{i:02d}": 4096 + 16 * i for i in range(20)}
    table = cluster(free)
    assert place(table, 20) == sorted(free, key=free.get, reverse=True)
    assert Counter(place(table, 40)) == Counter(dict.fromkeys(free, 2))
    step = (NONZERO_MEMORY_MIB * MIB / (8 * GIB) + NONZERO_CPU_MILLICORES / 4000) / 2
    row_scores, _ = scores(table.columns(), column_amounts(Resources()))
    assert row_scores.max() - row_scores.min() <= step


def test_equal_nodes_share_instances_without_limits_evenly():
    table = cluster({f"n{i:02d}": 4096 for i in range(20)})
    assert Counter(place(table, 200)) == Counter(dict.fromkeys(table.node_ids(), 10))


def test_binpack_fills_one_node_before_it_starts_the_next():
    # 1 GiB free and 4 idle cores each: room for 8 instances of 128 MiB, 100 millicores.
    table = cluster({"a": 1024, "b": 1024, "c": 1024}, load=0.0)
    assert place(table, 20, Strategy.BINPACK) == ["a"] * 8 + ["b"] * 8 + ["c"] * 4
    # Past what the cluster can hold, nothing fails the filter; the overflow goes to the node
    # with the most room left, not onto one node forever.
    assert place(table, 6, Strategy.BINPACK) == ["c"] * 4 + ["a", "b"]


def test_binpack_prefers_the_fullest_node_that_still_has_room():
    table = cluster({"full": 100, "half": 512, "empty": 1024})
    assert plan(table, strategy=Strategy.BINPACK).order == ["half", "empty", "full"]
    assert plan(table, Resources(memory=600), Strategy.BINPACK).order == ["empty"]
    # Without room on any node, the most free is tried first, whatever the strategy.
    assert plan(table, Resources(memory=2000), Strategy.BINPACK).order == []
    table = cluster({"x": 10, "y": 100, "z": 50})
    assert plan(table, strategy=Strategy.BINPACK).order == ["y", "z", "x"]
    assert plan(table).order == ["y", "z", "x"]


def test_no_room_on_any_known_dimension_counts_and_unknown_dimensions_have_room():
    table = cluster({"busy-cpu": 4096, "old": 4096})
    table.update_metrics(
        "busy-cpu",
        NodeMetrics(memory_total=8 * GIB, memory_free=4 * GIB, cpu_cores=1, cpu_load=95.0),
    )  # 50 mc free
    table.update_metrics("old", NodeMetrics(memory_total=8 * GIB, memory_free=2 * GIB))
    _, no_room = scores(table.columns(), column_amounts(ranking_request(NO_LIMITS)))
    assert no_room.tolist() == [True, False]
    assert plan(table, strategy=Strategy.BINPACK).order == ["old", "busy-cpu"]
