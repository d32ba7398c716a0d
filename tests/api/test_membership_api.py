"""scheduler.agent over real sockets: join, status streams, leave, liveness, throttling,
undecodable requests and graceful shutdown (SPEC §2.1, §4).

Fake Agents and a fake Controller talk gRPC to a scheduler on 127.0.0.1:0. Liveness here uses
short real timeouts: MockClock cannot drive socket tests (autojump would fire while waiting on
I/O). Every test runs under running_scheduler's fail_after guard (or its own).
"""

from __future__ import annotations

import math
import uuid

import pytest
import trio
import trio_asyncio
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from scheduler._proto import agent_pb2, controller_pb2
from scheduler.app import serve
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    drop_stream,
    event_kind,
    make_channel,
    open_channel,
    status,
    stream_outcome,
    wait_event,
)

aio = trio_asyncio.aio_as_trio
GiB = 1 << 30


async def refused(call, *args) -> GRPCError:
    """Await `call(*args)`, which must fail; return its GRPCError."""
    with pytest.raises(GRPCError) as caught:
        await call(*args)
    return caught.value


async def node_by_id(controller: FakeController, node_id: str) -> controller_pb2.Node:
    [node] = [n for n in await controller.list_nodes() if n.id == node_id]
    return node


# -- join ------------------------------------------------------------------------------------


async def test_join_rejects_invalid_ids_and_ports_naming_the_field():
    cases = [
        ("", 7000, "id"),
        ("a" * 254, 7000, "id"),
        ("UPPER_case!", 7000, "id"),
        ("a b", 7000, "id"),
        ("node-1", 0, "port"),
        ("node-1", 70000, "port"),
    ]
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "unused"), FakeController(channel)
        for node_id, port, field in cases:
            error = await refused(agent.join, node_id, port)
            assert error.status is Status.INVALID_ARGUMENT, (node_id, port, error)
            assert error.message.startswith(f"{field} "), (
                f"the message must name the field {field!r}: {error.message!r}"
            )
            if field == "id":
                assert "1-253 characters" in error.message, error.message
            else:
                assert str(port) in error.message and "1-65535" in error.message, error.message
        assert await controller.list_nodes() == [], "a refused join must not create a node"
        await agent.join("a" * 253, 65535)  # the boundaries are valid
        await agent.join("node.example-1", 1)
        assert [n.id for n in await controller.list_nodes()] == ["a" * 253, "node.example-1"]


async def test_an_uppercase_uuid_is_a_valid_node_id():
    node_id = str(uuid.uuid4()).upper()
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, node_id, port=7001), FakeController(channel)
        async with controller.watch() as events:
            await agent.join()
            joined = await wait_event(events, "JOINED", node_id)
            stream = await agent.report()
            await wait_event(events, "STATUS", node_id)
            await drop_stream(stream)
        node = await node_by_id(controller, node_id)
        assert node.address == "127.0.0.1:7001"
        assert joined.node.node.address == "127.0.0.1:7001"
        assert node.state == controller_pb2.Node.READY


async def test_join_is_refused_while_the_stream_is_live_and_allowed_after_it_ended():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        async with controller.watch() as events:
            await agent.join()
            stream = await agent.report()
            await wait_event(events, "STATUS", "node-1")
            error = await refused(agent.join)
            assert error.status is Status.ALREADY_EXISTS
            assert "node-1" in error.message and "live status stream" in error.message

            assert await stream.finish() == agent_pb2.Empty()  # the Agent closes its stream
            await agent.join()  # ... and may join again
            await wait_event(events, "JOINED", "node-1")

            stream = await agent.report()
            await wait_event(events, "STATUS", "node-1")
            await drop_stream(stream)  # the Agent's stream dies (reset), as after a crash
            with trio.fail_after(2):
                while True:
                    try:
                        await agent.join()
                        break
                    except GRPCError as err:
                        assert err.status is Status.ALREADY_EXISTS, err
                        await trio.sleep(0.02)
            await wait_event(events, "JOINED", "node-1")


