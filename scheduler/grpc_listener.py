"""The gRPC listener's connections: what one peer may make them hold, and for how long.

grpclib serves gRPC with h2 on asyncio. Out of the box one client with a valid certificate
could make it hold memory for good (issue 13): streams reset in the same read as their HEADERS
were never released, incomplete messages and header blocks were kept with no time limit,
handshakes got asyncio's 60 s, connections had no cap below the file-descriptor limit, and at
that limit asyncio logged thousands of tracebacks a second. This module builds the protocol
objects of every accepted connection so that each of those has a bound (all of them named in
docs/DECISIONS.md). Only the bridge (`grpc_bridge`) imports it.

- Handshakes: TLS must complete within `handshake_timeout`; at most PENDING_HANDSHAKES at once
  (a new connection closes the oldest pending one); a failed one leaves nothing behind.
- Connections: at most `max_connections`, and never more than half the process's descriptors.
  A connection beyond it closes the oldest pending handshake, else the oldest idle connection
  (no call open); else it is refused. One Agent holds at most AGENT_CONNECTIONS (a new one
  closes its oldest): one compromised certificate pins a bounded share.
- Streams: a stream beyond the concurrent limit is refused alone (REFUSED_STREAM); a stream the
  peer resets before any answer costs a token of RAPID_RESETS (refilled at RAPID_RESET_RATE),
  and a connection out of tokens gets GOAWAY(ENHANCE_YOUR_CALM); every stream is released
  however its handler ends.
- Buffers: receive windows of STREAM_WINDOW / CONNECTION_WINDOW; an incomplete message counts
  its whole length against its connection's buffer of `max_message_bytes` (the credit for more
  of it waits meanwhile) and must complete within `message_timeout`; a header block must
  complete within `message_timeout` and HEADER_BLOCK_BYTES.
- New connections from one address (not the scheduler's own host): `connection_rate_per_ip`
  a second, in bursts of CONNECTION_BURST_SECONDS' worth; beyond, closed before TLS starts.
- accept() out of descriptors: one rate-limited log line, accepting again ACCEPT_RETRY later.

It relies on internals of grpclib 0.4.9 and h2 4.x (both pinned in pyproject.toml);
tests/test_listener_contract.py fails loudly if an upgrade changes any of them.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import errno
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.connection
import h2.exceptions
import h2.settings
from grpclib.config import Configuration
from grpclib.protocol import Connection, EventsProcessor, H2Protocol, Stream, _set_nodelay
from grpclib.server import Handler, Server
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2.stream import StreamClosedBy
from hyperframe.frame import RstStreamFrame

from .logs import RateLimited
from .throttle import TokenBucket

log = logging.getLogger(__name__)

MANY_STREAMS_CLOSED_REMEMBERED = 1024  # closed streams remembered by a connection allowed more
# than AGENT_STREAMS (a Controller's); others keep _compat.CLOSED_STREAMS_REMEMBERED (see there)
AGENT_STREAMS = 100  # concurrent calls per Agent connection (h2's default): it needs ~3
PENDING_HANDSHAKES = 1024  # TLS handshakes in progress at once; a new one closes the oldest
AGENT_CONNECTIONS = 4  # per Agent: one in use, one half-open after a reconnect, and headroom
RAPID_RESETS = 100  # unanswered streams a connection may reset at once: its concurrent streams
RAPID_RESET_RATE = 10.0  # tokens back per second; nghttp2 allows 1,000 then 33/s of any reset
STREAM_WINDOW = 65_535  # bytes a stream may send ahead of being read: HTTP/2's default
CONNECTION_WINDOW = 1 << 20  # bytes a connection may send ahead of being read, all streams
# An encoded header block larger than the decoded list size we advertise can only be refused;
# h2 would buffer 64 CONTINUATION frames of 16 KiB (1 MiB) before finding out.
HEADER_BLOCK_BYTES = h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE
DESCRIPTOR_SHARE = 2  # connections may use 1/2 of the descriptors; the rest dial Agents, files
ACCEPT_RETRY = 1.0  # s before accepting again once the process is out of descriptors
ACCEPTS_PER_WAKEUP = 128  # a connection storm must not stall the established connections
CONNECTION_BURST_SECONDS = 4.0  # an address may open this many seconds' worth at once
# The scheduler's own host: local tools, tests and benchmarks (hundreds of simulated Agents)
# connect from there, and a local process has easier ways to hurt the scheduler.
LOCAL_PEERS = frozenset({"127.0.0.1", "::1"})
PEERS_REMEMBERED = 65_536  # addresses whose connection rate is tracked; the idlest forgotten
LOG_INTERVAL = 10.0  # s between two log lines about the same peer and the same limit
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Limits:
    """What the operator tunes (`[server]` in the configuration)."""

    max_connections: int = 20_000
    handshake_timeout: float = 10.0  # s
    message_timeout: float = 10.0  # s
    max_message_bytes: int = 4 << 20  # also the buffer of incomplete messages per connection
    connection_rate_per_ip: float = 16.0  # new connections a second from one address; 0: any
    # Concurrent calls on one connection of a Controller (or a plaintext peer): it keeps one
    # Schedule stream open per instance it placed, until the instance terminates. Agents and
    # other identities get HTTP/2's usual AGENT_STREAMS.
    controller_streams: int = 10_000


class Listener:
    """Every connection the gRPC listener accepted, oldest first, and the limits they live by.

    `serve(server)` accepts the connections of an asyncio server created with `ssl=None` and
    `start_serving=False`: TLS is layered here, so that handshakes can be counted and bounded,
    and a connection can be refused before any of that is spent on it.
    `identify(ssl_object)` names a TLS peer (an object with `kind` and `name`) or returns None.
    """

    def __init__(
        self,
        server: Server,
        limits: Limits,
        ssl_context: ssl.SSLContext | None,
        identify: Callable[[Any], Any] | None = None,
    ) -> None:
        self.limits = limits
        self.max_connections = connection_cap(limits.max_connections)
        self.ssl_context = ssl_context
        self._server = server
        self._identify = identify
        self.grpc_config = Configuration(
            http2_connection_window_size=CONNECTION_WINDOW, http2_stream_window_size=STREAM_WINDOW
        ).__for_server__()
        self._pending: dict[_Tls, None] = {}  # handshakes in progress, oldest first
        self._open: dict[_Http2, None] = {}  # established connections, oldest first
        self._agents: dict[str, dict[_Http2, None]] = {}  # node id -> its Agent's connections
        self._peers: dict[str, TokenBucket] = {}  # address -> its new connections, idlest first
        self.counts = {
            "refused": 0,
            "refused_rate": 0,
            "closed_idle": 0,
            "closed_handshakes": 0,
            "closed_agent_excess": 0,
            "rapid_reset_goaways": 0,
            "header_block_goaways": 0,
            "protocol_errors": 0,
        }
        self._log = RateLimited(log, LOG_INTERVAL)

    def protocol_factory(self) -> asyncio.BaseProtocol:
        http2 = _Http2(self)
        return http2 if self.ssl_context is None else _Tls(self, http2)

    # -- accepting ---------------------------------------------------------------------------------

    def serve(self, server: asyncio.AbstractServer, backlog: int) -> None:
        """Start accepting on the sockets of `server` (made with start_serving=False)."""
        loop = asyncio.get_event_loop()
        for sock in server.sockets:
            sock._sock.listen(backlog)
            loop.add_reader(sock.fileno(), self._accept, loop, sock._sock, server)

    def _accept(self, loop: Any, sock: socket.socket, server: asyncio.AbstractServer) -> None:
        """asyncio's accept loop (`_accept_connection`), refusing by address before anything
        is spent on a connection. Out of descriptors, asyncio's went on calling accept() up to
        its backlog (4,096) times per wake-up, each failure a logged traceback: thousands of
        lines a second. This one stops at the first, with one line every LOG_INTERVAL."""
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    raise
                self._log.warning(
                    "accept",
                    "cannot accept connections: %s; accepting again in %g s",
                    error.strerror,
                    ACCEPT_RETRY,
                )
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY, self._resume, loop, sock, server)
                return
            if not self._admit(addr[0]):
                conn.close()
                continue
            conn.setblocking(False)
            loop.create_task(
                loop._accept_connection2(
                    self.protocol_factory, conn, {"peername": addr}, None, server
                )
            )

    def _resume(self, loop: Any, sock: socket.socket, server: asyncio.AbstractServer) -> None:
        if server.sockets:  # not closed meanwhile
            loop.add_reader(sock.fileno(), self._accept, loop, sock, server)

    def _admit(self, host: str) -> bool:
        """True unless `host` opened more than its share of connections lately."""
        rate = self.limits.connection_rate_per_ip
        if rate <= 0 or host in LOCAL_PEERS:
            return True
        now = time.monotonic()
        bucket = self._peers.pop(host, None)
        if bucket is None:
            bucket = TokenBucket(rate, max(1, round(rate * CONNECTION_BURST_SECONDS)), now)
            if len(self._peers) >= PEERS_REMEMBERED:
                del self._peers[next(iter(self._peers))]
        self._peers[host] = bucket
        if bucket.take(now):
            return True
        self.counts["refused_rate"] += 1
        self._log.warning(
            ("rate", host),
            "refused a new connection from %s: more than %g a "
            "second from that address (server.connection_rate_per_ip)",
            host,
            rate,
        )
        return False

    def statistics(self) -> dict[str, int]:
        return {
            "connections": len(self._open),
            "pending_handshakes": len(self._pending),
            "max_connections": self.max_connections,
            **self.counts,
        }

    def close_all(self) -> None:
        """Close every connection at once (shutdown, after calls were given their grace)."""
        for tls in list(self._pending):
            tls.abort()
        for http2 in list(self._open):
            http2.close(ErrorCodes.NO_ERROR, "the scheduler is shutting down")

    # -- slots: one per accepted socket, from accept (TLS: before the handshake) to close ----------

    def handshake_started(self, tls: _Tls) -> bool:
        """A TLS connection was accepted; False if there is no room for it (it is closed)."""
        if not self._make_room(tls.peer):
            return False
        if len(self._pending) >= PENDING_HANDSHAKES:
            oldest = next(iter(self._pending))
            self.counts["closed_handshakes"] += 1
            self._log.warning(
                "handshakes",
                "%d TLS handshakes in progress: closed the oldest "
                "(from %s) for a new connection from %s",
                PENDING_HANDSHAKES,
                oldest.peer,
                tls.peer,
            )
            oldest.abort()
        self._pending[tls] = None
        return True

    def handshake_ended(self, tls: _Tls) -> None:
        self._pending.pop(tls, None)

    def opened(self, http2: _Http2) -> bool:
        """An HTTP/2 connection is up (TLS: its handshake succeeded); False if it must close."""
        if http2.tls is None:
            if not self._make_room(http2.peer):
                return False
        else:
            self._pending.pop(http2.tls, None)
        self._open[http2] = None
        if self._identify is not None and http2.tls is not None:
            identity = self._identify(http2.tls.ssl_object)
            http2.identity = identity
            if identity is not None and identity.kind == "agent":
                self._limit_agent(http2, identity.name)
        return True

    def concurrent_streams(self, http2: _Http2) -> int:
        """How many calls the connection may have open at once: many for a Controller (one
        Schedule stream per running instance) or a plaintext peer (no identity to tell), the
        usual HTTP/2 hundred for everyone else."""
        identity = http2.identity
        if http2.tls is None or (identity is not None and identity.kind == "controller"):
            return self.limits.controller_streams
        return AGENT_STREAMS

    def closed(self, http2: _Http2) -> None:
        self._open.pop(http2, None)
        identity = http2.identity
        if identity is not None and identity.kind == "agent":
            connections = self._agents.get(identity.name)
            if connections is not None:
                connections.pop(http2, None)
                if not connections:
                    del self._agents[identity.name]

    def _limit_agent(self, http2: _Http2, node_id: str) -> None:
        connections = self._agents.setdefault(node_id, {})
        connections[http2] = None
        while len(connections) > AGENT_CONNECTIONS:
            oldest = next(iter(connections))
            connections.pop(oldest)
            self.counts["closed_agent_excess"] += 1
            self._log.warning(
                ("agent", node_id),
                "node %s's Agent opened more than %d connections: closed its oldest (from %s)",
                node_id,
                AGENT_CONNECTIONS,
                oldest.peer,
            )
            oldest.close(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"more than {AGENT_CONNECTIONS} connections of this Agent",
            )

    def _make_room(self, peer: str) -> bool:
        """Below the cap, or made so by closing the oldest pending handshake or idle connection."""
        if len(self._pending) + len(self._open) < self.max_connections:
            return True
        if self._pending:
            oldest = next(iter(self._pending))
            self.counts["closed_handshakes"] += 1
            oldest.abort()
            self._pending.pop(oldest, None)
            why = f"closed the oldest TLS handshake in progress (from {oldest.peer})"
        else:
            idle = next((http2 for http2 in self._open if http2.idle), None)
            if idle is None:
                self.counts["refused"] += 1
                self._log.warning(
                    "limit",
                    "%d connections (server.max_connections): refused "
                    "a new one from %s (no idle connection to close)",
                    self.max_connections,
                    peer,
                )
                return False
            self.counts["closed_idle"] += 1
            idle.close(ErrorCodes.NO_ERROR, "connection limit reached; this one was idle")
            why = f"closed the oldest idle connection (from {idle.peer})"
        self._log.warning(
            "limit",
            "%d connections (server.max_connections): %s for a new one from %s",
            self.max_connections,
            why,
            peer,
        )
        return True

    # -- grpclib's objects for one connection ----------------------------------------------------

    def new_handler(self) -> _Handler:
        server = self._server
        server.__gc_step__()  # grpclib's own bookkeeping: forgets handlers of closed connections
        handler = _Handler(
            server._mapping, server._codec, server._status_details_codec, server.__dispatch__
        )
        server._handlers.add(handler)
        return handler

    def log_violation(self, http2: _Http2, what: str) -> None:
        self._log.warning(
            ("violation", http2.peer),
            "closed the connection of %s (%s): %s",
            http2.peer,
            http2.identity or "no identity",
            what,
        )


def connection_cap(configured: int) -> int:
    """`configured`, lowered to a share of the descriptors this process may open (its soft
    limit, first raised to the hard limit as Go's runtime does), so that accepting peers never
    exhausts them: the scheduler's own connections to Agents and its files need the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return configured
    share = max(1, soft // DESCRIPTOR_SHARE)
    if share < configured:  # information, not a fault: most hosts default to far fewer files
        log.info(
            "server.max_connections %d lowered to %d: this process may open only %d "
            "files (raise LimitNOFILE / ulimit -n for more)",
            configured,
            share,
            soft,
        )
    return min(configured, share)


class _Tls(asyncio.sslproto.SSLProtocol):
    """TLS below one HTTP/2 connection: its handshake is timed and counted, and a failed one
    leaves nothing for the garbage collector (asyncio's keeps ~70 KB in reference cycles)."""

    def __init__(self, listener: Listener, app: _Http2) -> None:
        timeout = listener.limits.handshake_timeout
        super().__init__(
            asyncio.get_event_loop(),
            app,
            listener.ssl_context,
            None,
            server_side=True,
            ssl_handshake_timeout=timeout,
            ssl_shutdown_timeout=timeout,
        )
        self.listener = listener
        self.peer = ""
        app.tls = self

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._sslobj

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = _host(transport)
        super().connection_made(transport)  # starts the handshake
        if not self.listener.handshake_started(self):
            self.abort()

    def abort(self) -> None:
        self.listener.handshake_ended(self)
        if self._transport is not None:
            self._transport.abort()

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        try:
            super()._on_handshake_complete(handshake_exc)
        finally:
            self.listener.handshake_ended(self)
            if isinstance(handshake_exc, BaseException):  # (an EOF passes the class)
                # asyncio re-raises it inside the frame that holds it: a cycle (exception ->
                # traceback -> frame -> exception) keeping this protocol, its SSL object and
                # buffers until a full collection.
                handshake_exc.__traceback__ = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.listener.handshake_ended(self)
        super().connection_lost(exc)
        if exc is not None:
            exc.__traceback__ = None


class _Http2(H2Protocol):
    """One HTTP/2 connection of the listener: grpclib's protocol within the listener's bounds."""

    def __init__(self, listener: Listener) -> None:
        # The handler is made once the connection is up: a failed handshake leaves none.
        super().__init__(None, listener.grpc_config, listener._server._h2_config)
        self.listener = listener
        self.tls: _Tls | None = None
        self.peer = ""
        self.identity: Any = None
        self.closed = False
        self.buffer_free = listener.limits.max_message_bytes  # for incomplete messages
        self._buffer_waiters: list[asyncio.Future] = []
        self._resets = float(RAPID_RESETS)
        self._resets_at = time.monotonic()
        self._header_block: Any = None  # first frame of the header block being timed
        self._header_timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    @property
    def idle(self) -> bool:
        """No call open: closing it costs its peer a reconnection, nothing else."""
        return not self.processor.streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # grpclib's H2Protocol.connection_made, with our h2 connection, handler and events.
        self.peer = self.tls.peer if self.tls is not None else _host(transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)
        h2_connection = _H2Connection(config=self.h2_config)
        h2_connection.initiate_connection()
        initial = h2_connection.local_settings.initial_window_size
        if CONNECTION_WINDOW != initial:
            h2_connection.increment_flow_control_window(CONNECTION_WINDOW - initial)
        if STREAM_WINDOW != initial:
            h2_connection.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.connection = _Connection(h2_connection, transport, config=self.config, protocol=self)
        self.connection.flush()
        self.connection.initialize()
        self.handler = self.listener.new_handler()
        self.processor = _Events(self.handler, self.connection)
        if not self.listener.opened(self):
            self.close(ErrorCodes.ENHANCE_YOUR_CALM, "connection limit reached")
            return
        streams = self.listener.concurrent_streams(self)
        if streams > AGENT_STREAMS:
            h2_connection.remember_closed_streams(MANY_STREAMS_CLOSED_REMEMBERED)
        if streams != h2_connection.local_settings.max_concurrent_streams:
            h2_connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: streams})
            self.connection.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        connection = self.connection
        try:
            events = connection.feed(data)
        except h2.exceptions.ProtocolError as error:
            # h2 queued a GOAWAY naming the error; grpclib would close without sending it.
            self.listener.counts["protocol_errors"] += 1
            self.listener.log_violation(self, f"HTTP/2 protocol error: {error}")
            connection.flush()
            self._end("Protocol error")
            return
        connection.flush()
        processor = self.processor
        for event in events:
            processor.process(event)
            if self.closed:
                return
        connection.flush()
        pending = connection._connection.incoming_buffer._headers_buffer
        if pending:
            self._time_header_block(pending)
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = self._header_block = None

    def _time_header_block(self, pending: list) -> None:
        """A header block is incomplete after this read: bound its size and its time."""
        if sum(len(frame.data) for frame in pending) > HEADER_BLOCK_BYTES:
            self.listener.counts["header_block_goaways"] += 1
            self._violation(f"a header block over {HEADER_BLOCK_BYTES} bytes")
        elif pending[0] is not self._header_block:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_block = pending[0]
            self._header_timer = asyncio.get_event_loop().call_later(
                self.listener.limits.message_timeout, self._header_block_expired
            )

    def _header_block_expired(self) -> None:
        self._header_timer = None
        if not self.closed and self.connection._connection.incoming_buffer._headers_buffer:
            self.listener.counts["header_block_goaways"] += 1
            self._violation(
                f"a header block not completed within "
                f"{self.listener.limits.message_timeout:g} s (server.message_timeout)"
            )

    def rapid_reset(self, stream_id: int) -> None:
        """The peer reset a stream before any answer: one token, GOAWAY when none is left
        (naming that stream as the last one processed: h2 parsed the whole read already)."""
        now = time.monotonic()
        tokens = min(RAPID_RESETS, self._resets + (now - self._resets_at) * RAPID_RESET_RATE)
        self._resets_at = now
        if tokens < 1.0:
            self.listener.counts["rapid_reset_goaways"] += 1
            self._violation(
                f"more than {RAPID_RESETS} streams reset before an answer "
                f"(then {RAPID_RESET_RATE:g}/s)",
                stream_id,
            )
        else:
            self._resets = tokens - 1.0

    def _violation(self, what: str, last_stream_id: int | None = None) -> None:
        self.listener.log_violation(self, what)
        self.close(ErrorCodes.ENHANCE_YOUR_CALM, what, last_stream_id)

    def close(self, error_code: ErrorCodes, why: str, last_stream_id: int | None = None) -> None:
        """GOAWAY saying why, then close: calls in flight end, the peer may reconnect."""
        if self.closed:
            return
        try:
            self.connection._connection.close_connection(
                error_code, why.encode()[:256], last_stream_id
            )
            self.connection.flush()
        except (h2.exceptions.ProtocolError, AttributeError):
            pass  # the connection is closing already
        self._end(why)

    def _end(self, why: str) -> None:
        self.closed = True
        self.listener.closed(self)
        self.processor.close(why)

    # -- the buffer of incomplete messages (see read_body) -------------------------------------

    async def reserve(self, amount: int) -> None:
        while amount > self.buffer_free:
            waiter = asyncio.get_event_loop().create_future()
            self._buffer_waiters.append(waiter)
            await waiter
        self.buffer_free -= amount

    def release(self, amount: int) -> None:
        self.buffer_free += amount
        waiters, self._buffer_waiters = self._buffer_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.listener.closed(self)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = self._header_block = None
        processor = getattr(self, "processor", None)
        if processor is not None:
            super().connection_lost(exc)
            self.connection.protocol = None  # break the cycle: protocol <-> connection
        self.tls = self._transport = None


