"""scheduler/_compat.py: each library assumption holds on the installed versions, and every
patch lasts only as long as the loops that need it."""

from __future__ import annotations

import asyncio.selector_events
import asyncio.sslproto
import inspect
import sys

import h2.connection
import hyperframe.frame
import trio
import trio_asyncio

from scheduler import _compat
from scheduler.grpc_bridge import open_loop

REVISIT = "revisit scheduler/_compat.py"


def test_the_patched_attributes_exist_and_are_what_the_libraries_read():
    # SSLProtocol allocates its read buffer from max_size; h2 prunes closed streams past
    # MAX_CLOSED_STREAMS. If either is renamed, setting it would silently do nothing.
    assert isinstance(asyncio.sslproto.SSLProtocol.max_size, int), REVISIT
    assert "self.max_size" in inspect.getsource(asyncio.sslproto.SSLProtocol), REVISIT
    assert isinstance(h2.connection.H2Connection.MAX_CLOSED_STREAMS, int), REVISIT
    assert "MAX_CLOSED_STREAMS" in inspect.getsource(h2.connection.H2Connection), REVISIT
    # The socket transport keeps its read callback, a bound method of itself, in
    # _read_ready_cb (set by set_protocol, called by _read_ready) and closes in
    # _call_connection_lost; if either moves, the patch would leave the cycle in place.
    transport = asyncio.selector_events._SelectorSocketTransport
    assert "_call_connection_lost" in vars(transport), REVISIT
    assert "self._read_ready_cb = self._read_ready__" in inspect.getsource(transport), REVISIT
    assert "self._read_ready_cb()" in inspect.getsource(transport._read_ready), REVISIT


async def test_trio_asyncio_runs_its_loop_through_main_loop_one():
    async with trio_asyncio.open_loop() as loop:
        assert inspect.iscoroutinefunction(loop._main_loop_one), REVISIT
    source = inspect.getsource(sys.modules["trio_asyncio._base"])  # BaseTrioEventLoop's module
    assert "await self._main_loop_one()" in source, (
        f"the loop no longer calls _main_loop_one per turn; {REVISIT}"
    )


def test_h2_formats_every_received_frame_for_its_trace_log():
    # Why Frame.__repr__ is patched: h2 calls repr() on each frame before a no-op trace call.
    # If it stops doing so, the patch can go.
    source = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert "repr(frame)" in source, f"h2 no longer formats each frame; {REVISIT}"
    assert "__repr__" in vars(hyperframe.frame.Frame), REVISIT
    assert not any(
        "__repr__" in vars(frame_type)
        for frame_type in vars(hyperframe.frame).values()
        if isinstance(frame_type, type)
        and issubclass(frame_type, hyperframe.frame.Frame)
        and frame_type is not hyperframe.frame.Frame
    ), f"a frame type has its own __repr__, which the patch would not reach; {REVISIT}"


def patched_now() -> list[object]:
    return [vars(owner)[name] for owner, name, _ in _compat._PATCHES]


async def test_patches_last_only_while_a_loop_is_open_even_when_loops_overlap():
    before = patched_now()
    patched = [value for _, _, value in _compat._PATCHES]
    assert [
        asyncio.sslproto.SSLProtocol.max_size,
        h2.connection.H2Connection.MAX_CLOSED_STREAMS,
        hyperframe.frame.Frame.__repr__,
        asyncio.selector_events._SelectorSocketTransport._call_connection_lost,
    ] == before
    assert all(old != new for old, new in zip(before, patched, strict=True))
    first_open, first_close, second_close = trio.Event(), trio.Event(), trio.Event()
    seen = []

    async def first() -> None:
        async with open_loop():
            first_open.set()
            seen.append(patched_now())
            await first_close.wait()
        second_close.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await first_open.wait()
            async with open_loop():  # overlaps the first, and outlives it
                first_close.set()
                await second_close.wait()
                seen.append(patched_now())
                frame = hyperframe.frame.DataFrame(3, data=b"status", flags=["END_STREAM"])
                assert repr(frame) == "DataFrame(stream_id=3)"
    assert seen == [patched, patched]
    assert patched_now() == before
    assert "END_STREAM" in repr(hyperframe.frame.DataFrame(3, flags=["END_STREAM"]))


async def test_the_batching_goes_with_its_loop():
    async with open_loop() as loop:
        assert "_main_loop_one" in vars(loop), "set on the instance"
    async with trio_asyncio.open_loop() as plain:
        assert "_main_loop_one" not in vars(plain), "a plain loop is not batched"


def test_the_grpclib_internals_the_bridge_reads_are_where_it_reads_them():
    # Each accessor of _compat names a private attribute of grpclib 0.4.9; a renamed one would
    # fail at the first call, deep in a handler. Here it fails by name.
    import grpclib.client
    import grpclib.protocol
    import grpclib.server
    import grpclib.utils

    server_stream = inspect.getsource(grpclib.server.Stream)
    for name in (
        "self._stream",
        "self._codec",
        "self._send_type",
        "self._recv_type",
        "self._send_initial_metadata_done",
        "self._send_trailing_metadata_done",
    ):
        assert name in server_stream, f"grpclib.server.Stream has no {name}; {REVISIT}"
    h2_stream = inspect.getsource(grpclib.protocol.Stream)
    assert "self._transport" in h2_stream and "self.buffer" in h2_stream, REVISIT
    buffer = inspect.getsource(grpclib.protocol.Buffer)
    assert "self._acked_size" in buffer and "self._eof = True" in buffer, REVISIT
    assert "self._wrapper" in inspect.getsource(grpclib.client.Stream), REVISIT
    assert "self._error" in inspect.getsource(grpclib.utils.Wrapper), REVISIT
    assert "self._server" in inspect.getsource(grpclib.server.Server), REVISIT
