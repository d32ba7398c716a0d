"""The one module that knows grpclib runs on asyncio (hosted by trio-asyncio inside trio.run).

Everything else is trio. A handler is a trio function `async def handler(call: Call)`; the bridge
turns it into a grpclib handler that crosses from asyncio into trio **once per call**: the
call's trio task is spawned from the asyncio callback that starts it. Streamed messages never
cross per message: inbound messages are handed to trio with a non-blocking `put` into an
`Inbound` (handed straight to a waiting trio task, else queued), outbound ones with
`put_nowait` on an asyncio queue; a loop waits on the other loop's primitive only when the
buffer between them is full. A handler may go further and have inbound messages handled where
they are decoded (`Call.handle_inline`): asyncio's callbacks run inside trio's run, so
synchronous core code can be called from them, and its trio task is then woken only for what
it must wait for, not per message.

The bridge also owns what every call has in common: the peer's address and identity, decoding
errors answered INVALID_ARGUMENT (grpclib would answer UNKNOWN), a message size and time limit,
refusals logged (rate-limited), and graceful shutdown (every call in flight ends with
UNAVAILABLE, then the listener closes). What one connection may hold is bounded by
`grpc_listener`, which only this module uses.

It also routes: the scheduler's own services are `routed` servables whose calls go to the
handlers of the current leadership (`route`). Without one (a standby, or a leader that stepped
down) every call is answered UNAVAILABLE with the trailing metadata `orka-leader: <address>`
(SPEC §4.1), and `unroute` ends every such call in flight the same way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from google.protobuf.message import DecodeError
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.server import Server, Stream

from ._compat import (
    asyncio_server,
    buffered_bytes,
    decode_request,
    forget_stream_error,
    h2_stream,
    loop_patches,
    request_ended,
    run_callbacks_in_batches,
    send_encoded,
    trailers_sent,
    transport_of,
)
from .errors import Refusal, RemoteError
from .grpc_listener import Limits, Listener, read_body
from .logs import RateLimited

log = logging.getLogger(__name__)

INBOX_SIZE = 64  # inbound messages buffered per call before the reader waits for trio
INBOX_BYTES = 256 << 10  # and their wire bytes (one always fits): 64 of 4 MiB were 256 MiB
OUTBOX_SIZE = 64  # outbound messages buffered per call before trio waits for the writer
DRAIN_BEFORE_CHECKPOINT = 32  # messages taken (or handled) in a row before yielding to others
LISTEN_BACKLOG = 4096  # pending connections: thousands of Agents reconnect at once after a restart
FLUSH_TIME = 0.05  # s after the last call ended on shutdown, for grpclib to write its trailers

_MESSAGE_PREFIX = struct.Struct(">?I")  # gRPC framing: compressed flag, message length
LEADER_METADATA = "orka-leader"  # trailing metadata of a standby's answers: the leader's address
DEFAULT_LIMITS = Limits()  # the listener's defaults (tests and tools that build a Bridge alone)

Authorize = Callable[[Any, str], Any]
"""(ssl object or None, method path) -> the caller's identity; raises GRPCError to refuse.
If it has an `identify(ssl_object)` method (security.Authorizer does), the listener uses it to
count each Agent's connections."""
REFUSALS = (Status.PERMISSION_DENIED, Status.UNAUTHENTICATED)  # logged, rate-limited per peer
REFUSAL_LOG_INTERVAL = 10.0  # s between two log lines about refusals of the same peer


class NotLeading(GRPCError):
    """UNAVAILABLE from a scheduler that does not lead, naming the leader in trailing metadata."""

    def __init__(self, message: str, leader: str) -> None:
        super().__init__(Status.UNAVAILABLE, message)
        # No leader: no entry (HTTP/2 metadata values cannot be empty; absent reads as "").
        self.trailers = {LEADER_METADATA: leader} if leader else {}


class _End:
    """Marks the end of a call's outbound messages."""


_END = _End()


@dataclass(frozen=True)
class _Handled:
    """What `Inbound.handle` made of a message on the asyncio side, for the trio side."""

    result: Any


