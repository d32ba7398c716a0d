"""scheduler.controller.ClusterService over real sockets: WatchEvents and ListNodes (SPEC §2.3).

A fake Controller watches while fake Agents join, report and leave on 127.0.0.1:0.
"""

from __future__ import annotations

import time

import trio
import trio_asyncio
from grpclib.config import Configuration

from scheduler._proto import controller_grpc, controller_pb2
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    drop_stream,
    event_kind,
    make_channel,
    open_channel,
    status,
    wait_event,
)

aio = trio_asyncio.aio_as_trio
GiB = 1 << 30
READY, LEFT, LOST = controller_pb2.Node.READY, controller_pb2.Node.LEFT, controller_pb2.Node.LOST


def summary(event: controller_pb2.ClusterEvent) -> tuple:
    kind = event_kind(event)
    return (event.revision, kind, event.node.node.id if event.HasField("node") else "")


async def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_a_reconnecting_watcher_gets_exactly_the_missed_events_in_order():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)
        node_a, node_b, node_c = (FakeAgent(channel, f"node-{x}") for x in "abc")
        async with controller.watch() as events:
            first = await events.receive()
            assert event_kind(first) == "SNAPSHOT"
            await node_a.join()
            stream = await node_a.report(mem_free=3 * GiB)
            last = await wait_event(events, "STATUS", "node-a")
        epoch, seen = last.epoch, last.revision
        assert epoch == scheduler.events.epoch

        # Disconnected: three events happen.
        await stream.send(status("node-a", mem_free=1 * GiB))

        async def status_applied():
            nodes = await controller.list_nodes()
            return nodes[0].memory_free == 1 * GiB

        await wait_until(status_applied, "the second status")
        await node_b.join()
        await node_a.leave()
        await drop_stream(stream)

        async with controller.watch(epoch, seen) as events:
            missed = [await events.receive() for _ in range(3)]
            assert [summary(e) for e in missed] == [
                (seen + 1, "STATUS", "node-a"),
                (seen + 2, "JOINED", "node-b"),
                (seen + 3, "LEFT", "node-a"),
            ], "replay must be exactly the missed events, in order, with no snapshot"
            assert missed[0].node.node.memory_free == 1 * GiB
            assert all(e.epoch == epoch for e in missed)
            await node_c.join()
            live = await events.receive()
            assert summary(live) == (seen + 4, "JOINED", "node-c"), "then live events follow"


async def test_a_new_watcher_gets_a_snapshot_of_every_node_first():
    timeout = 0.3
    config = make_config(liveness={"node_timeout": timeout})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)
        ready, gone, lost = (
            FakeAgent(channel, name, port=port)
            for name, port in (("ready", 7001), ("gone", 7002), ("lost", 7003))
        )
        async with controller.watch() as events, trio.open_nursery() as nursery:
            await lost.join()
            await gone.join()
            await gone.leave()
            await ready.join()
            stream = await ready.report(mem_free=2 * GiB, instances=[("inst-1", 1)])

            async def keep_reporting():  # "ready" must not be lost meanwhile
                while True:
                    await trio.sleep(timeout / 5)
                    await stream.send(status("ready", mem_free=2 * GiB, instances=[("inst-1", 1)]))

            nursery.start_soon(keep_reporting)
            await wait_event(events, "STATUS", "ready")
            await wait_event(events, "LOST", "lost")

            for epoch, after in (
                ("", 0),
                ("not-this-epoch", 1),
                (scheduler.events.epoch, scheduler.events.revision + 5),
            ):
                head = scheduler.events.revision
                async with controller.watch(epoch, after) as watch:
                    snapshot = await watch.receive()
                    assert event_kind(snapshot) == "SNAPSHOT", (epoch, after, snapshot)
                    assert snapshot.epoch == scheduler.events.epoch
                    assert head <= snapshot.revision <= scheduler.events.revision, (
                        "a snapshot is stamped with the head revision when it was taken"
                    )
                    nodes = {n.id: n for n in snapshot.snapshot.nodes}
                    assert {k: n.state for k, n in nodes.items()} == {
                        "ready": READY,
                        "gone": LEFT,
                        "lost": LOST,
                    }
                    assert nodes["ready"].memory_free == 2 * GiB
                    assert list(nodes["ready"].instance_ids) == ["inst-1"]
                    assert nodes["ready"].address == "127.0.0.1:7001"
                    live = await watch.receive()
                    assert live.revision == snapshot.revision + 1, (
                        "live events follow the snapshot without a gap"
                    )
            nursery.cancel_scope.cancel()
        await drop_stream(stream)


