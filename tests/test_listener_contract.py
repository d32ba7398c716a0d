"""What scheduler/grpc_listener.py and grpc_bridge.py assume of grpclib, h2, trio-asyncio and
asyncio: each test fails loudly, naming the code to revisit, if an upgrade changes it.

grpclib is pinned (==0.4.9), h2 to 4.x, trio-asyncio to 0.16 (pyproject.toml). These tests
check the libraries themselves, in memory where possible; tests/test_listener.py checks the
scheduler's behaviour over sockets.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import asyncio.sslproto
import asyncio.trsock
import inspect

import grpclib
import h2
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import trio_asyncio
from grpclib.protocol import Buffer, H2Protocol

from scheduler.grpc_listener import _H2Connection
from tests.raw_h2 import GRPC_HEADERS

REVISIT = "revisit scheduler/grpc_listener.py"


def test_pinned_versions():
    assert grpclib.__version__ == "0.4.9", (
        f"grpclib {grpclib.__version__}: grpc_listener subclasses its protocol, handler, "
        f"events and connection and copies H2Protocol.connection_made; {REVISIT} and this file"
    )
    assert h2.__version__.startswith("4."), f"h2 {h2.__version__}: {REVISIT}"
    assert trio_asyncio.__version__.startswith("0.16"), (
        f"trio-asyncio {trio_asyncio.__version__}: _compat.run_callbacks_in_batches "
        "relies on its internals"
    )


# -- h2 ------------------------------------------------------------------------------------------


def pair(server_class=h2.connection.H2Connection):
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = server_class(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = __import__(
        "collections"
    ).deque([2**31 - 1])
    return client, server


def request(client, number: int) -> None:
    stream_id = client.get_next_available_stream_id()
    client.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"/svc/M{number}"),
            (":authority", "x"),
            ("x-same", "v" * 100),
            *GRPC_HEADERS,
        ],
    )


def test_h2_treats_one_stream_too_many_as_a_connection_error():
    client, server = pair()
    for number in range(101):
        request(client, number)
    try:
        server.receive_data(client.data_to_send())
    except h2.exceptions.TooManyStreamsError:
        return
    raise AssertionError(
        f"h2 no longer refuses the 101st stream with TooManyStreamsError: "
        f"_H2Connection's REFUSED_STREAM override may go; {REVISIT}"
    )


def test_the_refused_stream_keeps_the_connection_and_its_hpack_state():
    client, server = pair(_H2Connection)
    for number in range(101):
        request(client, number)
    events = server.receive_data(client.data_to_send())
    requests = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert len(requests) == 100
    answer = client.receive_data(server.data_to_send())
    refused = [
        e.stream_id
        for e in answer
        if isinstance(e, h2.events.StreamReset)
        and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    ]
    assert refused == [201], answer
    server.reset_stream(1)  # room for one more: it must decode with the shared HPACK table
    client.receive_data(server.data_to_send())
    request(client, 999)
    events = server.receive_data(client.data_to_send())
    received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert len(received) == 1 and (b":path", b"/svc/M999") in received[0].headers, events


def test_h2_buffers_an_incomplete_header_block_in_its_frame_buffer():
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    client, server = pair()
    frames = [HeadersFrame(1, b"\x82"), ContinuationFrame(1, b"\x84")]
    server.receive_data(b"".join(frame.serialize() for frame in frames))
    pending = server.incoming_buffer._headers_buffer
    assert [len(frame.data) for frame in pending] == [1, 1], (
        f"h2 keeps incomplete header blocks elsewhere: _Http2._time_header_block reads "
        f"incoming_buffer._headers_buffer; {REVISIT}"
    )


def test_h2_queues_a_goaway_when_it_raises_a_protocol_error():
    client, server = pair()
    server.data_to_send()
    try:
        server.receive_data(b"\x00\x00\x01\x09\x00\x00\x00\x00\x05x")  # CONTINUATION, no block
    except h2.exceptions.ProtocolError:
        pass
    goaway = server.data_to_send()
    events = client.receive_data(goaway)
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events), (
        f"h2 no longer prepares a GOAWAY before raising: _Http2.data_received flushes it; {REVISIT}"
    )


# -- grpclib ---------------------------------------------------------------------------------------


async def test_grpclib_still_closes_a_protocol_error_without_sending_its_goaway():
    # Why _Http2.data_received is ours: grpclib's drops the GOAWAY h2 queued.
    source = inspect.getsource(H2Protocol.data_received)
    assert "except ProtocolError" in source and "self.processor.close" in source
    flushed_first = (
        source.index("self.processor.close") > source.index("except ProtocolError")
        and "flush"
        in source[source.index("except ProtocolError") : source.index("self.processor.close")]
    )
    assert not flushed_first, (
        f"grpclib now flushes the GOAWAY itself: _Http2.data_received may defer to it; {REVISIT}"
    )


async def test_grpclib_buffers_acknowledge_data_as_a_reader_takes_it():
    # read_body's hot path reads Buffer._acked_size; bytes_held() in the tests reads _unacked.
    async with trio_asyncio.open_loop() as loop:
        acked: list[int] = []

        async def scenario() -> tuple[int, int]:
            buffer = Buffer(acked.append)
            buffer.add(b"12345abc", 8)
            first = await buffer.read(5)
            assert first == b"12345"
            return buffer._acked_size, sum(item.data_size for item in buffer._unacked._queue)

        held, unacked = await loop.run_aio_coroutine(scenario())
    assert (held, unacked, acked) == (3, 0, [8]), (
        f"grpclib's Buffer changed: {held=} {unacked=} {acked=}; read_body and the tests' "
        f"bytes_held() rely on it; {REVISIT}"
    )


async def test_grpclib_releases_streams_only_in_the_handler_tasks_finally():
    # The upstream Rapid Reset leak (see the bug report in the issue-13 notes): a handler task
    # cancelled before it starts never runs request_handler's `finally: release_stream()`.
    from grpclib.server import request_handler

    source = inspect.getsource(request_handler)
    assert "finally:\n        release_stream()" in source, (
        f"grpclib's request_handler releases streams differently now; _Handler's release on "
        f"task completion may be unneeded; {REVISIT}"
    )


# -- asyncio, trio-asyncio ------------------------------------------------------------------------


def test_asyncio_accept_internals_the_listener_uses():
    # Listener._accept replaces asyncio's accept loop and hands sockets to _accept_connection2.
    handover = inspect.signature(asyncio.selector_events.BaseSelectorEventLoop._accept_connection2)
    assert list(handover.parameters)[:6] == [
        "self",
        "protocol_factory",
        "conn",
        "extra",
        "sslcontext",
        "server",
    ], f"asyncio's _accept_connection2 changed ({handover}): Listener._accept calls it; {REVISIT}"
    assert "_sock" in inspect.getsource(asyncio.trsock.TransportSocket.__init__), (
        f"asyncio's TransportSocket no longer wraps _sock: Listener.serve reads it; {REVISIT}"
    )


def test_asyncio_ssl_protocol_internals_the_listener_uses():
    for name in ("_on_handshake_complete", "_sslobj", "_transport", "_app_protocol"):
        assert name in inspect.getsource(asyncio.sslproto.SSLProtocol), (
            f"asyncio.sslproto.SSLProtocol has no {name}: _Tls relies on it; {REVISIT}"
        )


def test_a_connection_remembers_as_many_closed_streams_as_it_is_told():
    # `_H2Connection.remember_closed_streams` sets the limit of h2's SizeLimitDict per
    # connection; h2 reads it at every insertion and forgets the oldest beyond it.
    connection = _H2Connection(h2.config.H2Configuration(client_side=False))
    connection.remember_closed_streams(3)
    for stream_id in range(1, 20, 2):
        connection._closed_streams[stream_id] = h2.stream.StreamClosedBy.SEND_END_STREAM
    assert list(connection._closed_streams) == [15, 17, 19], REVISIT