class Inbound:
    """Messages produced on asyncio and consumed by trio, without crossing loops per message.

    The asyncio side `put`s (waiting only while the buffer is full: `capacity` messages, or
    `max_bytes` of their sizes) and finally `close`s, optionally with the error that ended the
    source; the trio side `receive`s, and gets that error (once), then `trio.EndOfChannel`.

    With a `handle` function, every message goes through it exactly once, in order: on the
    asyncio side as it is put, while the trio side waits in `receive` with nothing queued (no
    wake-up of trio at all), else on the trio side as it is received. `handle` returns None
    once it dealt with the message, or what the trio side must get from `receive` instead (the
    messages after it then queue until the trio side asks for the next one). What it raises on
    the asyncio side ends the source with that error, after the messages before it.

    Every Agent's status stream holds one for good, so it is small: no trio memory channel,
    asyncio.Event or deque (~3 KiB together) until messages actually have to queue, which a
    status stream whose statuses are handled on the asyncio side hardly ever does. A waiting
    trio side is parked with `wait_task_rescheduled` and handed the next message directly.
    """

    __slots__ = (
        "handle",
        "_capacity",
        "_max_bytes",
        "_queue",
        "_bytes",
        "_reader",
        "_handed",
        "_room",
        "_closed",
        "_abandoned",
        "_error",
        "_handled",
        "_drained",
    )

    def __init__(self, capacity: int = INBOX_SIZE, max_bytes: int = INBOX_BYTES) -> None:
        self.handle: Callable[[Any], Any] | None = None
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._queue: deque[tuple[Any, int]] | None = None  # (message, size), once one waits
        self._bytes = 0  # sizes of the messages waiting
        # The trio task parked in `receive` with nothing queued. It is forgotten the moment it
        # is handed a message or cancelled, so "one waits" means every earlier message is dealt
        # with and the trio side still reads: the rule for handling a message on the asyncio
        # side.
        self._reader: trio.lowlevel.Task | None = None
        self._handed: Any = None  # the message handed to the parked reader (None: look again)
        self._room: asyncio.Future[None] | None = None  # the producer waiting for room
        self._closed = False  # by the asyncio side: no more messages
        self._abandoned = False  # by the trio side: no more reading
        self._error: BaseException | None = None
        self._handled = 0  # messages handled on the asyncio side since it last yielded
        self._drained = 0  # messages taken without a checkpoint since the last one

    def __len__(self) -> int:
        """Messages waiting for the trio side."""
        return len(self._queue) if self._queue is not None else 0

    async def put(self, message: Any, size: int = 0) -> bool:
        """asyncio side: hand one message (of `size` bytes on the wire) over, or handle it here
        (see the class); False once the trio side stopped reading."""
        if self._abandoned or self._closed:
            return False
        if self.handle is not None and self._reader is not None:
            message = self.handle(message)
            if message is None:
                self._handled += 1
                if self._handled >= DRAIN_BEFORE_CHECKPOINT:  # a long read: let others run
                    self._handled = 0
                    await asyncio.sleep(0)
                return True
            message = _Handled(message)
        while self._reader is None and self._full(size):
            self._room = room = asyncio.get_running_loop().create_future()
            await room
            if self._abandoned:
                return False
        reader = self._reader
        if reader is not None:  # nothing is queued: hand it over
            self._reader, self._handed = None, message
            trio.lowlevel.reschedule(reader)
            return True
        if self._queue is None:
            self._queue = deque()
        self._queue.append((message, size))
        self._bytes += size
        return True

    def _full(self, size: int) -> bool:
        return len(self) >= self._capacity or bool(
            self._bytes and self._bytes + size > self._max_bytes
        )

    def close(self, error: BaseException | None = None) -> None:
        """asyncio side: no more messages; `error` says why, if the source failed."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader)  # with no message: it looks again

    async def receive(self) -> Any:
        """trio side: the next message; EndOfChannel at a clean end, else the source's error.

        Messages already waiting are taken without a trip through trio's scheduler (measured:
        one wake-up per message was most of trio's 31 % of ingest CPU); every
        `DRAIN_BEFORE_CHECKPOINT` such messages it still yields, so no stream starves others.
        With a `handle` function, messages it deals with are not returned: the next is taken.
        """
        while True:
            if self._abandoned:
                raise trio.ClosedResourceError("this inbox was abandoned")
            queue = self._queue
            if queue:
                if self._drained >= DRAIN_BEFORE_CHECKPOINT:
                    self._drained = 0
                    await trio.lowlevel.checkpoint()
                    continue
                self._drained += 1
                message, size = queue.popleft()
                if not queue:  # a deque is ~760 bytes: made again when a message must wait
                    self._queue = None
                self._bytes -= size
                self._made_room()
            elif self._closed:
                if self._error is None:
                    raise trio.EndOfChannel
                raise self._hand_over_error() from None
            else:  # park until `put` hands a message over, or `close` wakes us with None
                self._drained = 0
                self._reader = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)
                message, self._handed = self._handed, None
                if message is None:
                    continue
            if type(message) is _Handled:
                return message.result
            if self.handle is not None:
                message = self.handle(message)
            if message is not None:
                return message

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._reader = None  # cancelled: a message put from now on is neither handled nor handed
        return trio.lowlevel.Abort.SUCCEEDED

    def _made_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)

    def _hand_over_error(self) -> BaseException:
        """The source's error, once (a later `receive` gets EndOfChannel): raised, its
        traceback holds `receive`'s frame, so neither this inbox nor that frame may keep it --
        else a cycle holds the stream and its messages until a full collection."""
        error, self._error = self._error, None
        assert error is not None
        return error

    def abandon(self) -> None:
        """trio side: stop reading; the producer's next `put` returns False."""
        self._abandoned = True
        self._queue = None  # what waits is dropped: a producer waiting for room fails
        self._bytes = 0
        self._made_room()
        self._wake_reader()  # a task still parked in `receive` gets ClosedResourceError