class _Connection(Connection):
    """grpclib's connection state, knowing its protocol (for the buffer of incomplete
    messages), with streams that remember whether they were answered."""

    def __init__(
        self,
        h2_connection: h2.connection.H2Connection,
        transport: Any,
        *,
        config: Configuration,
        protocol: _Http2,
    ) -> None:
        super().__init__(h2_connection, transport, config=config)
        self.protocol: _Http2 | None = protocol

    def create_stream(self, *, stream_id: int | None = None, wrapper: Any = None) -> _Stream:
        return _Stream(
            self, self._connection, self._transport, stream_id=stream_id, wrapper=wrapper
        )


class _Stream(Stream):
    """grpclib's stream; `answered` once the server sent its headers (a reset after that is
    a client hanging up on a call it got an answer to, not a Rapid Reset)."""

    answered = False

    async def send_headers(self, headers: Any, end_stream: bool = False) -> None:
        self.answered = True
        await super().send_headers(headers, end_stream)


class _SettingValues(list):
    """One HTTP/2 setting's values, the current one first, then those not yet acknowledged:
    what h2 keeps in a `collections.deque`, whose first block alone is ~770 bytes."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _Settings(h2.settings.Settings):
    """h2's settings with a list per setting, not a deque: a connection has two of these
    with 7-9 settings each, and the deques were ~11 KiB of every Agent's connection
    (tracemalloc). h2 only appends to, reads the first of, and pops the first of each."""

    def __init__(self, client: bool = True, initial_values: dict | None = None) -> None:
        super().__init__(client, initial_values)
        self._settings = {key: _SettingValues(values) for key, values in self._settings.items()}

    def __setitem__(self, key: Any, value: int) -> None:
        super().__setitem__(key, value)  # validates; makes a deque for a setting it lacked
        values = self._settings[key]
        if not isinstance(values, _SettingValues):
            self._settings[key] = _SettingValues(values)


class _H2Connection(h2.connection.H2Connection):
    """h2's connection, refusing a stream beyond the concurrent limit alone, with compact
    settings (`_Settings`).

    h2 treats the HEADERS of one stream too many as a connection error (TooManyStreamsError);
    RFC 9113 §5.1.2 allows a stream error, REFUSED_STREAM, which a client may retry at once.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)
        client = self.config.client_side
        self.local_settings = _Settings(
            client=client,
            initial_values={key: self.local_settings[key] for key in self.local_settings},
        )
        self.remote_settings = _Settings(client=not client)

    def remember_closed_streams(self, count: int) -> None:
        """How many of its last closed streams the connection remembers (class default:
        MAX_CLOSED_STREAMS, as `_compat` sets it)."""
        self._closed_streams._size_limit = count

    def _receive_headers_frame(self, frame):
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            if frame.stream_id % 2 == 0 or frame.stream_id <= self.highest_inbound_stream_id:
                raise
            # Decoded all the same: the HPACK state is the connection's (RFC 9113 §4.3).
            h2.connection._decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = frame.stream_id
            self._closed_streams[frame.stream_id] = StreamClosedBy.SEND_RST_STREAM
            reset = RstStreamFrame(frame.stream_id)
            reset.error_code = ErrorCodes.REFUSED_STREAM
            return [reset], []


