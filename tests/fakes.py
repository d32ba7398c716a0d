"""Fakes that talk real gRPC over 127.0.0.1: Agents and a Controller, driven from trio tests.

They are grpclib clients on the trio-asyncio loop of the test; crossing loops per message is
fine here (tests), never in the scheduler itself.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio
import trio_asyncio
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from scheduler._proto import agent_grpc, agent_pb2, controller_grpc, controller_pb2

aio = trio_asyncio.aio_as_trio


def status(
    node_id: str,
    *,
    mem_total=8 << 30,
    mem_free=4 << 30,
    load=10.0,
    cores=4,
    disk_total=None,
    disk_free=None,
    instances=(),
) -> agent_pb2.NodeStatus:
    """A NodeStatus; `cores=0`, no disk and no instances is what an old Agent sends."""
    message = agent_pb2.NodeStatus(id=node_id)
    if mem_total is not None:
        message.memory.total, message.memory.free = mem_total, mem_free
    if load is not None:
        message.cpu_load.load, message.cpu_load.cores = load, cores
    if disk_total is not None:
        message.disk.total, message.disk.free = disk_total, disk_free
    for instance_id, code in instances:
        message.instances.add(instance_id=instance_id, code=code)
    return message


@asynccontextmanager
async def open_channel(port: int, ssl=None):
    """A grpclib channel to 127.0.0.1:port on this test's own asyncio loop."""
    async with trio_asyncio.open_loop():
        channel = await aio(_make_channel)(port, ssl)
        try:
            yield channel
        finally:
            channel.close()


async def _make_channel(port: int, ssl) -> Channel:
    return Channel("127.0.0.1", port, ssl=ssl)


