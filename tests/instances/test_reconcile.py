"""Agents' instance reports about instances nobody placed: announced once, and bounded."""

from __future__ import annotations

import math
from contextlib import asynccontextmanager

import trio

from scheduler.agents import Agents
from scheduler.cluster import open_cluster
from scheduler.events import EventLog
from scheduler.instances import UNKNOWN_ANNOUNCED, UNKNOWN_RATE, open_instances
from scheduler.lifecycle import Lifecycle
from scheduler.model import (
    InstanceCode,
    InstanceEvent,
    InstanceReport,
    NodeMetrics,
    Snapshot,
    Strategy,
)


def reported(*ids: str) -> NodeMetrics:
    return NodeMetrics(
        8 << 30,
        4 << 30,
        10.0,
        4,
        None,
        None,
        tuple(InstanceReport(i, InstanceCode.RUNNING) for i in ids),
    )


class NoStore:
    """Persistence is not under test here: the lifecycle's store calls do nothing."""

    def save_node(self, *args) -> None:
        pass

    def delete_node(self, node_id: str) -> None:
        pass


@asynccontextmanager
async def open_core(finished_retained: int = 10_000):
    """An event log, a running cluster (no rate limit) and the instances service, wired by the
    scheduler's own Lifecycle: no sockets."""
    events = EventLog(100_000, lambda: Snapshot((), ()))
    agents = Agents()
    async with (
        open_cluster(events, node_timeout=30.0, status_rate=1e6, status_burst=10**6) as cluster,
        open_instances(
            cluster,
            events,
            agents,
            strategy=Strategy.SPREAD,
            attempt_timeout=1.0,
            max_attempts=0,
            finished_retained=finished_retained,
        ) as instances,
    ):
        cluster.follow_ups = Lifecycle(NoStore(), agents, instances)
        yield events, cluster, instances


def announcements(events: EventLog, code: InstanceCode | None = InstanceCode.RUNNING) -> list[str]:
    """Instance ids of the instance events published so far, with `code` (None: any)."""
    return [
        e.body.status.instance_id
        for e in events._events[events._start :]
        if isinstance(e.body, InstanceEvent) and code in (None, e.body.status.code)
    ]


async def test_unknown_instances_are_announced_once_and_at_most_a_bounded_number(autojump_clock):
    async with open_core() as (events, cluster, _):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, reported("x-1", "x-2"))
        cluster.report(node, node.session, reported("x-1", "x-2", "x-3"))
        assert announcements(events) == ["x-1", "x-2", "x-3"], "each announced once"
        for batch in range(3):  # an Agent inventing new ids in every report
            ids = [f"flood-{batch}-{i}" for i in range(UNKNOWN_ANNOUNCED // 2)]
            cluster.report(node, node.session, reported(*ids))
        assert len(announcements(events)) == UNKNOWN_ANNOUNCED, "bounded per node"
        assert len(announcements(events, InstanceCode.TERMINATED)) <= UNKNOWN_ANNOUNCED, (
            "each announced instance ends at most once"
        )
        cluster.leave("node-1")  # a new generation does not renew the budget (issue 13)...
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, reported("x-1"))
        assert announcements(events)[-1] != "x-1"
        await trio.sleep(2 / UNKNOWN_RATE)  # ...time does
        cluster.report(node, node.session, reported("x-1", "x-2"))
        assert announcements(events)[-2:] == ["x-1", "x-2"]


async def test_finished_instances_are_remembered_only_up_to_a_bound(autojump_clock):
    # Instances on a node that left are finished: remembered for Stop/Destroy answers, but a
    # Controller that never destroys them must not grow the scheduler without bound.
    from scheduler.model import InstanceStatus, Workload

    async with open_core(finished_retained=2) as (events, cluster, instances):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        for name in ("a", "b", "c"):
            instances.restore(
                Workload(name, "img"),
                node,
                node.generation,
                InstanceStatus(name, InstanceCode.RUNNING, node_id="node-1"),
            )
        assert sorted(s.instance_id for s in instances.statuses()) == ["a", "b", "c"]
        cluster.leave("node-1")
        left = [s.instance_id for s in instances.statuses()]
        assert len(left) == 2 and set(left) < {"a", "b", "c"}, (
            f"one finished instance is forgotten once more than the bound are kept: {left}"
        )


async def test_a_report_that_overtakes_the_first_status_of_a_placement_is_not_news(autojump_clock):
    # Status reports and Create replies travel on different connections: the Agent may list
    # an instance before the scheduler has read its first status. That instance is ours.
    async with open_core() as (events, cluster, instances):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        instances._placing.add("p-1")  # its attempt is in flight
        cluster.report(node, node.session, reported("p-1"))
        assert announcements(events) == []


async def test_an_announced_instance_the_agent_stops_listing_ends_terminated(autojump_clock):
    # Otherwise the Controller would see it RUNNING forever.
    async with open_core() as (events, cluster, _):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, reported("x-1", "x-2"))
        cluster.report(node, node.session, reported("x-2"))
        assert announcements(events, InstanceCode.TERMINATED) == ["x-1"]
        cluster.report(node, node.session, reported())  # this Agent lists instances: none left
        assert announcements(events, InstanceCode.TERMINATED) == ["x-1", "x-2"]
        assert announcements(events) == ["x-1", "x-2"], "nothing announced twice"