class Call:
    """A gRPC call as trio sees it: who is calling, what they sent, a way to answer.

    `request` is set for unary-request methods; streaming requests are read with `receive()`
    or `async for`. Streaming replies are sent with `await send(message)`.
    """

    __slots__ = ("method", "peer_host", "identity", "request", "_inbox", "_outbox", "_outbox_room")

    def __init__(
        self,
        method: str,
        peer_host: str,
        identity: Any,
        request: Any = None,
        *,
        streaming_replies: bool = False,
    ) -> None:
        self.method = method
        self.peer_host = peer_host
        self.identity = identity
        self.request = request
        self._inbox: Inbound | None = None
        # Only a server-streaming call has one (an asyncio.Queue is ~2.5 KiB: four deques, and
        # every Agent holds a status stream for good). Bounded by `send`, so _END always fits.
        self._outbox: asyncio.Queue | None = asyncio.Queue() if streaming_replies else None
        self._outbox_room: trio.Event | None = None  # set by the writer when the outbox drains

    # -- trio side -------------------------------------------------------------------------

    async def receive(self) -> Any:
        """The next request message; raises trio.EndOfChannel when the client half-closes."""
        assert self._inbox is not None, f"{self.method} has no request stream"
        return await self._inbox.receive()

    def handle_inline(self, handle: Callable[[Any], Any]) -> None:
        """Have every request message go through synchronous `handle`, where the bridge decodes
        it whenever this call's trio task waits in `receive` with nothing queued (a batch read
        at once is handled without waking it), else in `receive`: once each, in order.

        `handle` returns None when it dealt with the message, or what `receive` must return
        instead (something to wait for, in this task); what it raises ends the request stream
        with that error, which `receive` raises after the messages before it were handled. It
        runs only while the task still reads: not after the task was cancelled or finished.
        """
        assert self._inbox is not None, f"{self.method} has no request stream"
        self._inbox.handle = handle

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Any:
        inbox = self._inbox  # not through `receive`: one frame less held by every Agent's stream
        assert inbox is not None, f"{self.method} has no request stream"
        try:
            return await inbox.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def send(self, message: Any) -> None:
        """Queue one reply message; waits only while the client reads slower than we write."""
        while not self.send_nowait(message):
            self._outbox_room = trio.Event()
            await self._outbox_room.wait()

    def send_nowait(self, message: Any) -> bool:
        """Queue one reply message without waiting; False (and nothing queued) when
        OUTBOX_SIZE already wait: the client reads slower than we write."""
        outbox = self._outbox
        assert outbox is not None, f"{self.method} does not stream replies"
        if outbox.qsize() >= OUTBOX_SIZE:
            return False
        outbox.put_nowait(message)
        return True

    def _finish(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(_END)

    # -- asyncio side ----------------------------------------------------------------------

    async def _pump_requests(
        self, stream: Stream, receive: Callable[[Stream], Awaitable[tuple[Any, int]]]
    ) -> None:
        """Read request messages (asyncio) and hand them to trio without crossing loops."""
        inbox = self._inbox
        assert inbox is not None
        error: Exception | None = None
        try:
            while True:
                message, size = await receive(stream)
                if message is None or not await inbox.put(message, size):
                    return
        except GRPCError as err:  # e.g. an undecodable or oversized message
            error = err
        except (StreamTerminatedError, ProtocolError) as err:  # the client went away
            error = GRPCError(Status.CANCELLED, f"request stream broke: {err}")
        except Exception as err:  # raised by `handle_inline`'s function: the trio side raises it
            error = err
        finally:
            inbox.close(error)

    async def _write_replies(self, stream: Stream) -> None:
        """Send what trio queued; everything waiting goes out in one write (see send_messages)."""
        outbox = self._outbox
        assert outbox is not None
        while True:
            batch = [await outbox.get()]
            while not outbox.empty():
                batch.append(outbox.get_nowait())
            room = self._outbox_room
            if room is not None:
                self._outbox_room = None
                room.set()
            end = batch[-1] is _END  # nothing is queued after _END
            if end:
                batch.pop()
            if batch:
                await send_messages(stream, batch)
            if end:
                return


async def send_messages(stream: Stream, messages: list[Any]) -> None:
    """Send reply messages of a server-streaming call, several in one HTTP/2 DATA write.

    grpclib's `send_message` makes one DATA frame and one socket write per message; a watcher
    catching up on a burst of events (10,000 nodes LOST) then costs a syscall per event. gRPC
    framing lets messages share a frame, so a batch is encoded and written at once. (grpclib's
    per-message `SendMessage` event hooks do not fire for a batch; the scheduler installs none.)
    """
    if len(messages) == 1:
        await stream.send_message(messages[0])
        return
    await send_encoded(stream, messages, _framed)


def _framed(body: bytes) -> bytes:
    return _MESSAGE_PREFIX.pack(False, len(body)) + body


TrioHandler = Callable[[Call], Awaitable[Any]]


class Codec(ProtoCodec):
    """Protobuf codec that answers undecodable messages with INVALID_ARGUMENT, not UNKNOWN."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            name = message_type.DESCRIPTOR.full_name
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"message does not decode as {name}: {err}"
            ) from None


class Bridge:
    """Hosts grpclib's asyncio server inside trio and runs trio handlers for it.

    Keeps the cancel scope of every call in flight so shutdown can end them cleanly.
    """

    def __init__(self, authorize: Authorize | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self._authorize = authorize
        self._max_message_bytes = limits.max_message_bytes
        self._message_timeout = limits.message_timeout
        self._limits = limits
        self._codec = Codec()
        self._calls: dict[trio.CancelScope, bool] = {}  # in flight -> whether routed
        self._draining = False
        self._idle = trio.Event()  # set once draining and no call is left
        self._routes: dict[str, TrioHandler] = {}  # method path -> handler of the leadership
        self._leading: Callable[[], bool] = lambda: True  # False once its renew deadline passed
        self._not_leading = "standby: not the leader"  # why nothing is routed
        self.leader: Callable[[], str] = lambda: ""  # the leader's address, for NotLeading
        self._refusals = RateLimited(log, REFUSAL_LOG_INTERVAL)
        self.listener: Listener | None = None  # while serving
        self._nursery: trio.Nursery | None = None  # runs each call's trio task, while serving

    def connection_statistics(self) -> dict[str, int] | None:
        """The listener's connections and what it refused or closed; None until it listens."""
        return self.listener.statistics() if self.listener is not None else None

    # -- building servables ----------------------------------------------------------------

    def servable(self, base: type, handlers: Mapping[str, TrioHandler]) -> Any:
        """A grpclib servable for generated `base` whose methods run the given trio handlers.

        `handlers` maps method names ("JoinCluster") to trio functions taking a `Call`.
        """
        probe = type("Probe", (), {name: None for name in handlers})()
        mapping = {}
        for path, spec in base.__mapping__(probe).items():
            name = path.rsplit("/", 1)[1]
            mapping[path] = spec._replace(func=self._adapt(path, spec, handlers[name]))
        return _Servable(mapping)

    def routed(self, base: type) -> Any:
        """A grpclib servable for generated `base` whose calls go to the handlers that `route`
        installs, or are answered `NotLeading` while none are."""
        mapping = {
            path: spec._replace(func=self._adapt(path, spec, None))
            for path, spec in base.__mapping__(_AnyName()).items()
        }
        return _Servable(mapping)

    def route(
        self, handlers: Mapping[str, TrioHandler], leading: Callable[[], bool] = lambda: True
    ) -> None:
        """Serve routed calls with `handlers` (method path -> trio handler) while `leading()`:
        checked as each call starts, so a leader whose renew deadline has passed serves
        nothing more even before its term has unwound."""
        self._routes = dict(handlers)
        self._leading = leading

    def unroute(self, why: str) -> None:
        """Stop serving routed calls: new ones, and every one in flight, end `NotLeading`."""
        self._routes = {}
        self._not_leading = why
        for scope, routed in list(self._calls.items()):
            if routed:
                scope.cancel()

    def _refusal(self) -> GRPCError:
        if self._draining:
            return GRPCError(Status.UNAVAILABLE, "scheduler is shutting down; retry another time")
        leader = self.leader()
        return NotLeading(f"{self._not_leading}; leader at {leader or '(none yet)'}", leader)

    def _adapt(
        self, path: str, spec: Handler, handler: TrioHandler | None
    ) -> Callable[[Stream], Awaitable[None]]:
        """`handler` None: a routed method (looked up per call)."""
        cardinality: Cardinality = spec.cardinality
        bridge = self

        async def grpclib_handler(stream: Stream) -> None:  # runs on asyncio
            try:
                await serve_call(stream)
            except NotLeading as refusal:
                if not trailers_sent(stream):
                    await stream.send_trailing_metadata(
                        status=refusal.status,
                        status_message=refusal.message,
                        metadata=refusal.trailers,
                    )

        async def serve_call(stream: Stream) -> None:
            if handler is None and path not in bridge._routes:
                raise bridge._refusal()  # no need to read the request, nor to cross to trio
            call = None
            try:
                call = Call(
                    path,
                    *bridge._peer(stream, path),
                    streaming_replies=cardinality.server_streaming,
                )
                await run(call, stream)
            except GRPCError as error:
                if error.status in REFUSALS:
                    bridge._log_refusal(stream, path, call, error)
                raise

        async def run(call: Call, stream: Stream) -> None:
            if cardinality.client_streaming:
                call._inbox = Inbound()
                reader = asyncio.ensure_future(call._pump_requests(stream, bridge._receive))
            else:
                call.request = await bridge._receive_request(stream, path)
                reader = None
            future, scope = bridge._start(handler, call)
            try:
                if cardinality.server_streaming:
                    await call._write_replies(stream)
                reply = await future
                if not cardinality.server_streaming:
                    await stream.send_message(reply)
            finally:
                if not future.done():  # the client went away: end the trio task, which then
                    future.cancel()  # finds the future done and leaves it as it is
                    scope.cancel()
                elif not future.cancelled():
                    future.exception()  # seen: asyncio logs an outcome never retrieved
                if reader is not None:
                    reader.cancel()
                # An error raised here carries this frame in its traceback: without the future
                # (which holds the error) in it, no cycle waits for a collection (see `_run`).
                del future

        return grpclib_handler

    async def _receive_request(self, stream: Stream, path: str) -> Any:
        """The one request message of a unary call, and the end of the request stream, within
        `message_timeout` of the call's start: a client that never sends it (or never finishes
        it) gets an answer all the same."""
        if request_ended(h2_stream(stream)):  # usual: it all came with the headers, no wait
            return await self._read_request(stream, path)
        try:
            async with asyncio.timeout(self._message_timeout):
                return await self._read_request(stream, path)
        except TimeoutError:
            raise GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"{path}: the request message did not "
                f"arrive and end within {self._message_timeout:g} s "
                "(server.message_timeout)",
            ) from None

    async def _read_request(self, stream: Stream, path: str) -> Any:
        try:
            request, _ = await self._receive(stream)
            if request is None:
                raise GRPCError(Status.INVALID_ARGUMENT, f"{path} needs a request message")
            if await h2_stream(stream).recv_data(5):
                # As grpc-go: a second message is a cardinality violation. Unread, it
                # would also hold the client's flow-control window, and the call, for good.
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"{path} takes one request message; the client sent more",
                )
        except AssertionError:  # grpclib's way of saying the stream ended inside a prefix
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"{path}: the request stream ended inside a message prefix"
            ) from None
        return request

    def _log_refusal(self, stream: Stream, path: str, call: Call | None, error: GRPCError) -> None:
        """One WARNING per peer and identity every REFUSAL_LOG_INTERVAL (counting the rest): a
        misconfigured or hostile client must be visible, but cannot flood the log."""
        host = call.peer_host if call is not None else _peer_host(stream)
        if call is not None:
            identity = call.identity
        else:  # refused before the call was made: who it was, if the certificate says
            identify = getattr(self._authorize, "identify", None)
            ssl_object = transport_of(stream).get_extra_info("ssl_object")
            identity = identify(ssl_object) if identify is not None else None
        who = str(identity) if identity is not None else "no valid identity"
        self._refusals.warning(
            (host, who, path),
            "refused %s from %s (%s): %s: %s",
            path,
            host,
            who,
            error.status.name,
            error.message,
        )

    async def _receive(self, stream: Stream) -> tuple[Any, int]:
        """One request message and its size, refusing an oversized one *before* buffering it;
        (None, 0) at the end of the request stream.

        grpclib's own `recv_message` reads whatever length the 5-byte prefix announces (up to
        4 GiB) into memory; here the prefix is checked first, and the body must then arrive
        within `message_timeout` (see `grpc_listener.read_body`). The wait for the next prefix
        of a request stream is not timed: a status stream is quiet between reports.
        """
        h2 = h2_stream(stream)
        try:
            prefix = await h2.recv_data(5)
        except AssertionError:  # grpclib's way of saying the stream ended inside it
            raise GRPCError(
                Status.INVALID_ARGUMENT, "the request stream ended inside a message prefix"
            ) from None
        if not prefix:
            return None, 0
        compressed, length = _MESSAGE_PREFIX.unpack(prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if length > self._max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds the limit of "
                f"{self._max_message_bytes} (server.max_message_bytes)",
            )
        try:
            if buffered_bytes(h2) >= length:  # hot path: it came with its prefix
                data = await h2.recv_data(length)
            else:
                data = await read_body(h2, length, self._message_timeout)
        except AssertionError:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"the request stream ended inside a message of {length} bytes",
            ) from None
        except TimeoutError:
            raise GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"a request message of {length} bytes "
                f"was not complete within {self._message_timeout:g} s "
                "(server.message_timeout)",
            ) from None
        return decode_request(stream, data), length

    def _peer(self, stream: Stream, path: str) -> tuple[str, Any]:
        transport = transport_of(stream)  # grpclib exposes only addr()/cert() on Peer
        host = _peer_host(stream)
        identity = None
        if self._authorize is not None:
            try:
                identity = self._authorize(transport.get_extra_info("ssl_object"), path)
            except Refusal as refusal:
                raise GRPCError(Status[refusal.status], refusal.message) from None
        return host, identity

    def _start(
        self, handler: TrioHandler | None, call: Call
    ) -> tuple[asyncio.Future, trio.CancelScope]:
        """asyncio side: start the call's trio task now, in the calls' nursery; its outcome
        arrives in the future, and cancelling the scope ends it.

        asyncio callbacks run inside trio's run (in trio-asyncio's loop task), so the task is
        spawned directly: no trip through trio-asyncio's `trio_as_future` (an extra handle,
        event, cancel wrapper and loop turn per call; the bridged relay of bench figure 2 went
        from 1.11 to 0.85 ms CPU a placement without it).
        """
        assert self._nursery is not None, "calls arrive only while serving"
        future = asyncio.get_running_loop().create_future()
        scope = trio.CancelScope()
        self._nursery.start_soon(self._run, handler, call, future, scope, name=call.method)
        return future, scope

    async def _run(
        self,
        handler: TrioHandler | None,
        call: Call,
        future: asyncio.Future,
        scope: trio.CancelScope,
    ) -> None:
        """Trio side of one call: runs the handler under `scope`, which shutdown (and, for a
        routed call, the end of the leadership) can cancel; its outcome goes to `future`."""
        try:
            reply = await self._handle(handler, call, scope)
        except Exception as error:  # the asyncio side answers it
            if not future.done():
                future.set_exception(error)
            # `error`'s traceback holds this frame: without the future (which holds `error`) in
            # it, no cycle waits for a collection, whether or not the asyncio side takes the
            # error (it may have been cancelled as the error came: an Agent leaving as it
            # disconnects). The asyncio side's `run` lets go of it too.
            del future
        except BaseException:  # Cancelled (the calls' nursery ended), KeyboardInterrupt, ...
            if not future.done():
                future.cancel()
            raise
        else:
            if not future.done():
                future.set_result(reply)
        finally:
            call._finish()

    async def _handle(
        self, handler: TrioHandler | None, call: Call, scope: trio.CancelScope
    ) -> Any:
        routed = handler is None
        if routed:
            handler = self._routes.get(call.method) if self._leading() else None
        if self._draining or handler is None:
            raise self._refusal()
        with scope:
            self._calls[scope] = routed
            try:
                return await handler(call)
            except Refusal as refusal:
                raise GRPCError(Status[refusal.status], refusal.message) from None
            finally:
                del self._calls[scope]
                if self._draining and not self._calls:
                    self._idle.set()
        raise self._refusal()

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        servables: list[Any],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        shutdown: trio.Event,
        grace: float,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown` is set, then end calls in flight and close.

        `task_status.started(port)` reports the bound port once the listener accepts.
        """
        server = _Server(servables, codec=self._codec)
        identify = getattr(self._authorize, "identify", None)
        self.listener = listener = Listener(server, self._limits, ssl_context, identify)
        async with trio.open_nursery() as self._nursery:  # open before the first call comes
            # "::" (or "") means every interface of both families: asyncio makes IPv6 sockets
            # V6ONLY, so a literal "::" would not accept IPv4 clients.
            await trio_asyncio.aio_as_trio(server.start_listener)(
                listener, None if host in ("", "::") else host, port
            )
            bound = asyncio_server(server).sockets[0].getsockname()[1]
            task_status.started(bound)
            try:
                await shutdown.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await self._drain(server, grace)
                self._nursery.cancel_scope.cancel()  # calls past the grace period

    async def _drain(self, server: Server, grace: float) -> None:
        """Stop accepting, end every call in flight with UNAVAILABLE, give them `grace` s."""
        self._draining = True
        asyncio_server(server).close()  # stop accepting; established connections stay for now
        if not self._calls:
            self._idle.set()
        for scope in list(self._calls):
            scope.cancel()
        with trio.move_on_after(grace):
            await self._idle.wait()
            await trio.sleep(FLUSH_TIME)
        server.close()
        with trio.move_on_after(grace):
            await trio_asyncio.aio_as_trio(server.wait_closed)()
        assert self.listener is not None
        self.listener.close_all()


def routes(base: type, handlers: Mapping[str, TrioHandler]) -> dict[str, TrioHandler]:
    """Method path -> handler for `Bridge.route`, from generated `base` and handlers by name."""
    return {path: handlers[path.rsplit("/", 1)[1]] for path in base.__mapping__(_AnyName())}


class PeerRefused(Exception):
    """Raised by a `verify_peer` callback: the peer is not who we meant to call."""


class ClientChannel:
    """A grpclib channel to one peer (an Agent), used from trio.

    A unary call crosses into asyncio once; a server stream is read by an asyncio task that
    hands each reply to trio through an `Inbound`. Failures of any kind (gRPC status, refused
    connection, TLS, timeout) surface as `RemoteError` with the status a person would expect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        verify_peer: Callable[[Any], None] | None = None,
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        """`verify_peer(peercert)` raises to refuse a peer before any request is sent to it;
        `may_send()` False refuses to send any request (a leader past its renew deadline)."""
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._channel = Channel(host, port, ssl=ssl_context, codec=Codec())
        self._closed = False
        self._verify_peer = verify_peer if ssl_context is not None else None
        self._may_send = may_send

    async def unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """Call a unary method of a generated stub (e.g. `stub.Signal`) bound to this channel."""

        async def call() -> Any:
            stream = method.open(timeout=timeout)
            try:
                async with stream:
                    await self._start(stream)
                    await stream.send_message(request, end=True)
                    return await stream.recv_message()
            finally:
                forget_stream_error(stream)
                self._reclose()

        try:
            return await trio_asyncio.aio_as_trio(call)()
        except BaseException as err:
            error = self._remote_error(err)
            if error is err:  # cancellation or a bug: as it is
                raise
            # Neither may keep what holds it: `err`'s traceback holds trio-asyncio's frames,
            # which hold the asyncio future that holds `err`; and `error`'s holds this frame
            # (a cycle per failed Signal, with its stream, until a full collection).
            err.__traceback__ = None
            try:
                raise error from err
            finally:
                del error

    async def _start(self, stream: Any) -> None:
        """Open the call (connecting if needed) and check the peer before sending anything."""
        if self._closed:
            raise PeerRefused("the channel was closed (the node left or was lost)")
        if not self._may_send():
            raise PeerRefused("this scheduler no longer leads")
        await stream.send_request()
        if not self._may_send():  # connecting took a while
            raise PeerRefused("this scheduler no longer leads")
        if self._verify_peer is not None:
            self._verify_peer(stream.peer.cert())

    def server_stream(
        self, method: Any, request: Any, on_end: Callable[[], None] | None = None
    ) -> ServerStream:
        """Start a server-streaming call (e.g. `stub.Create`); read it with `receive()`.

        `on_end()` is called once the call is over, however it ended."""
        return ServerStream(self, method, request, on_end)

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def _reclose(self) -> None:
        """A call that was connecting while the channel closed re-opened it: close it again
        (grpclib reconnects on demand, and would leak that connection)."""
        if self._closed:
            self._channel.close()

    def _remote_error(self, err: BaseException) -> BaseException:
        if isinstance(err, GRPCError):
            return RemoteError(
                err.status.name, err.message or f"{err.status.name} from {self.target}"
            )
        if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
            return RemoteError("DEADLINE_EXCEEDED", f"{self.target} did not answer in time")
        if isinstance(err, StreamTerminatedError):
            return RemoteError("UNAVAILABLE", f"the stream from {self.target} broke: {err}")
        if isinstance(err, (OSError, ssl.SSLError, ProtocolError)):
            return RemoteError(
                "UNAVAILABLE", f"cannot reach {self.target}: {err or type(err).__name__}"
            )
        if isinstance(err, PeerRefused):
            return RemoteError("UNAVAILABLE", f"refused the peer at {self.target}: {err}")
        return err  # cancellation and bugs propagate unchanged

    def stub(self, stub_class: type) -> Any:
        return stub_class(self._channel)


class ServerStream:
    """One server-streaming call being read by an asyncio task; `cancel()` ends it at once."""

    def __init__(
        self,
        channel: ClientChannel,
        method: Any,
        request: Any,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._channel = channel
        self._inbound = Inbound()
        self._on_end = on_end
        loop = trio_asyncio.current_loop.get()
        self._task: asyncio.Task | None = loop.create_task(self._read(method, request))
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        # A cancelled task keeps its CancelledError, whose traceback holds `_read`'s frame,
        # which holds this object: without letting go of the task, every stream cancelled
        # (the relay cancels each one it ends) waited in a cycle for a full collection.
        self._task = None
        if self._on_end is not None:
            self._on_end()

    async def _read(self, method: Any, request: Any) -> None:
        error = None
        stream = method.open()
        try:
            async with stream:
                await self._channel._start(stream)
                await stream.send_message(request, end=True)
                async for reply in stream:
                    if not await self._inbound.put(reply):
                        await stream.cancel()
                        return
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            error = self._channel._remote_error(err)
        finally:
            forget_stream_error(stream)
            self._inbound.close(error)
            self._channel._reclose()

    async def receive(self) -> Any:
        """The next reply; trio.EndOfChannel when the peer ends the stream OK, else RemoteError."""
        return await self._inbound.receive()

    def cancel(self) -> None:
        """Stop reading and cancel the call (the peer sees it cancelled)."""
        self._inbound.abandon()
        if self._task is not None:
            self._task.cancel()


@asynccontextmanager
async def open_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """The asyncio loop (inside trio) that grpclib servers and channels need; enter it first.

    trio-asyncio's default exception handler re-raises whatever asyncio reports (e.g. grpclib's
    "Unclosed connection" from a garbage-collected channel) into the loop's nursery, which ends
    the whole process; here such reports are logged, so nothing a peer does can crash us.
    """
    with loop_patches():
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_asyncio_error)
            run_callbacks_in_batches(loop)
            yield loop


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    log.error("asyncio: %s", context.get("message", "error"), exc_info=context.get("exception"))


def _peer_host(stream: Stream) -> str:
    peername = transport_of(stream).get_extra_info("peername")
    return peername[0] if peername else ""


class _Server(Server):
    """grpclib's Server, listening through a `Listener` (which makes each connection's
    protocol objects and keeps them, so shutdown can close idle connections too: grpclib's
    `close()` leaves them open, and a client would keep sending to a scheduler that no longer
    exists)."""

    async def start_listener(self, listener: Listener, host: str | None, port: int) -> None:
        """grpclib's `start`, with the listener's protocol factory (TLS included: `ssl=None`)."""
        if self._server is not None:
            raise RuntimeError("Server is already started")
        self._server = await self._loop.create_server(
            listener.protocol_factory,
            host,
            port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
            start_serving=False,
        )
        listener.serve(self._server, LISTEN_BACKLOG)
        self._server_closed_fut = self._loop.create_future()


class _AnyName:
    """Stands in for a servicer when reading a generated base's mapping: any method is None."""

    def __getattr__(self, name: str) -> None:
        return None


class _Servable:
    """A grpclib servable built from a mapping (what generated `*Base` classes provide)."""

    def __init__(self, mapping: dict[str, Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping
