"""What the scheduler changes in its libraries, in one place, and only while a loop needs it.

Each item below relies on a library's internals; tests/test_compat.py checks every assumption
against the installed versions (pinned in pyproject.toml) and fails loudly, naming this module,
when an upgrade changes one. grpclib's and h2's protocol-level internals, which the listener
subclasses, are checked in tests/test_listener_contract.py.

- `loop_patches()`: four class attributes, set while at least one bridge loop is open and
  restored when the last one closes (nothing outlives the loops that need it):
  - asyncio's SSLProtocol.max_size, its TLS read buffer (256 KiB per connection);
  - h2's H2Connection.MAX_CLOSED_STREAMS (65,536 closed streams remembered per connection);
  - hyperframe's Frame.__repr__: h2 formats every frame it receives for a trace log that is
    then discarded (`repr(frame)` before the logger call, ~5 µs: flags, body as hex), i.e.
    ~10 % of a status message's CPU; a brief repr (type, stream id) costs ~0.4 µs.
  - asyncio's socket transport's `_call_connection_lost`, which then also drops the transport's
    bound read callback (`_read_ready_cb`): CPython 3.11 keeps it, a reference cycle per closed
    connection (transport, socket, dicts) that waits for a full collection.
- `run_callbacks_in_batches(loop)`: replaces trio-asyncio's `_main_loop_one` on one loop
  instance (it goes with the loop).
- grpclib's internals the bridge reads, one small function each (`h2_stream`, `transport_of`,
  `buffered_bytes`, `request_ended`, `decode_request`, `send_encoded`, `trailers_sent`,
  `forget_stream_error`, `asyncio_server`), so `grpc_bridge` touches no private attribute of
  grpclib itself.

`grpc_listener` is the other place that knows library internals: it subclasses grpclib's and
h2's protocol objects (connection limits, flow control, resets), which no accessor could hide;
tests/test_listener_contract.py pins what it relies on.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import asyncio.sslproto
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import h2.connection
import hyperframe.frame
import trio

# Measured per mTLS Agent: 367 KiB at 256 KiB, 143 at 32, 115 at 4 (a status is ~100 bytes;
# a larger TLS record is simply read in more steps).
TLS_READ_BUFFER = 4 * 1024  # per TLS connection; asyncio allocates 256 KiB (3/4 of an Agent's RSS)
# How each of the last N closed streams of a connection ended (h2 keeps 65,536: 7.5 MiB on a
# long-lived connection; 116 bytes each, measured). Needed only for frames still in flight when
# a stream closed, which arrive within a round trip; in one, a connection of at most 100 streams
# at once (an Agent's, both ways) closes at most ~200. A Controller's connection, which may hold
# 10,000, remembers more: `grpc_listener.MANY_STREAMS_CLOSED_REMEMBERED`. (1,024 here filled 116
# KiB per Agent channel after 1,024 Creates: ~1.1 GiB at 10,000 nodes, the soak's slow climb.)
CLOSED_STREAMS_REMEMBERED = 256
CALLBACKS_PER_CHECKPOINT = 64  # ready asyncio callbacks run back to back before trio's tasks run


def brief_frame_repr(frame: hyperframe.frame.Frame) -> str:
    """A frame as h2's (discarded) trace log needs it: its type and stream."""
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


# asyncio's socket transport (private: typeshed has no stub for it)
_SocketTransport: Any = vars(asyncio.selector_events)["_SelectorSocketTransport"]
_transport_connection_lost = _SocketTransport._call_connection_lost


def _connection_lost_without_cycle(transport: Any, exc: BaseException | None) -> None:
    """asyncio's, then the transport lets go of its bound read callback (a method of itself).
    Reading stopped when the connection closed; a read already queued finds nothing to do."""
    try:
        _transport_connection_lost(transport, exc)
    finally:
        transport._read_ready_cb = _nothing_to_read


def _nothing_to_read() -> None:
    """The read callback of a closed transport."""


_PATCHES: tuple[tuple[type, str, object], ...] = (
    (asyncio.sslproto.SSLProtocol, "max_size", TLS_READ_BUFFER),
    (h2.connection.H2Connection, "MAX_CLOSED_STREAMS", CLOSED_STREAMS_REMEMBERED),
    (hyperframe.frame.Frame, "__repr__", brief_frame_repr),
    (_SocketTransport, "_call_connection_lost", _connection_lost_without_cycle),
)
_open_loops = 0
_saved: list[Any] = []