async def test_a_report_sent_before_the_agent_got_a_destroy_is_not_news(autojump_clock):
    # Found by the 25-minute soak: Destroy forgot the instance, then the Agent's report, sent
    # just before it processed the KILL, still listed it RUNNING; the scheduler announced it as
    # unknown and the Controller saw a destroyed instance running again.
    from scheduler.model import InstanceStatus, Workload

    async with open_core() as (events, cluster, instances):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, reported())
        instances.restore(
            Workload("d-1", "img"),
            node,
            node.generation,
            InstanceStatus("d-1", InstanceCode.RUNNING, node_id="node-1"),
        )
        cluster.report(node, node.session, reported("d-1"))
        instances._forget(instances._instances["d-1"], "destroyed")
        cluster.report(node, node.session, reported("d-1", "other"))  # sent before the KILL
        assert announcements(events) == ["other"], "the destroyed instance is no news"
        cluster.report(node, node.session, reported("other"))  # the Agent caught up
        cluster.report(node, node.session, reported("other", "d-1"))  # now it is news again
        assert announcements(events) == ["other", "d-1"]


async def test_the_flood_guard_holds_per_node_across_rejoins_from_new_ports(autojump_clock, caplog):
    # Issue 13: the guard allowed UNKNOWN_ANNOUNCED per node generation, and a rejoin from
    # another port starts a new generation: one Agent certificate announced 301k instances
    # (301k WARNING lines, 26 MB of sqlite: every announcement is a persisted event) in 20 s.
    async with open_core() as (events, cluster, _):
        started = trio.current_time()
        for round_ in range(20):
            node = cluster.join("evil", "10.0.0.9", 7000 + round_)  # a new generation each time
            cluster.report(
                node,
                node.session,
                reported(*(f"flood-{round_}-{i}" for i in range(UNKNOWN_ANNOUNCED))),
            )
            await trio.sleep(1)
        elapsed = trio.current_time() - started
        announced = announcements(events, None)
        assert len(announced) <= UNKNOWN_ANNOUNCED + UNKNOWN_RATE * elapsed + 1, len(announced)
        warnings = [
            r for r in caplog.records if r.levelname == "WARNING" and "evil" in r.getMessage()
        ]
        assert len(warnings) <= 2 * (elapsed / 10 + 1), f"{len(warnings)} WARNING lines"
        other = cluster.join("node-2", "10.0.0.2", 7000)  # another node has its own budget
        cluster.report(other, other.session, reported("x-1"))
        assert announcements(events)[-1] == "x-1"


async def test_the_flood_guard_lets_a_node_announce_again_as_time_passes(autojump_clock):
    async with open_core() as (events, cluster, _):
        node = cluster.join("node-1", "10.0.0.1", 7000)
        cluster.report(node, node.session, reported(*(f"a-{i}" for i in range(UNKNOWN_ANNOUNCED))))
        cluster.report(node, node.session, reported("late-1"))  # a changed list, no budget
        assert "late-1" not in announcements(events)
        await trio.sleep(10 / UNKNOWN_RATE)
        cluster.report(node, node.session, reported("late-1", "late-2"))
        assert announcements(events)[-2:] == ["late-1", "late-2"]