async def test_rejoin_is_allowed_after_lost_and_after_left():
    config = make_config(liveness={"node_timeout": 0.3})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        async with controller.watch() as events:
            await agent.join()
            stream = await agent.report()
            await wait_event(events, "LOST", "node-1")
            error = await stream_outcome(stream)
            assert error is not None and error.status is Status.ABORTED, error
            assert "lost" in error.message, error.message
            await stream.cancel()

            await agent.join()
            await wait_event(events, "JOINED", "node-1")
            await agent.leave()
            await wait_event(events, "LEFT", "node-1")
            await agent.join()
            joined = await wait_event(events, "JOINED", "node-1")
            assert joined.node.node.state == controller_pb2.Node.READY
        assert (await node_by_id(controller, "node-1")).state == controller_pb2.Node.READY


# -- status streams --------------------------------------------------------------------------


async def test_status_from_a_node_that_has_not_joined_is_not_found():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent = FakeAgent(channel, "ghost")
        stream = await agent.report()
        error = await stream_outcome(stream)
        await stream.cancel()
        assert error is not None and error.status is Status.NOT_FOUND, error
        assert "ghost" in error.message and "JoinCluster" in error.message, error.message

        await agent.join()
        await agent.leave()
        stream = await agent.report()
        error = await stream_outcome(stream)
        await stream.cancel()
        assert error is not None and error.status is Status.NOT_FOUND, error
        assert "LEFT" in error.message, error.message


INVALID_STATUSES = [
    (dict(mem_total=1000, mem_free=2000), "memory.free"),
    (dict(disk_total=1000, disk_free=2000), "disk.free"),
    # 2^64 - 1 bytes free of 2^64 - 1: no such node exists, and it would be ranked first.
    (dict(mem_total=2**64 - 1, mem_free=2**64 - 1), "memory.total"),
    (dict(disk_total=2**64 - 1, disk_free=2**64 - 1), "disk.total"),
    (dict(load=-1.0), "cpu_load.load"),
    (dict(load=101.0), "cpu_load.load"),
    (dict(load=math.nan), "cpu_load.load"),
    (dict(load=math.inf), "cpu_load.load"),
    (dict(instances=[("instance-ok_1", 1), ("instance/bad", 1)]), "instances.instance_id"),
]


async def test_invalid_values_are_refused_and_the_node_keeps_its_last_good_status():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        good = dict(
            mem_total=8 * GiB,
            mem_free=4 * GiB,
            load=10.0,
            cores=4,
            disk_total=100 * GiB,
            disk_free=50 * GiB,
        )
        async with controller.watch() as events:
            await agent.join()
            stream = await agent.report(**good)
            await wait_event(events, "STATUS", "node-1")
            await stream.finish()
        before = await node_by_id(controller, "node-1")
        assert (before.memory_free, before.disk_free, before.cpu_load) == (4 * GiB, 50 * GiB, 10.0)

        for values, field in INVALID_STATUSES:
            stream = await agent.report(**{**good, **values})
            error = await stream_outcome(stream)
            await stream.cancel()
            assert error is not None and error.status is Status.INVALID_ARGUMENT, (values, error)
            assert field in error.message, f"{values}: the message must name {field}: {error}"
        after = await node_by_id(controller, "node-1")
        assert after == before, "an invalid status must change nothing (not even last_seen)"

        # A stream that was good and turns invalid: the good message stays applied.
        stream = await agent.report(**{**good, "mem_free": 3 * GiB})
        await stream.send(status("node-1", **{**good, "load": 150.0}))
        error = await stream_outcome(stream)
        await stream.cancel()
        assert error is not None and error.status is Status.INVALID_ARGUMENT, error
        node = await node_by_id(controller, "node-1")
        assert (node.memory_free, node.cpu_load, node.state) == (
            3 * GiB,
            10.0,
            controller_pb2.Node.READY,
        )


