"""An HTTP/2 client that speaks frames directly (h2 over a trio socket, plain or TLS).

For what no gRPC client library sends: streams reset in the same write as their HEADERS, more
streams than the server allows, header blocks that never end, messages cut short. Tests drive
it step by step: queue frames with the `h2` connection, `flush()` them, `read()` what came
back. It acknowledges DATA it receives, so a server reply never stalls on flow control.
"""

from __future__ import annotations

import collections
import ssl
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio
from hyperframe.frame import ContinuationFrame, HeadersFrame

GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))


def prefix(length: int) -> bytes:
    """gRPC's 5-byte message prefix: not compressed, `length` bytes follow."""
    return struct.pack(">?I", False, length)


class RawH2:
    """One HTTP/2 connection to the scheduler; `open()` it, then queue, flush and read."""

    def __init__(self, stream: trio.abc.Stream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[h2.events.Event] = []  # everything the server sent, in order
        self.closed = False  # the server closed the connection
        self.send_failed = False  # a write found the connection closed

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext | None = None) -> RawH2:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if context is not None:
            stream = trio.SSLStream(stream, context, server_hostname="localhost")
            await stream.do_handshake()
        client = cls(stream, port)
        client.h2.initiate_connection()
        await client.flush()
        # The settings exchange first: nothing else may come between a header block's frames.
        await client.read(
            5,
            until=lambda events: any(
                isinstance(e, h2.events.RemoteSettingsChanged) for e in events
            ),
        )
        return client

    def request(self, path: str, *, end_stream: bool = False, extra=()) -> int:
        """Queue the HEADERS of a new gRPC call; return its stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{self.port}"),
                *GRPC_HEADERS,
                *extra,
            ],
            end_stream=end_stream,
        )
        return stream_id

    def ignore_stream_limit(self) -> None:
        """Let this client open more streams than the server allows (h2 would refuse to)."""
        from h2.settings import SettingCodes

        self.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
            [2**31 - 1]
        )

    def raw_frames(self, *frames) -> None:
        """Queue hyperframe frames as they are (h2 would refuse to build them)."""
        self.h2._data_to_send += b"".join(frame.serialize() for frame in frames)

    def open_header_block(self, path: str, continuations: int, chunk: int = 1024) -> int:
        """Queue HEADERS without END_HEADERS, then `continuations` CONTINUATION frames of
        `chunk` padding bytes each, none ending the block: a header block that never ends."""
        stream_id = self.h2.get_next_available_stream_id()
        block = self.h2.encoder.encode([(":method", "POST"), (":path", path)])
        self.h2.highest_outbound_stream_id = stream_id  # the stream is h2's no longer
        headers = HeadersFrame(stream_id, block)
        frames = [headers] + [
            ContinuationFrame(stream_id, b"\x40\x01x\x00" * (chunk // 4))
            for _ in range(continuations)
        ]
        self.raw_frames(*frames)
        return stream_id

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed and not self.send_failed:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_failed = True

    async def read(self, seconds: float, until=None) -> list[h2.events.Event]:
        """Read for up to `seconds` (or until `until(events so far)` is true, or the server
        closes); return the events that arrived."""
        start = len(self.events)
        with trio.move_on_after(seconds):
            while not self.closed and not (until and until(self.events[start:])):
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
                    data = b""
                if not data:
                    self.closed = True
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    events = []
                for event in events:
                    if isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.events.extend(events)
                await self.flush()
        return self.events[start:]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    def resets(self, code: h2.errors.ErrorCodes | None = None) -> list[int]:
        """Stream ids the server reset (with `code`, if given)."""
        return [
            e.stream_id
            for e in self.events
            if isinstance(e, h2.events.StreamReset) and (code is None or e.error_code == code)
        ]

    def header(self, stream_id: int, name: str) -> str | None:
        """A response header or trailer the server sent on a stream (the first seen)."""
        for event in self.events:
            if (
                isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                and event.stream_id == stream_id
                and name in dict(event.headers)
            ):
                return dict(event.headers)[name]
        return None

    def status(self, stream_id: int) -> str | None:
        """The grpc-status the server sent on a stream, if any."""
        return self.header(stream_id, "grpc-status")

    def message(self, stream_id: int) -> str:
        return self.header(stream_id, "grpc-message") or ""

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()