class _Events(EventsProcessor):
    """grpclib's event processor, spending a reset token on each stream the peer resets
    before the server answered it (the Rapid Reset pattern, CVE-2023-44487)."""

    def process_stream_reset(self, event) -> None:
        if event.remote_reset:
            # A stream still registered is a call in progress (or never started); one released
            # already was answered in full.
            stream = self.streams.get(event.stream_id)
            protocol = self.connection.protocol
            if stream is not None and not stream.answered and protocol is not None:
                protocol.rapid_reset(event.stream_id)
        super().process_stream_reset(event)


class _Handler(Handler):
    """grpclib's per-connection handler, releasing each stream however its task ends, and
    leaving nothing of it in reference cycles.

    grpclib releases a stream in its handler task's `finally`; a task cancelled before it ever
    ran (the stream's RST_STREAM came in the same read as its HEADERS) never runs it, and the
    stream stayed registered for the life of the connection (~7.5 KB each). And a call the
    client reset keeps, in its stream's `Wrapper`, the error that cancelled it, whose traceback
    holds the frames that hold the wrapper: the call, its buffers and the messages read ahead
    for it stayed until a full collection (an Agent resetting status streams in a loop: +100 MB).
    """

    def accept(self, stream: Stream, headers: Any, release_stream: Callable[[], Any]) -> None:
        released = False

        def release(*_: object) -> None:
            nonlocal released
            if not released:
                released = True
                release_stream()

        def ended(task: asyncio.Task) -> None:
            release()
            wrapper = stream.wrapper
            if wrapper is not None:
                wrapper._error = None
            if not task.cancelled() and task.exception() is not None:
                task.exception().__traceback__ = None

        super().accept(stream, headers, release)
        self._tasks[stream].add_done_callback(ended)


async def read_body(stream: Stream, length: int, timeout: float) -> bytes:
    """The body of a request message whose prefix announced `length` bytes, and that did not
    all come with its prefix (the caller takes such a body at once: the hot path).

    The message counts its whole length against its connection's buffer (waiting while the
    connection's other incomplete messages fill it; its client is meanwhile held back by flow
    control) and must be complete within `timeout` (TimeoutError).
    """
    protocol = stream.connection.protocol
    async with asyncio.timeout(timeout):
        if protocol is None:  # the connection is gone: recv_data raises
            return await stream.recv_data(length)
        await protocol.reserve(length)
        try:
            return await stream.recv_data(length)
        finally:
            protocol.release(length)


def _host(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return peername[0] if peername else "?"