async def test_a_second_stream_for_a_node_ends_the_first_with_aborted():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        async with controller.watch() as events:
            await agent.join()
            first = await agent.report(mem_free=1 * GiB)
            await wait_event(events, "STATUS", "node-1")
            second = await agent.report(mem_free=2 * GiB)
            error = await stream_outcome(first)
            await first.cancel()
            assert error is not None and error.status is Status.ABORTED, error
            assert "node-1" in error.message and "replaced" in error.message, error.message

            await wait_event(events, "STATUS", "node-1")
            await second.send(status("node-1", mem_free=3 * GiB))
            latest = await wait_event(events, "STATUS", "node-1")
            assert latest.node.node.memory_free == 3 * GiB, "the newer stream must keep working"
            assert await second.finish() == agent_pb2.Empty()


async def test_a_stream_may_not_switch_nodes():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        one, two = FakeAgent(channel, "node-1"), FakeAgent(channel, "node-2")
        await one.join()
        await two.join()
        stream = await one.report()
        await stream.send(status("node-2"))
        error = await stream_outcome(stream)
        await stream.cancel()
        assert error is not None and error.status is Status.INVALID_ARGUMENT, error
        assert "node-1" in error.message and "node-2" in error.message, error.message


# -- leave -----------------------------------------------------------------------------------


async def test_leave_ends_the_stream_publishes_left_once_and_is_idempotent():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        marker = FakeAgent(channel, "marker")
        async with controller.watch() as events:
            await agent.join()
            stream = await agent.report(instances=[("inst-1", 1), ("inst-2", 2)])
            await wait_event(events, "STATUS", "node-1")
            await agent.leave()
            error = await stream_outcome(stream)
            await stream.cancel()
            assert error is not None and error.status is Status.ABORTED, error
            assert "left" in error.message, error.message
            await agent.leave()
            await marker.join()
            left = await wait_event(events, "LEFT", "node-1")
            assert list(left.node.node.instance_ids) == ["inst-1"], (
                "LEFT carries the node's instances that are not TERMINATED"
            )
            after = await events.receive()
            assert (event_kind(after), after.node.node.id) == ("JOINED", "marker"), (
                "a second leave must not publish another LEFT"
            )
        assert (await node_by_id(controller, "node-1")).state == controller_pb2.Node.LEFT

        error = await refused(agent.leave, "never-joined")
        assert error.status is Status.NOT_FOUND and "never-joined" in error.message, error
        error = await refused(agent.leave, "Bad_Id")
        assert error.status is Status.INVALID_ARGUMENT and error.message.startswith("id "), error


# -- liveness --------------------------------------------------------------------------------