async def test_a_report_cannot_claim_an_instance_placed_on_another_live_node(
    autojump_clock, caplog
):
    # Issue 13: evil-r listed an instance running on legit-00199; watchers got an instance event
    # with node_id=evil-r, ListNodes showed it on both nodes and evil-r's LEFT event carried it.
    from scheduler.model import InstanceStatus, NodeEvent, NodeEventKind, Workload

    async with open_core() as (events, cluster, instances):
        legit = cluster.join("legit-00199", "10.0.0.1", 7000)
        instances.restore(
            Workload("web-1", "img"),
            legit,
            legit.generation,
            InstanceStatus("web-1", InstanceCode.RUNNING, node_id="legit-00199"),
        )
        cluster.report(legit, legit.session, reported("web-1"))
        evil = cluster.join("evil-r", "10.0.0.9", 7000)
        caplog.clear()
        for _ in range(5):
            cluster.report(evil, evil.session, reported("web-1", "own-1"))
            cluster.report(evil, evil.session, reported("web-1"))
        instance_events = [
            e.body.status
            for e in events._events[events._start :]
            if isinstance(e.body, InstanceEvent)
        ]
        assert not [
            s for s in instance_events if s.instance_id == "web-1" and s.node_id != "legit-00199"
        ], instance_events
        assert [s.instance_id for s in instance_events if s.node_id == "evil-r"][:1] == ["own-1"]
        views = {view.id: view.instance_ids for view in cluster.views()}
        assert views == {"legit-00199": ("web-1",), "evil-r": ()}, views
        cluster.leave("evil-r")
        left = [
            e.body
            for e in events._events[events._start :]
            if isinstance(e.body, NodeEvent) and e.body.kind is NodeEventKind.LEFT
        ]
        assert left[-1].node.instance_ids == (), left[-1]
        lines = [r.getMessage() for r in caplog.records if "web-1" in r.getMessage()]
        assert len(lines) == 1, lines  # rate-limited
        assert "evil-r" in lines[0] and "legit-00199" in lines[0], lines


async def test_a_status_event_does_not_grow_with_the_instances_an_agent_lists(autojump_clock):
    # The event log keeps 100,000 events: one Agent listing 1,000 fresh ids in every status
    # made each STATUS event pin its reports (bench/attacks.py unknown_flood: +464 MB in 20 s).
    from scheduler.model import NodeEvent, NodeEventKind

    async with open_core() as (events, cluster, _):
        node = cluster.join("evil", "10.0.0.9", 7000)
        numbers = NodeMetrics(8 << 30, 4 << 30, 10.0, 4)
        for round_ in range(50):
            ids = [f"keep-{i}" for i in range(10)] + [f"junk-{round_}-{i}" for i in range(1000)]
            reports = tuple(InstanceReport(i, InstanceCode.RUNNING) for i in ids)
            if round_ == 0:
                reports = reports[:10]  # these ten are announced; the junk never is
            cluster.report(node, node.session, numbers, reports)
            await trio.sleep(0.1)  # the Agent's rate limit (10/s)
        statuses = [
            e.body.node
            for e in events._events[events._start :]
            if isinstance(e.body, NodeEvent) and e.body.kind is NodeEventKind.STATUS
        ]
        assert all(view.metrics.instances == () for view in statuses), "no reports in events"
        # Round 1 spends the flood budget (990 junk ids counted), round 2 ends them; from then
        # on only the ten announced ones count, and every event shares their one tuple.
        assert max(len(view.instance_ids) for view in statuses) <= UNKNOWN_ANNOUNCED
        keep = {f"keep-{i}" for i in range(10)}
        assert all(keep <= set(view.instance_ids) for view in statuses)
        later = {id(view.instance_ids) for view in statuses[3:]}
        regained = math.ceil(50 * 0.1 * UNKNOWN_RATE)  # each announced once, ended once
        assert len(later) <= 1 + 2 * regained < len(statuses) - 3, "unchanged ids share one tuple"
