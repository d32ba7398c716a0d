"""Wire compatibility with the official gRPC implementation (grpcio), SPEC §1.

An Agent and a Controller built on grpcio's synchronous API (run in worker threads: grpc.aio
would need asyncio, and these tests run under trio) talk to a scheduler on 127.0.0.1:0. The
generated message classes in scheduler/_proto are the only code shared with the scheduler.
"""

from __future__ import annotations

import queue
from contextlib import asynccontextmanager

import grpc
import trio

from scheduler._proto import agent_pb2, controller_pb2
from tests.conftest import make_config, running_scheduler
from tests.grpcio_peers import serialize, watch

GiB = 1 << 30
JOIN = "/scheduler.agent.LifecycleService/JoinCluster"
LEAVE = "/scheduler.agent.LifecycleService/LeaveCluster"
UPDATE = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
LIST = "/scheduler.controller.ClusterService/ListNodes"
CALL_TIMEOUT = 10  # s: no grpcio call in these tests may block a worker thread longer


@asynccontextmanager
async def grpcio_channel(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
    try:
        yield channel
    finally:
        channel.close()


async def unary(channel: grpc.Channel, path: str, request, reply_type):
    """One unary call in a worker thread; returns the reply or raises grpc.RpcError."""
    call = channel.unary_unary(
        path, request_serializer=serialize, response_deserializer=reply_type.FromString
    )
    return await trio.to_thread.run_sync(lambda: call(request, timeout=CALL_TIMEOUT))


async def refused(channel: grpc.Channel, path: str, request, reply_type) -> grpc.RpcError:
    try:
        reply = await unary(channel, path, request, reply_type)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{path} should have failed, got {reply!r}")


class StatusStream:
    """An UpdateNodeStatus call fed from a queue; grpcio consumes it in its own thread."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._queue: queue.Queue = queue.Queue()
        call = channel.stream_unary(
            UPDATE, request_serializer=serialize, response_deserializer=agent_pb2.Empty.FromString
        )
        self.future = call.future(self._requests(), timeout=CALL_TIMEOUT * 2)

    def _requests(self):
        while (message := self._queue.get()) is not None:
            yield message

    def send(self, message: agent_pb2.NodeStatus) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """Half-close the call (also unblocks grpcio's request thread)."""
        self._queue.put(None)

    async def outcome(self) -> grpc.RpcError | None:
        """Wait until the call ends; its error, or None if it ended OK."""
        try:
            return await trio.to_thread.run_sync(lambda: self.future.exception(CALL_TIMEOUT))
        finally:
            self.close()


def node_status(node_id: str, mem_free: int = 4 * GiB, **instances: int) -> agent_pb2.NodeStatus:
    message = agent_pb2.NodeStatus(id=node_id)
    message.memory.total, message.memory.free = 8 * GiB, mem_free
    message.cpu_load.load, message.cpu_load.cores = 12.5, 4
    message.disk.total, message.disk.free = 100 * GiB, 40 * GiB
    for instance_id, code in instances.items():
        message.instances.add(instance_id=instance_id.replace("_", "-"), code=code)
    return message


async def next_event(events, kind: str, node_id: str | None = None):
    """Skip events until one of `kind` ("SNAPSHOT" or a NodeEvent kind name) arrives."""
    while True:
        event = await events.receive()
        assert not isinstance(event, grpc.RpcError), f"the watch ended: {event}"
        which = event.WhichOneof("event")
        got = (
            controller_pb2.NodeEvent.Kind.Name(event.node.kind)
            if which == "node"
            else which.upper()
        )
        if got == kind and (node_id is None or event.node.node.id == node_id):
            return event


async def test_grpcio_agent_and_controller_see_join_status_and_leave():
    async with running_scheduler() as scheduler, grpcio_channel(scheduler.port) as channel:
        async with watch(channel) as events:
            snapshot = await events.receive()
            assert snapshot.WhichOneof("event") == "snapshot"
            assert snapshot.epoch == scheduler.events.epoch

            reply = await unary(
                channel, JOIN, agent_pb2.ConnectionRequest(id="node-1", port=7001), agent_pb2.Empty
            )
            assert reply == agent_pb2.Empty()
            joined = await next_event(events, "JOINED", "node-1")
            assert (joined.node.node.address, joined.node.node.state) == (
                "127.0.0.1:7001",
                controller_pb2.Node.READY,
            )

            first = StatusStream(channel)
            first.send(node_status("node-1", mem_free=3 * GiB, run_1=1, done_1=2))
            reported = await next_event(events, "STATUS", "node-1")
            node = reported.node.node
            assert (
                node.memory_total,
                node.memory_free,
                node.cpu_load,
                node.cpu_cores,
                node.disk_total,
                node.disk_free,
                list(node.instance_ids),
            ) == (8 * GiB, 3 * GiB, 12.5, 4, 100 * GiB, 40 * GiB, ["run-1"])

            error = await refused(
                channel, JOIN, agent_pb2.ConnectionRequest(id="node-1", port=7001), agent_pb2.Empty
            )
            assert error.code() is grpc.StatusCode.ALREADY_EXISTS
            assert "live status stream" in error.details()

            second = StatusStream(channel)
            second.send(node_status("node-1", mem_free=2 * GiB, run_1=1))
            error = await first.outcome()
            assert error is not None and error.code() is grpc.StatusCode.ABORTED, error
            assert "replaced" in error.details(), error.details()
            assert (await next_event(events, "STATUS", "node-1")).node.node.memory_free == 2 * GiB

            await unary(channel, LEAVE, agent_pb2.DisconnectionNotice(id="node-1"), agent_pb2.Empty)
            left = await next_event(events, "LEFT", "node-1")
            assert list(left.node.node.instance_ids) == ["run-1"]
            error = await second.outcome()
            assert error is not None and error.code() is grpc.StatusCode.ABORTED, error
            assert "left" in error.details(), error.details()

        nodes = await unary(channel, LIST, controller_pb2.Empty(), controller_pb2.NodeList)
        assert [(n.id, n.state) for n in nodes.nodes] == [("node-1", controller_pb2.Node.LEFT)]

        # A grpcio watcher resuming after JOINED gets exactly what followed it: the announcement
        # of the running instance the Agent reports but nobody placed (a TERMINATED one is no
        # news), two STATUS, LEFT.
        async with watch(channel, joined.epoch, joined.revision) as events:
            replayed = [await events.receive() for _ in range(4)]
        kinds = [
            (
                e.revision,
                controller_pb2.NodeEvent.Kind.Name(e.node.kind)
                if e.WhichOneof("event") == "node"
                else e.instance.instance_id,
            )
            for e in replayed
        ]
        first = joined.revision
        assert kinds == [
            (first + 1, "run-1"),
            (first + 2, "STATUS"),
            (first + 3, "STATUS"),
            (first + 4, "LEFT"),
        ]


async def test_grpcio_controller_sees_a_silent_grpcio_agent_lost():
    config = make_config(liveness={"node_timeout": 0.5})
    async with running_scheduler(config) as scheduler, grpcio_channel(scheduler.port) as channel:
        async with watch(channel) as events:
            await unary(
                channel, JOIN, agent_pb2.ConnectionRequest(id="node-1", port=7001), agent_pb2.Empty
            )
            stream = StatusStream(channel)
            stream.send(node_status("node-1", run_1=1))
            await next_event(events, "STATUS", "node-1")
            lost = await next_event(events, "LOST", "node-1")
            assert lost.node.node.state == controller_pb2.Node.LOST
            assert list(lost.node.node.instance_ids) == ["run-1"]
            error = await stream.outcome()
            assert error is not None and error.code() is grpc.StatusCode.ABORTED, error
            assert "lost" in error.details(), error.details()


async def test_grpcio_controller_reads_a_replay_sent_several_events_per_write():
    # grpc_bridge.send_messages puts many events in one DATA write; grpcio must split them.
    async with running_scheduler() as scheduler, grpcio_channel(scheduler.port) as channel:
        async with watch(channel) as events:
            snapshot = await events.receive()
        names = [f"node-{i:03d}" for i in range(200)]
        for port, name in enumerate(names, 7001):
            await unary(
                channel, JOIN, agent_pb2.ConnectionRequest(id=name, port=port), agent_pb2.Empty
            )
        async with watch(channel, snapshot.epoch, snapshot.revision) as events:
            replayed = [await events.receive() for _ in names]
        assert [(e.revision, e.node.node.id) for e in replayed] == [
            (snapshot.revision + 1 + i, name) for i, name in enumerate(names)
        ]


async def test_grpcio_clients_get_invalid_argument_with_the_field_named():
    async with running_scheduler() as scheduler, grpcio_channel(scheduler.port) as channel:
        error = await refused(
            channel, JOIN, agent_pb2.ConnectionRequest(id="Not Valid!", port=1), agent_pb2.Empty
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.details().startswith("id "), error.details()
        error = await refused(channel, JOIN, b"\xff\xff\xff\xff", agent_pb2.Empty)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
        assert "scheduler.agent.ConnectionRequest" in error.details()

        await unary(
            channel, JOIN, agent_pb2.ConnectionRequest(id="node-1", port=7001), agent_pb2.Empty
        )
        stream = StatusStream(channel)
        bad = node_status("node-1")
        bad.cpu_load.load = 250.0
        stream.send(bad)
        error = await stream.outcome()
        assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
        assert "cpu_load.load" in error.details()