async def test_a_silent_agent_is_lost_with_its_instances_and_the_other_stays_ready():
    timeout = 0.5
    config = make_config(liveness={"node_timeout": timeout})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        busy, silent = FakeAgent(channel, "busy"), FakeAgent(channel, "silent")
        controller = FakeController(channel)
        async with controller.watch() as events, trio.open_nursery() as nursery:
            await busy.join()
            await silent.join()
            busy_stream = await busy.report()

            async def keep_reporting():
                while True:
                    await trio.sleep(timeout / 5)
                    await busy_stream.send(status("busy"))

            nursery.start_soon(keep_reporting)
            silent_stream = await silent.report(
                instances=[("run-1", 1), ("wait-1", 0), ("done-1", 2)]
            )
            await wait_event(events, "STATUS", "silent")
            reported_at = trio.current_time()
            lost = await wait_event(events, "LOST", "silent")
            detected_after = trio.current_time() - reported_at
            assert timeout - 0.05 <= detected_after <= timeout + 0.4, (
                f"LOST {detected_after:.3f} s after the last status, node_timeout is {timeout}"
            )
            assert list(lost.node.node.instance_ids) == ["run-1", "wait-1"]
            assert lost.node.node.state == controller_pb2.Node.LOST

            error = await stream_outcome(silent_stream)
            await silent_stream.cancel()
            assert error is not None and error.status is Status.ABORTED and "lost" in error.message

            await trio.sleep(2 * timeout)  # long enough for a wrong second LOST
            nursery.cancel_scope.cancel()
        later = []
        while True:
            try:
                later.append(events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        assert not [e for e in later if not isinstance(e, Exception) and event_kind(e) == "LOST"], (
            "exactly one LOST expected"
        )
        states = {n.id: n.state for n in await controller.list_nodes()}
        assert states == {"busy": controller_pb2.Node.READY, "silent": controller_pb2.Node.LOST}
        await drop_stream(busy_stream)


# -- throttling ------------------------------------------------------------------------------


async def test_a_fast_sender_is_throttled_without_starving_another_agent():
    rate, burst, count = 5.0, 2, 12
    config = make_config(liveness={"status_rate": rate, "status_burst": burst})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        other_channel = await make_channel(scheduler.port)
        try:
            fast, calm = FakeAgent(channel, "fast"), FakeAgent(other_channel, "calm")
            controller = FakeController(channel)
            async with controller.watch() as events:
                await fast.join()
                await calm.join()
                started = trio.current_time()
                fast_stream = await fast.open_stream()
                for i in range(count):
                    await fast_stream.send(status("fast", mem_free=i))
                await trio.sleep(0.3)  # the fast node is now being throttled
                calm_stream = await calm.report()
                calm_sent = trio.current_time()
                fast_seen = []
                calm_latency = None
                while len(fast_seen) < count:
                    event = await wait_event(events, "STATUS")
                    if event.node.node.id == "calm":
                        calm_latency = trio.current_time() - calm_sent
                    else:
                        elapsed = trio.current_time() - started
                        fast_seen.append((elapsed, event.node.node.memory_free))
                assert [free for _, free in fast_seen] == list(range(count)), (
                    "throttled statuses are delayed, never dropped or reordered"
                )
                assert fast_seen[-1][0] >= 0.75 * (count - burst) / rate, (
                    f"{count} statuses at rate {rate}/s, burst {burst}: {fast_seen[-1][0]:.2f} s"
                )
                assert calm_latency is not None and calm_latency < 0.5, (
                    f"another agent's status waited {calm_latency} s behind a throttled one"
                )
                assert await fast_stream.finish() == agent_pb2.Empty()
                await drop_stream(calm_stream)
        finally:
            other_channel.close()


# -- undecodable requests --------------------------------------------------------------------


class RawCodec(CodecBase):
    """Sends bytes as they are (as protobuf content), to put garbage on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message, message_type):
        return message

    def decode(self, data, message_type):
        return data


async def raw_call(channel, path: str, cardinality: Cardinality, *messages: bytes):
    """Send raw `messages` on method `path`; return the GRPCError it ends with (or None)."""

    async def call():
        try:
            async with channel.request(path, cardinality, bytes, bytes) as stream:
                for i, message in enumerate(messages):
                    await stream.send_message(message, end=i == len(messages) - 1)
                while await stream.recv_message() is not None:
                    pass
        except GRPCError as err:
            return err
        return None

    return await aio(call)()


GARBAGE = b"\xff\xff\xff\xff"  # not a protobuf message of any type
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) holding invalid UTF-8


@pytest.mark.parametrize(
    "path, cardinality, garbage, type_name",
    [
        (
            "/scheduler.agent.LifecycleService/JoinCluster",
            Cardinality.UNARY_UNARY,
            GARBAGE,
            "scheduler.agent.ConnectionRequest",
        ),
        (
            "/scheduler.agent.LifecycleService/JoinCluster",
            Cardinality.UNARY_UNARY,
            BAD_UTF8,
            "scheduler.agent.ConnectionRequest",
        ),
        (
            "/scheduler.agent.LifecycleService/LeaveCluster",
            Cardinality.UNARY_UNARY,
            GARBAGE,
            "scheduler.agent.DisconnectionNotice",
        ),
        (
            "/scheduler.agent.StatusUpdateService/UpdateNodeStatus",
            Cardinality.STREAM_UNARY,
            GARBAGE,
            "scheduler.agent.NodeStatus",
        ),
        (
            "/scheduler.controller.ClusterService/WatchEvents",
            Cardinality.UNARY_STREAM,
            GARBAGE,
            "scheduler.controller.WatchRequest",
        ),
        (
            "/scheduler.controller.ClusterService/ListNodes",
            Cardinality.UNARY_UNARY,
            GARBAGE,
            "scheduler.controller.Empty",
        ),
    ],
    ids=[
        "JoinCluster",
        "JoinCluster-bad-utf8",
        "LeaveCluster",
        "UpdateNodeStatus",
        "WatchEvents",
        "ListNodes",
    ],
)
async def test_an_undecodable_request_is_invalid_argument(path, cardinality, garbage, type_name):
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        raw = await make_channel(scheduler.port, codec=RawCodec())
        try:
            error = await raw_call(raw, path, cardinality, garbage)
            assert error is not None and error.status is Status.INVALID_ARGUMENT, (
                f"{path}: undecodable bytes answered {error!r}, SPEC §4 wants INVALID_ARGUMENT"
            )
            assert type_name in error.message, error.message
            assert await FakeController(channel).list_nodes() == [], "the server keeps serving"
        finally:
            raw.close()


async def test_undecodable_bytes_mid_stream_end_it_and_keep_the_good_status():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        await agent.join()
        raw = await make_channel(scheduler.port, codec=RawCodec())
        try:
            good = status("node-1", mem_free=5 * GiB).SerializeToString()
            error = await raw_call(
                raw,
                "/scheduler.agent.StatusUpdateService/UpdateNodeStatus",
                Cardinality.STREAM_UNARY,
                good,
                GARBAGE,
            )
        finally:
            raw.close()
        assert error is not None and error.status is Status.INVALID_ARGUMENT, error
        assert "scheduler.agent.NodeStatus" in error.message, error.message
        node = await node_by_id(controller, "node-1")
        assert (node.memory_free, node.state) == (5 * GiB, controller_pb2.Node.READY)
        await agent.join()  # the broken stream is gone: the node may join again


# -- graceful shutdown -----------------------------------------------------------------------


async def test_shutdown_ends_streams_and_watches_with_unavailable_and_serve_returns():
    config = make_config()
    shutdown = trio.Event()
    returned_at: list[float] = []

    async def run_scheduler(task_status=trio.TASK_STATUS_IGNORED):
        await serve(config, ssl_context=None, shutdown=shutdown, task_status=task_status)
        returned_at.append(trio.current_time())

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            scheduler = await nursery.start(run_scheduler)
            async with open_channel(scheduler.port) as channel:
                agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
                async with controller.watch() as events:
                    await agent.join()
                    stream = await agent.report()
                    await wait_event(events, "STATUS", "node-1")
                    shutdown_at = trio.current_time()
                    shutdown.set()
                    error = await stream_outcome(stream)
                    await stream.cancel()
                    assert error is not None and error.status is Status.UNAVAILABLE, error
                    assert "shutting down" in error.message, error.message
                    watch_end = await events.receive()
                    assert isinstance(watch_end, GRPCError), (
                        f"the watch must end with a status, got {watch_end!r}"
                    )
                    assert watch_end.status is Status.UNAVAILABLE, watch_end
                    with trio.fail_after(config.server.shutdown_grace + 1):
                        while not returned_at:  # our channel is still open: serve() must not wait
                            await trio.sleep(0.01)
    assert returned_at[0] - shutdown_at < config.server.shutdown_grace + 1
