"""scheduler.cluster: joins, status reports, leaves and liveness deadlines (SPEC §2.1).

No sockets: the Cluster and its EventLog are driven directly under trio's MockClock
(`autojump_clock`), so a 30 s node timeout takes milliseconds and deadlines are exact.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from scheduler.cluster import Cluster, FollowUps
from scheduler.cluster import open_cluster as registry_cluster
from scheduler.errors import AlreadyExists, NotFound
from scheduler.events import EventLog
from scheduler.model import (
    Event,
    InstanceCode,
    InstanceReport,
    NodeEvent,
    NodeEventKind,
    NodeMetrics,
    NodeState,
    Snapshot,
)
from scheduler.throttle import TokenBucket

TIMEOUT = 30.0  # s: the SPEC's default node_timeout


class RecordingLog(EventLog):
    """An EventLog that also remembers when (trio time) each event was published."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[tuple[float, Event]] = []

    def publish(self, body):
        event = super().publish(body)
        self.published.append((trio.current_time(), event))
        return event

    def node_events(self, kind: NodeEventKind | None = None, node_id: str | None = None):
        """(time, NodeEvent) pairs, optionally of one kind and/or one node."""
        return [
            (at, e.body)
            for at, e in self.published
            if isinstance(e.body, NodeEvent)
            and (kind is None or e.body.kind is kind)
            and (node_id is None or e.body.node.id == node_id)
        ]


@asynccontextmanager
async def open_cluster(
    node_timeout: float = TIMEOUT,
    status_rate: float = 10.0,
    status_burst: int = 20,
    retained: int = 100_000,
    departed_retained: int = 10_000,
):
    holder: dict[str, Cluster] = {}
    events = RecordingLog(retained, lambda: Snapshot(tuple(holder["cluster"].views()), ()))
    async with registry_cluster(
        events,
        node_timeout=node_timeout,
        status_rate=status_rate,
        status_burst=status_burst,
        departed_retained=departed_retained,
    ) as cluster:
        holder["cluster"] = cluster
        yield cluster


def metrics(*instances: tuple[str, InstanceCode], free: int = 4 << 30) -> NodeMetrics:
    return NodeMetrics(
        memory_total=8 << 30,
        memory_free=free,
        cpu_load=10.0,
        cpu_cores=4,
        instances=tuple(InstanceReport(i, c) for i, c in instances),
    )


def kinds(cluster: Cluster, node_id: str) -> list[NodeEventKind]:
    return [body.kind for _, body in cluster.events.node_events(node_id=node_id)]


async def stream_task(cluster: Cluster, node_id: str, *, task_status=trio.TASK_STATUS_IGNORED):
    """Stand-in for a status stream handler: attaches, then waits until its scope is cancelled."""
    with trio.CancelScope() as scope:
        node, session, stream = cluster.attach_stream(node_id, scope)
        task_status.started((node, session, stream))
        try:
            await trio.sleep_forever()
        finally:
            cluster.detach_stream(session, stream)


# -- join ------------------------------------------------------------------------------------


