"""The vectorised `plan` over a NodeTable equals the plain per-node `plan_candidates`.

Random tables mix known and unknown dimensions, readiness, reservations and instance counts;
values come from small sets so equal scores (and so the tie-breaks) are common. The table is
built with removals and decisions in between, to exercise row moves and lazy id ranking.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.model import MIB, NodeMetrics, Resources
from scheduler.placement import (
    Candidate, NodeTable, Strategy, node_reason, plan, plan_candidates,
)
from scheduler.placement.rank import priority_rows

GIB_IN_MIB = 1024
node_ids = st.text(alphabet="abc-1.", min_size=1, max_size=4)
fractions = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def capacity(draw, totals_mib):
    """(total, free) bytes, or None (unreported)."""
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    total = draw(st.sampled_from(totals_mib)) * MIB
    return total, int(total * draw(fractions))


@st.composite
def node_metrics(draw):
    if draw(st.integers(0, 9)) == 0:
        return None  # no status yet
    memory = draw(capacity([0, 2 * GIB_IN_MIB, 4 * GIB_IN_MIB]))
    disk = draw(capacity([10 * GIB_IN_MIB, 40 * GIB_IN_MIB]))
    fields = {}
    if memory:
        fields.update(memory_total=memory[0], memory_free=memory[1])
    if disk:
        fields.update(disk_total=disk[0], disk_free=disk[1])
    fields["cpu_cores"] = draw(st.sampled_from([None, 0, 1, 2, 4]))
    fields["cpu_load"] = draw(st.sampled_from([None, 0.0, 12.5, 50.0, 100.0, 33.3]))
    return NodeMetrics(**fields)


requests = st.builds(
    Resources,
    cpu=st.sampled_from([None, 0, 250, 500, 1000, 3000]),
    memory=st.sampled_from([None, 0, 256, 1024, 3 * GIB_IN_MIB]),
    disk=st.sampled_from([None, 0, 1024, 20 * GIB_IN_MIB]),
)
reservations = st.lists(
    st.builds(Resources, cpu=st.sampled_from([None, 500]), memory=st.sampled_from([None, 512]),
              disk=st.sampled_from([None, 5 * GIB_IN_MIB])),
    max_size=3,
)


@st.composite
def nodes(draw):
    return {
        "ready": draw(st.integers(0, 5)) > 0,
        "metrics": draw(node_metrics()),
        "instances": draw(st.integers(0, 2)),
        "reservations": draw(reservations),
    }


@settings(max_examples=300, deadline=None)
@given(
    kept=st.dictionaries(node_ids, nodes(), max_size=25),
    dropped=st.dictionaries(node_ids, nodes(), max_size=5),
    request=requests,
    strategy=st.sampled_from(list(Strategy)),
    max_attempts=st.integers(0, 20),  # heads found by argmin (<= 8) and by partition
    decide_every=st.integers(1, 10),
)
def test_plan_matches_the_plain_reference(kept, dropped, request, strategy, max_attempts,
                                          decide_every):
    dropped = {node_id: node for node_id, node in dropped.items() if node_id not in kept}
    table = NodeTable(capacity=1)
    for step, (node_id, node) in enumerate([*dropped.items(), *kept.items()]):
        table.upsert(node_id)
        table.set_ready(node_id, node["ready"])
        table.update_metrics(node_id, node["metrics"])
        table.set_instance_count(node_id, node["instances"])
        for number, reservation in enumerate(node["reservations"]):
            table.reserve(node_id, f"{node_id}/{number}", reservation)
        if step % decide_every == 0:
            plan(table, request, strategy)
    for node_id, node in dropped.items():
        for number in range(len(node["reservations"])):
            assert table.release(f"{node_id}/{number}")
        table.remove(node_id)

    candidates = [
        Candidate(node_id=node_id, ready=node["ready"], metrics=node["metrics"],
                  reservations=tuple(node["reservations"]), instances=node["instances"])
        for node_id, node in kept.items()
    ]
    got = plan(table, request, strategy, max_attempts)
    want = plan_candidates(candidates, request, strategy, max_attempts)
    assert list(got.attempt_order()) == want.order  # the head, then the rest on demand
    assert got.order == want.order
    assert got.rejected == want.rejected
    assert got.counts == want.counts
    assert got.feasible_count == want.feasible_count
    assert len(got.order) == (min(max_attempts, got.feasible_count) if max_attempts
                              else got.feasible_count)
    for node_id in kept:  # the one-node re-check agrees with the decision
        assert node_reason(table, node_id, request) == want.rejected.get(node_id)


def test_the_order_beyond_the_head_is_the_one_of_the_decision_time():
    # plan() orders HEAD nodes up front and the rest only when they are used up: by then the
    # table has changed (reservations, statuses), but the attempts follow the decision.
    from scheduler.placement.plan import HEAD

    table = NodeTable()
    count = 3 * HEAD
    for number in range(count):
        node_id = f"node-{number:02d}"
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(node_id, NodeMetrics(memory_total=100 * MIB,
                                                  memory_free=(1 + number % 7) * MIB))
    lazy = plan(table, Resources(memory=1))
    eager = plan(table, Resources(memory=1)).order
    assert len(eager) == count
    for number in range(count):  # everything changes after the decision
        node_id = f"node-{number:02d}"
        table.update_metrics(node_id, NodeMetrics(memory_total=100 * MIB,
                                                  memory_free=(count - number) * MIB))
    table.remove("node-05")
    assert list(lazy.attempt_order()) == eager


def test_rejections_name_the_nodes_of_the_decision_time():
    # A plan keeps the table's ids column, which the table copies before it moves rows.
    table = NodeTable()
    for number in range(6):
        node_id = f"node-{number}"
        table.upsert(node_id)
        table.set_ready(node_id, number % 2 == 0)
        table.update_metrics(node_id, NodeMetrics(memory_total=100 * MIB, memory_free=50 * MIB))
    decision = plan(table, Resources(memory=1))
    table.remove("node-1")  # the last row (node-5) moves into its place
    table.upsert("node-9")
    assert decision.rejected == {"node-1": "not-ready", "node-3": "not-ready",
                                 "node-5": "not-ready"}
    assert decision.order == ["node-0", "node-2", "node-4"]


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.sampled_from([0.0, -0.25, 0.5, 1.0]), min_size=1, max_size=40),
       data=st.data())
def test_the_head_of_the_priority_order_is_the_head_of_the_full_sort(keys, data):
    # priority_rows finds a few first rows without sorting them all; with many ties.
    size = len(keys)
    members = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    instances = np.array(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size)))
    id_rank = np.array(data.draw(st.permutations(range(size))))
    limit = data.draw(st.integers(0, size + 2))
    key = np.array(keys)
    everything = [row for row in np.lexsort((id_rank, instances, key)) if members[row]]
    want = everything[:limit] if limit else everything
    got = priority_rows(key, members, instances, id_rank, size, limit)
    assert got.tolist() == want
    assert key.tolist() == keys  # the caller's key is left as it was