async def test_a_slow_watcher_loses_no_membership_event():
    """A watcher that stops reading falls far behind; it may skip superseded STATUS only."""
    statuses = 4000
    config = make_config(
        liveness={"status_rate": 1e6, "status_burst": 1_000_000, "node_timeout": 2.0}
    )
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        # A small HTTP/2 window, so the slow watcher's backlog stays in the scheduler's log.
        small = Configuration(
            http2_connection_window_size=2**16 - 1, http2_stream_window_size=2**16 - 1
        )
        slow_channel = await make_channel(scheduler.port, config=small)
        slow = controller_grpc.ClusterServiceStub(slow_channel).WatchEvents.open()
        entered = False
        try:
            controller = FakeController(channel)
            busy = [FakeAgent(channel, f"busy-{i}") for i in range(2)]
            for agent in busy:
                await agent.join()
            async with controller.watch() as fast_events:
                await aio(slow.__aenter__)()
                entered = True
                await aio(slow.send_message)(controller_pb2.WatchRequest(), end=True)
                first = await aio(slow.recv_message)()
                assert first.HasField("snapshot")
                ghost = FakeAgent(channel, "ghost")
                await ghost.join()  # never reports: LOST while the slow watcher is not reading
                # The slow watcher stops reading now.
                streams = [await agent.open_stream() for agent in busy]
                visitors = []
                for i in range(statuses):
                    await streams[i % 2].send(status(f"busy-{i % 2}", mem_free=i))
                    if i % 800 == 400:
                        visitor = FakeAgent(channel, f"visitor-{i}")
                        await visitor.join()
                        visitors.append(visitor)
                    if i % 800 == 410:  # soon: a visitor that never reports is LOST after 2 s
                        await visitors[-1].leave()
                expected = statuses + 2 * len(visitors) + 2  # + the ghost's JOINED and LOST

                async def all_applied():
                    return (
                        scheduler.events.revision >= first.revision + expected
                        and scheduler.cluster.nodes["ghost"].session is None
                    )

                await wait_until(all_applied, "every status and the ghost's loss", timeout=10)
                head = scheduler.events.revision

                fast = []
                while not fast or fast[-1].revision < head:
                    fast.append(await fast_events.receive())
                slow_got = []
                while not slow_got or slow_got[-1].revision < head:
                    slow_got.append(await aio(slow.recv_message)())

            assert [e.revision for e in slow_got] == sorted({e.revision for e in slow_got}), (
                "a slow watcher still gets events in revision order"
            )
            assert not any(e.HasField("snapshot") for e in slow_got), (
                "within the retained log a slow watcher needs no snapshot"
            )

            def membership(events):
                return [summary(e) for e in events if event_kind(e) not in ("STATUS", "SNAPSHOT")]

            assert membership(slow_got) == membership(fast), (
                "a slow watcher must get every JOINED/LEFT/LOST"
            )
            assert sum(event_kind(e) == "JOINED" for e in slow_got) == len(visitors) + 1
            assert sum(event_kind(e) == "LEFT" for e in slow_got) == len(visitors)
            assert [summary(e)[1:] for e in slow_got if event_kind(e) == "LOST"] == [
                ("LOST", "ghost")
            ]

            def latest(events):
                return {
                    e.node.node.id: (e.revision, e.node.node.memory_free)
                    for e in events
                    if event_kind(e) == "STATUS"
                }

            assert latest(slow_got) == latest(fast), "the latest STATUS of each node arrives"
            assert latest(slow_got)["busy-1"][1] == statuses - 1
            assert event_kind(fast[0]) == "SNAPSHOT" and first.revision == fast[0].revision
            assert len(slow_got) < len(fast), (
                "the slow watcher should have fallen far enough behind to skip superseded STATUS"
            )
            for stream in streams:
                await drop_stream(stream)
        finally:
            if entered:
                await aio(slow.cancel)()
                await aio(slow.__aexit__)(None, None, None)
            slow_channel.close()


async def test_list_nodes_reports_every_node_with_its_status():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)
        assert await controller.list_nodes() == []
        new = FakeAgent(channel, "b-new", port=7001)
        old = FakeAgent(channel, "a-old", port=7002)
        quiet = FakeAgent(channel, "c-quiet", port=7003)
        before = time.time()
        async with controller.watch() as events:
            for agent in (new, old, quiet):
                await agent.join()
            new_stream = await new.report(
                mem_total=16 * GiB,
                mem_free=6 * GiB,
                load=42.5,
                cores=8,
                disk_total=500 * GiB,
                disk_free=200 * GiB,
                instances=[("run-1", 1), ("done-1", 2)],
            )
            old_stream = await old.report(mem_total=4 * GiB, mem_free=1 * GiB, load=70.0, cores=0)
            await wait_event(events, "STATUS", "b-new")
            await wait_event(events, "STATUS", "a-old")
        after = time.time()
        await quiet.leave()
        nodes = await controller.list_nodes()
        assert [n.id for n in nodes] == ["a-old", "b-new", "c-quiet"], "sorted by node id"
        a_old, b_new, c_quiet = nodes
        assert (
            b_new.address,
            b_new.state,
            b_new.memory_total,
            b_new.memory_free,
            b_new.cpu_load,
            b_new.cpu_cores,
            b_new.disk_total,
            b_new.disk_free,
            list(b_new.instance_ids),
        ) == ("127.0.0.1:7001", READY, 16 * GiB, 6 * GiB, 42.5, 8, 500 * GiB, 200 * GiB, ["run-1"])
        assert before <= b_new.last_seen_unix <= after
        assert (
            a_old.memory_total,
            a_old.memory_free,
            a_old.cpu_load,
            a_old.cpu_cores,
            a_old.disk_total,
            a_old.disk_free,
            list(a_old.instance_ids),
        ) == (4 * GiB, 1 * GiB, 70.0, 0, 0, 0, []), "an old Agent's unknown dimensions stay 0"
        assert (c_quiet.state, c_quiet.address, c_quiet.memory_total) == (LEFT, "127.0.0.1:7003", 0)
        await drop_stream(new_stream)
        await drop_stream(old_stream)


async def test_a_replayed_burst_arrives_whole_and_in_order():
    # Events waiting for a watcher leave several to an HTTP/2 write (grpc_bridge.send_messages):
    # a replay of 300 events must still arrive as 300 messages, in revision order.
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)
        async with controller.watch() as events:
            snapshot = await events.receive()
        epoch, seen = snapshot.epoch, snapshot.revision
        names = [f"node-{i:03d}" for i in range(300)]
        for name in names:
            await FakeAgent(channel, name).join()
        async with controller.watch(epoch, seen) as events:
            replayed = [await events.receive() for _ in names]
        assert [summary(e) for e in replayed] == [
            (seen + 1 + i, "JOINED", name) for i, name in enumerate(names)
        ]