async def test_join_makes_node_ready_and_publishes_joined(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        assert node.state is NodeState.READY
        assert node.session is not None
        [(_, joined)] = cluster.events.node_events()
        assert joined.kind is NodeEventKind.JOINED
        assert (joined.node.id, joined.node.address, joined.node.state) == (
            "node-1",
            "10.0.0.1:7000",
            NodeState.READY,
        )
        assert joined.node.metrics is None, "a node that has not reported has unknown metrics"
        assert cluster.events.revision == 1


async def test_silent_node_is_lost_exactly_at_the_timeout_after_join(autojump_clock):
    async with open_cluster() as cluster:
        joined_at = trio.current_time()
        node = cluster.join("node-1", "10.0.0.1", 7000)
        await trio.sleep(TIMEOUT - 0.001)
        assert node.state is NodeState.READY, "lost before its deadline"
        await trio.sleep(0.002)
        assert node.state is NodeState.LOST
        [(lost_at, lost)] = cluster.events.node_events(NodeEventKind.LOST)
        assert lost_at == pytest.approx(joined_at + TIMEOUT, abs=1e-9)
        assert lost.node.state is NodeState.LOST
        assert node.session is None


async def test_reports_move_the_deadline_and_silence_after_the_last_one_loses_the_node(
    autojump_clock,
):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        for _ in range(6):  # 120 s of reporting every 20 s, with a 30 s timeout
            await trio.sleep(20)
            assert node.state is NodeState.READY, (
                f"a node reporting every 20 s was lost at t={trio.current_time()}"
            )
            cluster.report(node, node.session, metrics())
        last_report = trio.current_time()
        await trio.sleep(TIMEOUT + 5)
        assert node.state is NodeState.LOST
        [(lost_at, _)] = cluster.events.node_events(NodeEventKind.LOST)
        assert lost_at == pytest.approx(last_report + TIMEOUT, abs=1e-9), (
            "LOST must come node_timeout after the last valid status"
        )
        assert kinds(cluster, "node-1") == [NodeEventKind.JOINED] + [NodeEventKind.STATUS] * 6 + [
            NodeEventKind.LOST
        ]


async def test_lost_event_carries_reported_and_placed_instances(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(
            node,
            node.session,
            metrics(
                ("run-1", InstanceCode.RUNNING),
                ("wait-1", InstanceCode.WAITING),
                ("done-1", InstanceCode.TERMINATED),
            ),
        )
        node.placed.add("placed-1")
        cluster.count_instances(node)  # the contract for whoever changes `placed`
        await trio.sleep(TIMEOUT + 1)
        [(_, lost)] = cluster.events.node_events(NodeEventKind.LOST)
        assert lost.node.instance_ids == ("placed-1", "run-1", "wait-1"), (
            "LOST carries placed and not-TERMINATED reported instances, sorted"
        )


async def test_loss_cancels_the_status_stream_with_a_reason(autojump_clock):
    async with open_cluster() as cluster:
        cluster.join("node-1", "10.0.0.1", 7000)
        async with trio.open_nursery() as nursery:
            _, session, stream = await nursery.start(stream_task, cluster, "node-1")
            await trio.sleep(TIMEOUT + 1)
        assert stream.scope.cancelled_caught, "the stream of a lost node must be cancelled"
        assert "lost" in stream.ended_because
        assert session.stream is None


async def test_a_wave_of_losses_publishes_every_lost_event_before_ending_the_streams(
    autojump_clock,
):
    # Ending a stream costs grpclib real work; the LOST events go first, the streams follow
    # paced (SWEEP_STEP, STREAMS_PER_SWEEP_STEP), and every one of them does end.
    from scheduler.cluster.registry import STREAMS_PER_SWEEP_STEP, SWEEP_STEP

    count = 100
    ended: dict[str, float] = {}

    async def stream_until_ended(node_id, *, task_status=trio.TASK_STATUS_IGNORED):
        try:
            await stream_task(cluster, node_id, task_status=task_status)
        finally:
            ended[node_id] = trio.current_time()

    async with open_cluster() as cluster:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                cluster.join(f"node-{i}", "10.0.0.1", 7000)
                await nursery.start(stream_until_ended, f"node-{i}")
            deadline = trio.current_time() + TIMEOUT
            await trio.sleep(TIMEOUT + 1)
        lost = cluster.events.node_events(NodeEventKind.LOST)
        assert len(lost) == count and all(at == pytest.approx(deadline) for at, _ in lost)
        assert sorted(ended) == sorted(cluster.nodes), "every lost node's stream ended"
        assert min(ended.values()) > deadline, "no stream ended before the LOST events went out"
        steps = -(-count // STREAMS_PER_SWEEP_STEP)
        assert max(ended.values()) == pytest.approx(deadline + steps * SWEEP_STEP), (
            "paced: STREAMS_PER_SWEEP_STEP streams every SWEEP_STEP"
        )


async def test_only_the_most_recently_departed_nodes_are_kept(autojump_clock):
    # Churn with fresh node ids (autoscaling) must not grow the registry without bound: beyond
    # `[liveness] departed_retained`, the node gone longest is forgotten, from the listing and
    # placement too.
    forgotten: list[str] = []

    class Recording(FollowUps):
        def node_forgotten(self, node_id: str) -> None:
            forgotten.append(node_id)

    async with open_cluster(departed_retained=2) as cluster:
        cluster.follow_ups = Recording()
        for name in ("a", "b", "c", "d"):
            cluster.join(name, "10.0.0.1", 7000)
        cluster.leave("a")
        cluster.leave("b")
        assert forgotten == [] and set(cluster.nodes) == {"a", "b", "c", "d"}
        cluster.join("a", "10.0.0.1", 7000)  # back: no longer departed
        cluster.leave("c")
        assert forgotten == [], "a came back, so only b and c are departed"
        await trio.sleep(TIMEOUT + 1)  # a and d are lost: b, then c, are the longest gone
        assert forgotten == ["b", "c"]
        assert set(cluster.nodes) == {"a", "d"}
        assert sorted(cluster.table.node_ids()) == ["a", "d"]
        assert [view.id for view in cluster.views()] == ["a", "d"]
        node = cluster.join("b", "10.0.0.1", 7000)  # a forgotten node joins as a new one
        assert node.state is NodeState.READY and node.placed == set()
        assert forgotten == ["b", "c"]


# -- leave -----------------------------------------------------------------------------------


async def test_leave_publishes_left_with_instances_and_is_idempotent(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, metrics(("run-1", InstanceCode.RUNNING)))
        node.placed.add("placed-1")
        cluster.count_instances(node)  # the contract for whoever changes `placed`
        async with trio.open_nursery() as nursery:
            _, _, stream = await nursery.start(stream_task, cluster, "node-1")
            cluster.leave("node-1")
        assert node.state is NodeState.LEFT
        assert stream.scope.cancelled_caught and "left" in stream.ended_because
        [(_, left)] = cluster.events.node_events(NodeEventKind.LEFT)
        assert left.node.instance_ids == ("placed-1", "run-1")
        assert left.node.state is NodeState.LEFT
        revision = cluster.events.revision
        cluster.leave("node-1")
        assert cluster.events.revision == revision, "a second leave must publish nothing"
        await trio.sleep(TIMEOUT * 3)
        assert node.state is NodeState.LEFT, "the old deadline fired after leave"
        assert kinds(cluster, "node-1") == [
            NodeEventKind.JOINED,
            NodeEventKind.STATUS,
            NodeEventKind.LEFT,
        ]


async def test_a_departed_node_keeps_its_view_not_its_last_instance_list(autojump_clock):
    # Up to `departed_retained` (10,000) departed nodes are kept; the soak's churn departs ~30 a
    # minute, and each kept its Agent's last list and its index (bench/RESULTS.md).
    async with open_cluster() as cluster:
        for node_id, depart in (("node-1", "leave"), ("node-2", "lost")):
            node = cluster.join(node_id, "10.0.0.1", 7000)
            reports = tuple(
                InstanceReport(f"{node_id}-i{i}", InstanceCode.RUNNING) for i in range(100)
            )
            cluster.report(node, node.session, metrics(), reports)
            node.placed.add(f"{node_id}-placed")
            cluster.count_instances(node)
            ids = node.ids
            assert len(ids) == 101 and len(node.listed) == 100
            if depart == "leave":
                cluster.leave(node_id)
            else:
                await trio.sleep(TIMEOUT + 1)
            assert node.state is not NodeState.READY
            assert node.reported is None and node.listed == {}, depart
            assert node.ids == ids and node.view().instance_ids == ids, "the view is unchanged"
            cluster.count_instances(node)  # as when one of its instances is forgotten
            assert node.ids == ids
        node = cluster.join("node-1", "10.0.0.1", 7000)  # a rejoin reports as before
        cluster.report(node, node.session, metrics(("again", InstanceCode.RUNNING)))
        assert node.listed == {"again": InstanceCode.RUNNING} and "again" in node.ids


async def test_leave_of_a_lost_node_changes_nothing(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        await trio.sleep(TIMEOUT + 1)
        cluster.leave("node-1")
        assert node.state is NodeState.LOST
        assert kinds(cluster, "node-1") == [NodeEventKind.JOINED, NodeEventKind.LOST]


async def test_leave_of_an_unknown_node_is_not_found(autojump_clock):
    async with open_cluster() as cluster:
        with pytest.raises(NotFound, match="ghost"):
            cluster.leave("ghost")
        assert cluster.events.revision == 0


# -- rejoin ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["lost", "left"])
async def test_rejoin_after_loss_or_leave_starts_a_new_session(autojump_clock, ending):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        old_session = node.session
        cluster.report(node, old_session, metrics(("run-1", InstanceCode.RUNNING)))
        if ending == "lost":
            await trio.sleep(TIMEOUT + 1)
        else:
            cluster.leave("node-1")
        rejoined_at = trio.current_time()
        again = cluster.join("node-1", "10.0.0.2", 7001)
        assert again is node and node.state is NodeState.READY
        assert node.session is not old_session and node.session.number > old_session.number
        assert node.address == "10.0.0.2:7001"
        [*_, (_, joined)] = cluster.events.node_events(NodeEventKind.JOINED)
        assert joined.node.metrics is None, (
            "a new session must not inherit the old session's status (unplaceable until it reports)"
        )
        with pytest.raises(NotFound, match="ended"):
            cluster.report(node, old_session, metrics())
        await trio.sleep(TIMEOUT + 1)
        losses = cluster.events.node_events(NodeEventKind.LOST)
        assert losses[-1][0] == pytest.approx(rejoined_at + TIMEOUT, abs=1e-9)
        assert kinds(cluster, "node-1") == [
            NodeEventKind.JOINED,
            NodeEventKind.STATUS,
            NodeEventKind[ending.upper()],
            NodeEventKind.JOINED,
            NodeEventKind.LOST,
        ]


async def test_rejoin_replaces_the_old_deadline(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        await trio.sleep(20)
        rejoined_at = trio.current_time()
        cluster.join("node-1", "10.0.0.1", 7000)  # no stream attached: allowed while READY
        await trio.sleep(TIMEOUT - 20 + 1)  # past the first session's deadline
        assert node.state is NodeState.READY, "the first session's deadline fired after rejoin"
        await trio.sleep(20)
        [(lost_at, _)] = cluster.events.node_events(NodeEventKind.LOST)
        assert lost_at == pytest.approx(rejoined_at + TIMEOUT, abs=1e-9)
        assert kinds(cluster, "node-1") == [
            NodeEventKind.JOINED,
            NodeEventKind.JOINED,
            NodeEventKind.LOST,
        ]


async def test_join_is_refused_only_while_a_live_stream_is_attached(autojump_clock):
    async with open_cluster() as cluster:
        cluster.join("node-1", "10.0.0.1", 7000)
        async with trio.open_nursery() as nursery:
            await nursery.start(stream_task, cluster, "node-1")
            with pytest.raises(AlreadyExists, match="live status stream") as refused:
                cluster.join("node-1", "10.0.0.1", 7000)
            assert "node-1" in refused.value.message
            assert refused.value.status == "ALREADY_EXISTS"
            nursery.cancel_scope.cancel()  # the stream ends (client went away)
        cluster.join("node-1", "10.0.0.1", 7000)
        assert kinds(cluster, "node-1") == [NodeEventKind.JOINED, NodeEventKind.JOINED]


# -- status streams --------------------------------------------------------------------------


async def test_a_new_stream_replaces_the_older_one(autojump_clock):
    async with open_cluster() as cluster:
        cluster.join("node-1", "10.0.0.1", 7000)
        async with trio.open_nursery() as nursery:
            _, session, first = await nursery.start(stream_task, cluster, "node-1")
            _, same_session, second = await nursery.start(stream_task, cluster, "node-1")
            assert same_session is session
            await trio.sleep(0)
            assert first.scope.cancelled_caught, "the older stream must be cancelled"
            assert "replaced" in first.ended_because
            assert session.stream is second, "detaching the old stream must keep the new one"
            assert not second.scope.cancel_called
            nursery.cancel_scope.cancel()


async def test_streams_and_reports_need_a_ready_session(autojump_clock):
    async with open_cluster() as cluster:
        with pytest.raises(NotFound, match="JoinCluster"):
            cluster.attach_stream("ghost", trio.CancelScope())
        node = cluster.join("node-1", "10.0.0.1", 7000)
        session = node.session
        cluster.leave("node-1")
        with pytest.raises(NotFound, match="LEFT"):
            cluster.attach_stream("node-1", trio.CancelScope())
        with pytest.raises(NotFound, match="ended"):
            cluster.report(node, session, metrics())
        assert node.metrics is None, "a report on an ended session must not be stored"


async def test_report_stores_metrics_and_publishes_status(autojump_clock):
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        good = metrics(("run-1", InstanceCode.RUNNING), free=1 << 30)
        cluster.report(node, node.session, good)
        assert node.metrics == good
        [(_, status)] = cluster.events.node_events(NodeEventKind.STATUS)
        assert status.node.metrics == good and status.node.instance_ids == ("run-1",)
        assert [v.id for v in cluster.views()] == ["node-1"]


async def test_ten_thousand_silent_nodes_are_all_lost_exactly_at_their_deadlines(autojump_clock):
    count = 10_000
    async with open_cluster() as cluster:
        first_at = trio.current_time()
        for i in range(count // 2):
            cluster.join(f"node-{i}", "10.0.0.1", 7000)
        await trio.sleep(7.5)
        second_at = trio.current_time()
        for i in range(count // 2, count):
            cluster.join(f"node-{i}", "10.0.0.1", 7000)
        await trio.sleep(TIMEOUT + 1)
        lost = cluster.events.node_events(NodeEventKind.LOST)
        assert len(lost) == count
        assert {body.node.id for _, body in lost} == set(cluster.nodes)
        assert all(n.state is NodeState.LOST for n in cluster.nodes.values())
        for at, body in lost:
            expected = (first_at if int(body.node.id[5:]) < count // 2 else second_at) + TIMEOUT
            assert at == pytest.approx(expected, abs=1e-9), (
                f"{body.node.id} lost at {at}, its deadline was {expected}"
            )


async def test_one_task_keeps_every_deadline_whatever_the_number_of_sessions(autojump_clock):
    # A trio task per session held ~3.5 KiB per node for its whole life (bench figure 5).
    async with open_cluster() as cluster:
        nursery = cluster._nursery
        before = len(nursery.child_tasks)
        for i in range(1000):
            cluster.join(f"node-{i}", "10.0.0.1", 7000)
        cluster.join("node-0", "10.0.0.1", 7000)  # a rejoin: its first session's entry is stale
        await trio.sleep(1)
        assert len(nursery.child_tasks) == before
        await trio.sleep(TIMEOUT)
        assert all(n.state is NodeState.LOST for n in cluster.nodes.values())
        assert len(cluster.events.node_events(NodeEventKind.LOST)) == 1000, (
            "one LOST per node: the ended session's deadline is dropped, not acted on"
        )
        assert cluster._deadlines == [], "nothing is kept for sessions that ended"


async def test_an_agent_rejoining_in_a_loop_cannot_grow_the_liveness_heap(autojump_clock):
    # Each join starts a session with a heap entry; an ended session's entry would otherwise
    # stay until its deadline (node_timeout): one per join of an Agent rejoining in a loop.
    from scheduler.cluster.registry import STALE_DEADLINES

    async with open_cluster() as cluster:
        for _ in range(20 * STALE_DEADLINES):
            cluster.join("looping", "10.0.0.1", 7000)
        assert len(cluster._deadlines) <= 2 * len(cluster.nodes) + STALE_DEADLINES + 1
        await trio.sleep(TIMEOUT + 1)
        assert cluster.nodes["looping"].state is NodeState.LOST, "its live session still counts"
        assert len(cluster.events.node_events(NodeEventKind.LOST)) == 1


# -- TokenBucket -----------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_spaces_messages_at_the_rate():
    bucket = TokenBucket(rate=5.0, burst=2, now=100.0)
    assert bucket.delay(100.0) == 0.0
    assert bucket.delay(100.0) == 0.0
    assert bucket.delay(100.0) == pytest.approx(0.2)
    assert bucket.delay(100.0) == pytest.approx(0.4), "waiting messages queue behind each other"


def test_token_bucket_refills_at_the_rate_up_to_the_burst():
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.delay(0.0) == 0.0
    assert bucket.delay(0.1) == 0.0, "one token refills in 1/rate s"
    assert bucket.delay(0.1) == pytest.approx(0.1)
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    delays = [bucket.delay(1000.0) for _ in range(4)]  # a long idle earns at most `burst`
    assert delays[:3] == [0.0, 0.0, 0.0] and delays[3] == pytest.approx(0.1)


def test_token_bucket_never_delays_a_sender_within_the_rate():
    bucket = TokenBucket(rate=10.0, burst=1, now=0.0)
    delays = [bucket.delay(i * 0.1) for i in range(100)]
    assert max(delays) < 1e-9, "a sender exactly at the rate waits (at most float noise)"


def test_token_bucket_throttles_a_sender_that_obeys_its_delays_to_the_rate():
    rate, burst, count = 5.0, 2, 12
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    for _ in range(count):
        now += bucket.delay(now)
    assert now == pytest.approx((count - burst) / rate), (
        "after the burst, messages are applied exactly 1/rate apart"
    )


async def test_the_status_rate_limit_holds_per_node_across_rejoins(autojump_clock):
    # Issue 13: a rejoin from another port starts a new session (and generation); a limiter
    # per session gave every rejoin a fresh burst, so an Agent rejoining in a loop sent 150
    # statuses a second instead of status_rate (bench/attacks.py unknown_flood).
    async with open_cluster() as cluster:
        node = cluster.join("node-1", "10.0.0.1", 7000)
        waits = [node.session.limiter.delay(trio.current_time()) for _ in range(20)]
        assert waits == [0.0] * 20, "the burst (status_burst 20) is free"
        for port in range(7001, 7004):
            node = cluster.join("node-1", "10.0.0.1", port)  # a new generation each time
            assert node.session.limiter.delay(trio.current_time()) > 0, (
                "a rejoin does not renew the burst"
            )
