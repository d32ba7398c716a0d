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
    Candidate,
    NodeTable,
    Strategy,
    node_reason,
    plan,
    plan_candidates,
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
    st.builds(
        Resources,
        cpu=st.sampled_from([None, 500]),
        memory=st.sampled_from([None, 512]),
        disk=st.sampled_from([None, 5 * GIB_IN_MIB]),
    ),
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
def test_plan_matches_the_plain_reference(
    kept, dropped, request, strategy, max_attempts, decide_every
):
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
        Candidate(
            node_id=node_id,
            ready=node["ready"],
            metrics=node["metrics"],
            reservations=tuple(node["reservations"]),
            instances=node["instances"],
        )
        for node_id, node in kept.items()
    ]
    got = plan(table, request, strategy, max_attempts)
    want = plan_candidates(candidates, request, strategy, max_attempts)
    assert list(got.attempt_order()) == want.order  # the head, then the rest on demand
    assert got.order == want.order
    assert got.rejected == want.rejected
    assert got.counts == want.counts
    assert got.feasible_count == want.feasible_count
    assert len(got.order) == (
        min(max_attempts, got.feasible_count) if max_attempts else got.feasible_count
    )
    for node_id in kept:  # the one-node re-check agrees with the decision
        assert node_reason(table, node_id, request) == want.rejected.get(node_id)


def assert_same_decision(table, request, strategy, max_attempts, model):
    candidates = [
        Candidate(
            node_id=node_id,
            ready=node["ready"],
            metrics=node["metrics"],
            reservations=tuple(node["reservations"].values()),
            instances=node["instances"],
        )
        for node_id, node in model.items()
    ]
    got = plan(table, request, strategy, max_attempts)
    want = plan_candidates(candidates, request, strategy, max_attempts)
    assert list(got.attempt_order()) == want.order
    assert got.rejected == want.rejected
    assert got.counts == want.counts
    assert got.feasible_count == want.feasible_count


CHANGES = ("metrics", "ready", "reserve", "release", "instances", "decide")


@settings(max_examples=300, deadline=None)
@given(
    start=st.dictionaries(node_ids, nodes(), min_size=1, max_size=20),
    request=requests,
    strategy=st.sampled_from(list(Strategy)),
    data=st.data(),
)
def test_kept_scores_follow_every_change_of_the_table(start, request, strategy, data):
    # A decision keeps its codes and scores in the table and refreshes only the rows changed
    # since (with the plain per-node rules): they must agree with the plain reference after
    # any sequence of status reports, readiness changes, reservations and releases.
    table = NodeTable(capacity=1)
    model = {}
    for node_id, node in start.items():
        table.upsert(node_id)
        table.set_ready(node_id, node["ready"])
        table.update_metrics(node_id, node["metrics"])
        table.set_instance_count(node_id, node["instances"])
        held = {}
        for number, reservation in enumerate(node["reservations"]):
            table.reserve(node_id, f"{node_id}/{number}", reservation)
            held[f"{node_id}/{number}"] = reservation
        model[node_id] = dict(node, reservations=held)
    plan(table, request, strategy)  # from here on, decisions refresh what they keep
    for step in range(data.draw(st.integers(0, 30))):
        node_id = data.draw(st.sampled_from(sorted(model)))
        node = model[node_id]
        change = data.draw(st.sampled_from(CHANGES))
        if change == "metrics":
            node["metrics"] = data.draw(node_metrics())
            table.update_metrics(node_id, node["metrics"])
        elif change == "ready":
            node["ready"] = not node["ready"]
            table.set_ready(node_id, node["ready"])
        elif change == "reserve":
            reservation = data.draw(reservations.filter(bool))[0]
            node["reservations"][f"{node_id}/step-{step}"] = reservation
            table.reserve(node_id, f"{node_id}/step-{step}", reservation)
        elif change == "release" and node["reservations"]:
            instance_id = data.draw(st.sampled_from(sorted(node["reservations"])))
            del node["reservations"][instance_id]
            assert table.release(instance_id)
        elif change == "instances":
            node["instances"] = data.draw(st.integers(0, 2))
            table.set_instance_count(node_id, node["instances"])
        elif change == "decide":
            assert_same_decision(table, request, strategy, data.draw(st.integers(0, 12)), model)
    assert_same_decision(table, request, strategy, data.draw(st.integers(0, 20)), model)


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
        table.update_metrics(
            node_id, NodeMetrics(memory_total=100 * MIB, memory_free=(1 + number % 7) * MIB)
        )
    lazy = plan(table, Resources(memory=1))
    eager = plan(table, Resources(memory=1)).order
    assert len(eager) == count
    for number in range(count):  # everything changes after the decision
        node_id = f"node-{number:02d}"
        table.update_metrics(
            node_id, NodeMetrics(memory_total=100 * MIB, memory_free=(count - number) * MIB)
        )
    plan(table, Resources(memory=1))  # refreshes the scores the table keeps, changed rows only
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
    table.set_ready("node-1", True)
    plan(table, Resources(memory=1))  # refreshes the scores the table keeps, node-1's only
    table.remove("node-1")  # the last row (node-5) moves into its place
    table.upsert("node-9")
    assert decision.rejected == {
        "node-1": "not-ready",
        "node-3": "not-ready",
        "node-5": "not-ready",
    }
    assert decision.order == ["node-0", "node-2", "node-4"]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from([0.0, -0.25, 0.5, 1.0]), min_size=1, max_size=300), data=st.data()
)
def test_the_head_of_the_priority_order_is_the_head_of_the_full_sort(keys, data):
    # priority_rows finds a few first rows without sorting them all; with many ties (over
    # rank.TIES_SORTED of them for the last place, only the ones the head needs are picked).
    size = len(keys)
    members = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    instances = np.array(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size)))
    id_rank = np.array(data.draw(st.permutations(range(size))))
    limit = data.draw(st.integers(0, size + 2))
    key = np.where(members, keys, np.inf)  # infinity: not a member of this group
    everything = [row for row in np.lexsort((id_rank, instances, key)) if members[row]]
    want = everything[:limit] if limit else everything
    got = priority_rows(key, int(members.sum()), instances, id_rank, size, limit)
    assert got.tolist() == want
    assert key.tolist() == np.where(members, keys, np.inf).tolist()  # left as it was