@contextmanager
def loop_patches() -> Iterator[None]:
    """The class attributes above, for as long as any bridge loop is open (loops may overlap:
    the first sets them, the last restores what was there)."""
    global _open_loops
    if _open_loops == 0:
        _saved[:] = [getattr(owner, name) for owner, name, _ in _PATCHES]
        for owner, name, value in _PATCHES:
            setattr(owner, name, value)
    _open_loops += 1
    try:
        yield
    finally:
        _open_loops -= 1
        if _open_loops == 0:
            for (owner, name, _), value in zip(_PATCHES, _saved, strict=True):
                setattr(owner, name, value)


def run_callbacks_in_batches(loop: Any) -> None:
    """Let trio-asyncio's loop run every ready asyncio callback (up to a bound) per trio turn.

    trio-asyncio runs *one* asyncio callback per trio checkpoint (`_main_loop_one` receives it
    from a trio channel), so every step of grpclib -- a socket read, a future resolving, a task
    resuming -- waits for a whole round of trio's scheduler. Here each turn runs the first
    callback as trio-asyncio does (waiting for it, with its timers), then whatever else is
    already queued, without yielding: the same callbacks in the same order, far fewer rounds.
    Bounded so that trio's own tasks (liveness deadlines, handlers) still get their turn.
    The loop looks `_main_loop_one` up on every iteration, so setting it on the instance works
    on a running loop, and it goes with the loop.
    """
    one = loop._main_loop_one

    async def main_loop_one(no_wait: bool = False) -> None:
        await one(no_wait)
        for _ in range(CALLBACKS_PER_CHECKPOINT - 1):
            try:
                await one(no_wait=True)  # raises WouldBlock once nothing is queued
            except trio.WouldBlock:
                return

    loop._main_loop_one = main_loop_one


# -- grpclib 0.4.9's internals the bridge reads (tests/test_compat.py pins each) ---------------
# grpclib's public API gives a server handler `Stream.peer` (addr(), cert()) and
# `send_message`/`recv_message`; the bridge needs a little more: the transport (its ssl object
# and peer address, once per call), the HTTP/2 stream (to read a message prefix before its
# body, and to write several messages in one DATA frame), and a few flags.


def h2_stream(stream: Any) -> Any:
    """The HTTP/2 stream (grpclib.protocol.Stream) under a grpclib server or client Stream."""
    return stream._stream


def transport_of(stream: Any) -> Any:
    """The asyncio transport of a grpclib server Stream's connection."""
    return stream._stream._transport


def buffered_bytes(h2: Any) -> int:
    """Bytes of an HTTP/2 stream's receive buffer already arrived (not yet read)."""
    size: int = h2.buffer._acked_size
    return size


def request_ended(h2: Any) -> bool:
    """Whether an HTTP/2 stream's request side has ended (END_STREAM arrived): every read of
    what it sent then returns without waiting."""
    ended: bool = h2.buffer._eof
    return ended


def decode_request(stream: Any, data: bytes) -> Any:
    """A request message's bytes decoded with the call's codec and request type."""
    return stream._codec.decode(data, stream._recv_type)


async def send_encoded(stream: Any, messages: list[Any], frame: Any) -> None:
    """Send reply messages of a server stream in one HTTP/2 DATA write: each encoded with the
    call's codec and framed by `frame(body)` (gRPC's 5-byte prefix and the body)."""
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    encode, send_type = stream._codec.encode, stream._send_type
    await stream._stream.send_data(
        b"".join(frame(encode(message, send_type)) for message in messages)
    )


def trailers_sent(stream: Any) -> bool:
    """A grpclib server Stream has sent its trailing metadata (the call is answered)."""
    sent: bool = stream._send_trailing_metadata_done
    return sent


def forget_stream_error(stream: Any) -> None:
    """Let a grpclib client stream forget the error that broke it, once raised: its `Wrapper`
    keeps it, and its traceback holds the frames that hold the stream (a cycle per call to an
    Agent that reset or dropped it, with its buffers, until a full collection)."""
    stream._wrapper._error = None


def asyncio_server(server: Any) -> Any:
    """The asyncio Server under a started grpclib Server (its sockets; close() to stop
    accepting while established connections stay)."""
    return server._server