class StatusStream:
    """An open UpdateNodeStatus call: send statuses, then close and read the outcome."""

    def __init__(self, stub: agent_grpc.StatusUpdateServiceStub) -> None:
        self._stub = stub
        self._cm = None
        self._stream = None

    async def open(self) -> StatusStream:
        self._cm = self._stub.UpdateNodeStatus.open()
        self._stream = await aio(self._cm.__aenter__)()
        await aio(self._stream.send_request)()
        return self

    async def send(self, message: agent_pb2.NodeStatus) -> None:
        await aio(self._stream.send_message)(message)

    async def finish(self) -> agent_pb2.Empty:
        """Half-close and return the reply, raising GRPCError on a non-OK status."""

        async def done():
            await self._stream.end()
            reply = await self._stream.recv_message()
            await self._stream.recv_trailing_metadata()
            return reply

        try:
            return await aio(done)()
        finally:
            await self.cancel()

    async def outcome(self):
        """Wait for the server to end the call; return its GRPCError (or None if OK)."""
        from grpclib.exceptions import GRPCError

        async def wait():
            try:
                await self._stream.recv_message()
                await self._stream.recv_trailing_metadata()
            except GRPCError as err:
                return err
            return None

        return await aio(wait)()

    async def cancel(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            try:
                await aio(cm.__aexit__)(None, None, None)
            except Exception:
                pass


class FakeAgent:
    """One Agent: joins, streams statuses, leaves."""

    def __init__(self, channel: Channel, node_id: str, port: int = 7000) -> None:
        self.node_id = node_id
        self.port = port
        self.lifecycle = agent_grpc.LifecycleServiceStub(channel)
        self.statuses = agent_grpc.StatusUpdateServiceStub(channel)

    async def join(self, node_id: str | None = None, port: int | None = None) -> None:
        request = agent_pb2.ConnectionRequest(
            id=node_id if node_id is not None else self.node_id,
            port=self.port if port is None else port,
        )
        await aio(self.lifecycle.JoinCluster)(request)

    async def leave(self, node_id: str | None = None) -> None:
        await aio(self.lifecycle.LeaveCluster)(
            agent_pb2.DisconnectionNotice(id=node_id if node_id is not None else self.node_id)
        )

    async def open_stream(self) -> StatusStream:
        return await StatusStream(self.statuses).open()

    async def report(self, **metrics) -> StatusStream:
        """Open a stream and send one status (the stream stays open)."""
        stream = await self.open_stream()
        await stream.send(status(self.node_id, **metrics))
        return stream


class FakeController:
    """Watches events into a trio channel; lists nodes."""

    def __init__(self, channel: Channel) -> None:
        self.cluster = controller_grpc.ClusterServiceStub(channel)

    async def list_nodes(self) -> list[controller_pb2.Node]:
        reply = await aio(self.cluster.ListNodes)(controller_pb2.Empty())
        return list(reply.nodes)

    @asynccontextmanager
    async def watch(self, epoch: str = "", after_revision: int = 0, buffer: int = 10_000):
        """Yield a trio receive channel of ClusterEvents; the watch ends with the block.

        If the server ends the watch, the channel's last item is the GRPCError or
        StreamTerminatedError, then the channel closes.

        A watch without an epoch starts with a Snapshot: the block starts once it arrived (or
        the watch ended), so what the test does next happens after the watch began. (Calls on
        one connection are not ordered: a Join sent right after may be handled first, and
        its node would then be in the Snapshot, not a JOINED event.)
        """
        send, receive = trio.open_memory_channel(buffer)
        began = trio.Event()

        async def pump():
            try:
                async with self.cluster.WatchEvents.open() as stream:
                    await stream.send_message(
                        controller_pb2.WatchRequest(epoch=epoch, after_revision=after_revision),
                        end=True,
                    )
                    async for event in stream:
                        send.send_nowait(event)
                        began.set()
            except (StreamTerminatedError, GRPCError) as err:
                send.send_nowait(err)  # the test sees why the watch ended
            finally:
                send.close()
                began.set()

        loop = trio_asyncio.current_loop.get()
        task = loop.create_task(pump())
        try:
            if not epoch:
                await began.wait()
            yield receive
        finally:
            task.cancel()


CHATTY_STATUSES = 3_000  # more than a reader's HTTP/2 window and the Schedule stream's bound


class FakeWorkloadAgent:
    """A real node_agent.WorkloadService server on 127.0.0.1 that does what the test says.

    `mode`: "accept" (WAITING then RUNNING, TERMINATED on a signal), "refuse" (GRPCError with
    `refuse_status`), "hang" (never answers), "empty" (ends the stream at once), "die" (one
    status, then the stream breaks), "cleanup" (as "accept", but a signal ends the stream OK
    with no TERMINATED status, as the Orka node agent does once it has cleaned an instance up),
    "chatty" (as "accept", with CHATTY_STATUSES more RUNNING statuses "tick N" after RUNNING).
    Records what it received, including cancelled Creates.
    """

    def __init__(self, mode: str = "accept", refuse_status=None) -> None:
        from grpclib.const import Status

        self.mode = mode
        self.refuse_status = refuse_status or Status.RESOURCE_EXHAUSTED
        self.created: list[str] = []  # instance ids, in the order Create arrived
        self.cancelled: list[str] = []  # Creates whose caller cancelled them
        self.signals: list[tuple[str, int]] = []
        self.workloads: list = []
        self.port = 0
        self._server = None
        self._running: dict[str, object] = {}  # instance id -> asyncio.Event ending it
        self.running: dict[str, None] = {}  # started, stream still open: what an Agent reports

    def __mapping__(self):
        from grpclib.const import Cardinality, Handler

        from scheduler._proto import node_agent_pb2 as pb

        return {
            "/node_agent.WorkloadService/Create": Handler(
                self._create, Cardinality.UNARY_STREAM, pb.Workload, pb.WorkloadStatus
            ),
            "/node_agent.WorkloadService/Signal": Handler(
                self._signal, Cardinality.UNARY_UNARY, pb.WorkloadSignal, pb.Empty
            ),
        }

    async def _create(self, stream) -> None:
        import asyncio

        from grpclib.exceptions import GRPCError

        from scheduler._proto import node_agent_pb2 as pb

        workload = await stream.recv_message()
        self.created.append(workload.instance_id)
        self.workloads.append(workload)
        try:
            if self.mode == "refuse":
                raise GRPCError(self.refuse_status, f"fake agent refuses {workload.instance_id}")
            if self.mode == "hang":
                await asyncio.Event().wait()
            if self.mode == "empty":
                return
            done = self._running[workload.instance_id] = asyncio.Event()
            self.running[workload.instance_id] = None

            def status(code, message=None):
                reply = pb.WorkloadStatus(instance_id=workload.instance_id)
                reply.status.code = code
                if message:
                    reply.status.message = message
                return reply

            await stream.send_message(status(pb.Status.WAITING))
            if self.mode == "die":
                await stream.cancel()
                return
            await stream.send_message(status(pb.Status.RUNNING))
            if self.mode == "chatty":
                for tick in range(CHATTY_STATUSES):
                    await stream.send_message(status(pb.Status.RUNNING, f"tick {tick}"))
            await done.wait()
            if self.mode == "cleanup":
                return
            await stream.send_message(status(pb.Status.TERMINATED, "signalled"))
        except asyncio.CancelledError:
            self.cancelled.append(workload.instance_id)
            raise
        finally:
            self.running.pop(workload.instance_id, None)

    async def _signal(self, stream) -> None:
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError

        from scheduler._proto import node_agent_pb2 as pb

        request = await stream.recv_message()
        self.signals.append((request.instance_id, request.signal))
        done = self._running.get(request.instance_id)
        if done is None:
            raise GRPCError(Status.NOT_FOUND, f"fake agent runs no {request.instance_id}")
        done.set()
        await stream.send_message(pb.Empty())

    async def start(self) -> int:
        """Serve on 127.0.0.1:0 (in the current trio-asyncio loop); return the port."""

        async def start():
            from grpclib.server import Server

            self._server = Server([self])
            await self._server.start("127.0.0.1", 0)
            return self._server._server.sockets[0].getsockname()[1]

        self.port = await aio(start)()
        return self.port

    async def stop(self) -> None:
        async def stop():
            self._server.close()
            await self._server.wait_closed()

        await aio(stop)()


async def drop_stream(stream: StatusStream) -> None:
    """Reset an open status stream (RST_STREAM), as an Agent that dies would, and release it.

    `StatusStream.cancel()` alone waits for the server's trailers, so on a stream the server
    still reads it never returns; use this for a stream whose call has not ended.
    """
    if stream._cm is not None and stream._stream is not None:
        try:
            await aio(stream._stream.cancel)()
        except Exception:  # already ended or reset: nothing to cancel
            pass
    await stream.cancel()


# -- Schedule calls and Agent nodes (tests of SPEC §2.2) ---------------------------------------


def scheduling_request(
    instance_id: str = "web-1",
    *,
    image: str = "nginx:1.27",
    type: int = 0,
    environment=(),
    cpu=None,
    memory=None,
    disk=None,
    workload: bool = True,
) -> controller_pb2.SchedulingRequest:
    """A SchedulingRequest; cpu in millicores, memory and disk in MiB (None: not requested)."""
    request = controller_pb2.SchedulingRequest()
    if not workload:
        return request
    wire = request.workload
    wire.instance_id, wire.image, wire.type = instance_id, image, type
    wire.environment.extend(environment)
    if (cpu, memory, disk) != (None, None, None):
        wire.resource_limits.SetInParent()
        for name, value in (("cpu", cpu), ("memory", memory), ("disk", disk)):
            if value is not None:
                setattr(wire.resource_limits, name, value)
    return request


class ScheduleCall:
    """An open Schedule call read by an asyncio task: its statuses, then how it ended.

    `next()` returns the next WorkloadStatus, or None once the call has ended; `error` is then
    what ended it (GRPCError, StreamTerminatedError, or TimeoutError past the deadline), None
    for OK.
    """

    def __init__(
        self,
        channel: Channel,
        request: controller_pb2.SchedulingRequest,
        timeout: float | None = None,
    ) -> None:
        self._stub = controller_grpc.SchedulingServiceStub(channel)
        self._request = request
        self._timeout = timeout
        self._send, self._receive = trio.open_memory_channel(1000)
        self.received: list[controller_pb2.WorkloadStatus] = []
        self.error: BaseException | None = None
        self.ended = False
        self._stream = None
        self._task = None
        self._opened = None

    async def start(self) -> ScheduleCall:
        import asyncio

        self._opened = asyncio.Event()
        self._task = trio_asyncio.current_loop.get().create_task(self._pump())
        await aio(self._opened.wait)()
        return self

    async def _pump(self) -> None:
        end = None
        try:
            async with self._stub.Schedule.open(timeout=self._timeout) as stream:
                self._stream = stream
                await stream.send_message(self._request, end=True)
                self._opened.set()
                async for reply in stream:
                    self._send.send_nowait(reply)
        except Exception as err:  # GRPCError, StreamTerminatedError, TimeoutError (deadline)
            end = err
        finally:
            self._opened.set()
            self._send.send_nowait(_Ended(end))
            self._send.close()

    async def next(self) -> controller_pb2.WorkloadStatus | None:
        if self.ended:
            return None
        item = await self._receive.receive()
        if isinstance(item, _Ended):
            self.ended, self.error = True, item.error
            return None
        self.received.append(item)
        return item

    async def until(self, code: int) -> controller_pb2.WorkloadStatus:
        """Read up to the first status with `code`; AssertionError if the call ends first."""
        while True:
            reply = await self.next()
            assert reply is not None, (
                f"Schedule ended ({self.error!r}) before status code {code}; "
                f"got {[r.status.code for r in self.received]}"
            )
            if reply.status.code == code:
                return reply

    async def result(self):
        """Wait for the end; return (every status received, the error or None)."""
        while await self.next() is not None:
            pass
        return self.received, self.error

    async def cancel(self) -> None:
        """The Controller goes away: RST_STREAM to the scheduler, then stop reading."""
        stream, task = self._stream, self._task
        if stream is not None and not self.ended:
            try:
                await aio(stream.cancel)()
            except Exception:  # already ended or cancelled
                pass
        if task is not None:
            task.cancel()


class _Ended:
    def __init__(self, error) -> None:
        self.error = error


@asynccontextmanager
async def open_schedule(
    channel: Channel, request: controller_pb2.SchedulingRequest, timeout: float | None = None
):
    """Open a Schedule call; yield its ScheduleCall; cancel it if still open at the end."""
    call = await ScheduleCall(channel, request, timeout).start()
    try:
        yield call
    finally:
        task = call._task
        if task is not None and not task.done():
            task.cancel()


async def schedule(
    channel: Channel, request: controller_pb2.SchedulingRequest, *, until_code: int | None = None
):
    """Run one Schedule call: to its end (returns (statuses, error)), or, with `until_code`,
    until that status arrives (returns (statuses, None), leaving the instance running)."""
    async with open_schedule(channel, request) as call:
        if until_code is None:
            return await call.result()
        await call.until(until_code)
        return list(call.received), None


async def stop_instance(channel: Channel, instance_id: str) -> GRPCError | None:
    """Stop; the GRPCError (or None if OK)."""
    return await _instance_call(channel, "Stop", instance_id)


async def destroy_instance(channel: Channel, instance_id: str) -> GRPCError | None:
    """Destroy; the GRPCError (or None if OK)."""
    return await _instance_call(channel, "Destroy", instance_id)


async def _instance_call(channel: Channel, method: str, instance_id: str) -> GRPCError | None:
    stub = controller_grpc.SchedulingServiceStub(channel)
    try:
        await aio(getattr(stub, method))(controller_pb2.WorkloadInstance(instance_id=instance_id))
    except GRPCError as err:
        return err
    return None


async def wait_until(predicate, poll: float = 0.005) -> None:
    """Wait (guarded by the test's fail_after) until `predicate()` holds."""
    while not predicate():
        await trio.sleep(poll)


class RecordingWorkloadAgent(FakeWorkloadAgent):
    """A FakeWorkloadAgent that also writes (node id, instance id) of every Create to a journal
    shared by several Agents (the order attempts were made across nodes), and can refuse
    Signals: `signal_refusal = (Status, message)`."""

    def __init__(
        self, node_id: str, journal: list | None = None, mode: str = "accept", refuse_status=None
    ) -> None:
        super().__init__(mode, refuse_status)
        self.node_id = node_id
        self.journal = journal if journal is not None else []
        self.created = _Journaled(self.journal, node_id)
        self.signal_refusal = None
        self._crashes: dict[str, object] = {}  # instance id -> asyncio.Event, mode "crash"

    async def _create(self, stream) -> None:
        """Mode "crash": accept (WAITING, RUNNING), then reset the stream when `crash()` says.

        Unlike "die", whose status and RST_STREAM arrive together (grpclib's client then drops
        the status), the scheduler surely has the first status before the stream breaks.
        """
        if self.mode != "crash":
            await super()._create(stream)
            return
        import asyncio

        from scheduler._proto import node_agent_pb2 as pb

        workload = await stream.recv_message()
        self.created.append(workload.instance_id)
        self.workloads.append(workload)
        crash = self._crashes[workload.instance_id] = asyncio.Event()
        for code in (pb.Status.WAITING, pb.Status.RUNNING):
            reply = pb.WorkloadStatus(instance_id=workload.instance_id)
            reply.status.code = code
            await stream.send_message(reply)
        await crash.wait()
        await stream.cancel()

    async def crash(self, instance_id: str) -> None:
        """Break the Create stream of `instance_id` (mode "crash") with RST_STREAM."""

        async def crash():
            self._crashes[instance_id].set()

        await aio(crash)()

    async def _signal(self, stream) -> None:
        if self.signal_refusal is not None:
            request = await stream.recv_message()
            self.signals.append((request.instance_id, request.signal))
            raise GRPCError(*self.signal_refusal)
        await super()._signal(stream)


class _Journaled(list):
    """A list of instance ids that also appends (node id, instance id) to a shared journal."""

    def __init__(self, journal: list, node_id: str) -> None:
        super().__init__()
        self._journal, self._node_id = journal, node_id

    def append(self, instance_id) -> None:
        super().append(instance_id)
        self._journal.append((self._node_id, instance_id))


class Node:
    """A node as the scheduler sees it: an Agent client (join, status) and its WorkloadService."""

    def __init__(
        self,
        channel: Channel,
        node_id: str,
        mode: str = "accept",
        refuse_status=None,
        journal: list | None = None,
    ) -> None:
        self.node_id = node_id
        self.workloads = RecordingWorkloadAgent(node_id, journal, mode, refuse_status)
        self.agent: FakeAgent | None = None
        self.stream: StatusStream | None = None
        self._channel = channel

    async def start(self, scheduler=None, *, report: bool = True, **metrics) -> Node:
        """Serve the WorkloadService, join, and (unless `report=False`) send one status; with
        `scheduler`, wait until the scheduler has applied it."""
        port = await self.workloads.start()
        self.agent = FakeAgent(self._channel, self.node_id, port)
        await self.agent.join()
        if report:
            await self.report(scheduler, **metrics)
        elif scheduler is not None:
            await wait_until(lambda: self.node_id in scheduler.cluster.nodes)
        return self

    async def report(self, scheduler=None, **metrics) -> None:
        """Send one status on the node's stream (opened on first use)."""
        if self.stream is None:
            self.stream = await self.agent.open_stream()
        message = status(self.node_id, **metrics)
        before = None
        if scheduler is not None:
            node = scheduler.cluster.nodes.get(self.node_id)
            before = node.metrics if node is not None else None
        await self.stream.send(message)
        if scheduler is not None:
            await wait_until(lambda: scheduler.cluster.nodes[self.node_id].metrics is not before)

    @property
    def mode(self) -> str:
        return self.workloads.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.workloads.mode = value

    async def close(self) -> None:
        if self.stream is not None:
            await drop_stream(self.stream)
            self.stream = None
        if self.workloads._server is not None:
            await self.workloads.stop()
            self.workloads._server = None


@asynccontextmanager
async def open_nodes(channel: Channel, scheduler, *specs, journal: list | None = None):
    """Start nodes from (node_id, mode, metrics dict) specs, in that order; close them at the end.

    Every node's Creates go to `journal` (a list shared by them) if given."""
    nodes = []
    journal = journal if journal is not None else []
    try:
        for node_id, mode, metrics in specs:
            node = Node(channel, node_id, mode, journal=journal)
            nodes.append(node)
            await node.start(scheduler, **metrics)
        yield nodes
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.close()


async def make_channel(port: int, **options) -> Channel:
    """One more grpclib channel to 127.0.0.1:port on the current trio-asyncio loop (use inside
    `open_channel`), with Channel options such as `codec=` or `config=`. Close it yourself."""

    async def make() -> Channel:
        return Channel("127.0.0.1", port, **options)

    return await aio(make)()


def event_kind(event: controller_pb2.ClusterEvent) -> str:
    """ "SNAPSHOT", "INSTANCE", or the node event's kind ("JOINED", "STATUS", "LEFT", "LOST")."""
    which = event.WhichOneof("event")
    if which == "node":
        return controller_pb2.NodeEvent.Kind.Name(event.node.kind)
    return str(which).upper()


async def wait_event(events: trio.MemoryReceiveChannel, kind: str, node_id: str | None = None):
    """Read a `FakeController.watch` channel until an event of `kind` (about `node_id`, if
    given) arrives and return it, skipping others; fails if the watch ends first."""
    while True:
        event = await events.receive()
        if isinstance(event, Exception):
            raise AssertionError(f"the watch ended while waiting for {kind}: {event!r}")
        if event_kind(event) == kind and (node_id is None or event.node.node.id == node_id):
            return event


async def stream_outcome(stream: StatusStream):
    """Wait for the server to end an open status stream; return its GRPCError (None if OK).

    Unlike `StatusStream.outcome()`, this also recovers the status when the server resets the
    stream right after its trailers (RST_STREAM NO_ERROR, which grpclib's server sends when it
    ends a call with an error while the client is still sending): grpclib's client then raises
    StreamTerminatedError from recv_message and reports the real status only when the call's
    context exits. The stream is released afterwards.
    """

    async def wait():
        try:
            await stream._stream.recv_message()
            await stream._stream.recv_trailing_metadata()
        except GRPCError as err:
            return err
        except StreamTerminatedError as err:
            cm, stream._cm = stream._cm, None
            try:
                await cm.__aexit__(StreamTerminatedError, err, err.__traceback__)
            except GRPCError as status:
                return status
            raise
        return None

    return await aio(wait)()


# -- Faults and fuzzing (tests/test_faults.py, tests/test_fuzz.py) ------------------------------


class BytesCodec:
    """A grpclib codec that sends and returns bytes as they are, to put any payload on the wire
    (pass it as `make_channel(port, codec=BytesCodec())`, request and reply types `bytes`)."""

    __content_subtype__ = "proto"

    def encode(self, message, message_type):
        return message

    def decode(self, data, message_type):
        return data


class KillableWorkloadAgent(RecordingWorkloadAgent):
    """A RecordingWorkloadAgent whose process can die: `kill()` aborts every TCP connection at
    once (no RST_STREAM, no GOAWAY, no trailers: what the scheduler sees when the Agent's
    process is killed) and stops listening; `start(port)` serves again on a given port, as the
    Agent restarted by systemd would."""

    async def start(self, port: int = 0) -> int:
        async def start() -> int:
            self._server = _TrackingServer([self])
            await self._server.start("127.0.0.1", port)
            return self._server._server.sockets[0].getsockname()[1]

        self.port = await aio(start)()
        return self.port

    async def kill(self) -> None:
        server, self._server = self._server, None

        async def kill() -> None:
            import asyncio

            server.close()  # stop listening; cancels the handlers (the "process" is gone)
            server.abort_connections()
            await asyncio.wait_for(server.wait_closed(), 5)

        await aio(kill)()


class _TrackingServer(Server):
    """grpclib's Server, remembering its connections so a test can abort them."""

    def __init__(self, handlers) -> None:
        super().__init__(handlers)
        self._protocols: list = []

    def _protocol_factory(self):
        protocol = super()._protocol_factory()
        self._protocols.append(protocol)
        return protocol

    def abort_connections(self) -> None:
        for protocol in self._protocols:
            transport = getattr(getattr(protocol, "connection", None), "_transport", None)
            if transport is not None:
                transport.abort()


async def open_node(
    channel: Channel, scheduler, node_id: str, workloads: FakeWorkloadAgent, **metrics
) -> Node:
    """Start one node whose WorkloadService is `workloads` (e.g. a KillableWorkloadAgent), join
    it and report one status that the scheduler has applied; close it with `Node.close()`."""
    node = Node(channel, node_id)
    node.workloads = workloads
    return await node.start(scheduler, **metrics)


@asynccontextmanager
async def saved_cycles(settle: float):
    """Run the block with the collector off and `gc.DEBUG_SAVEALL` on; after `settle` s (for
    the scheduler to finish the calls the client saw end), the list it yields holds what only a
    full collection would have freed. The collector is restored, and that garbage freed."""
    import gc

    found: list = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        await trio.sleep(settle)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        gc.collect()  # what SAVEALL kept is garbage again: free it, not for the next test to see
