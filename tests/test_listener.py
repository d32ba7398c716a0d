"""What one client can make the gRPC listener hold (issue 13), over real sockets on 127.0.0.1.

Each test replays one attack with a raw HTTP/2 client (`tests/raw_h2.py`) and checks the bound
named in docs/DECISIONS.md, and that the listener keeps serving everyone else. Server-side
figures are read from grpclib's own objects (its per-connection `EventsProcessor` and the
buffers of its streams), so a test measures what the process really holds.
"""

from __future__ import annotations

import asyncio.selector_events
import asyncio.sslproto
import contextlib
import gc
import logging
import os
import resource
import subprocess
import sys

import h2.errors
import h2.events
import pytest
import trio
from grpclib.exceptions import GRPCError
from grpclib.protocol import EventsProcessor

from scheduler._proto import agent_pb2, controller_pb2
from scheduler.grpc_listener import _Handler as ListenerHandler
from tests.conftest import make_config, running_scheduler
from tests.fakes import FakeAgent, FakeController, open_channel, wait_until
from tests.raw_h2 import RawH2, prefix
from tests.test_tls_api import (
    Pki,
    bad_client_ctx,
    client_ctx,
    connect,
    make_pki,
    raw_connection,
    tls_scheduler,
)

JOIN = "/scheduler.agent.LifecycleService/JoinCluster"
STATUS = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
LIST = "/scheduler.controller.ClusterService/ListNodes"
WATCH = "/scheduler.controller.ClusterService/WatchEvents"
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
OK, DEADLINE_EXCEEDED = "0", "4"
CONCURRENT_STREAMS = 100  # what the scheduler advertises to Agents (h2's default)


def server_connections() -> list[EventsProcessor]:
    """grpclib's per-connection event processors of the scheduler's listener(s) in this process
    (fake Agents are plain grpclib servers: an earlier test's may linger; they do not count)."""
    return [
        p
        for p in gc.get_objects()
        if isinstance(p, EventsProcessor)
        and isinstance(p.handler, ListenerHandler)
        and hasattr(p, "processors")
    ]


def streams_held() -> int:
    return sum(len(p.streams) for p in server_connections())


def bytes_held() -> int:
    """Request bytes the server's streams hold: taken for a message and not yet handed over
    (acknowledged), plus received and not yet taken (unacknowledged)."""
    total = 0
    for processor in server_connections():
        for stream in processor.streams.values():
            buffer = stream.buffer
            total += buffer._acked_size + sum(item.data_size for item in buffer._unacked._queue)
    return total


async def list_nodes_works(port: int) -> None:
    async with open_channel(port) as channel:
        nodes = await FakeController(channel).list_nodes()
    assert isinstance(nodes, list)


def message(request) -> bytes:
    body = request.SerializeToString()
    return prefix(len(body)) + body


# -- 1. HTTP/2 Rapid Reset (CVE-2023-44487) -----------------------------------------------------


async def test_streams_reset_in_the_same_write_as_their_headers_are_released():
    # grpclib registers a stream when its HEADERS arrive and releases it in the handler task's
    # `finally`; a RST_STREAM read together with the HEADERS cancels that task before it ever
    # runs, and the stream (~7.5 KB) stayed registered for as long as the connection lived.
    async with running_scheduler() as scheduler:
        client = await RawH2.open(scheduler.port)
        for _ in range(50):  # well within the reset budget
            client.h2.reset_stream(client.request(JOIN), h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        await client.read(0.5)
        assert not client.closed and client.goaway() is None
        assert len(server_connections()) == 1
        assert streams_held() == 0, "every reset stream must be released"
        await client.aclose()


async def test_a_connection_resetting_unanswered_streams_beyond_its_budget_gets_goaway():
    # The anchors (nghttp2, Go's x/net, grpc-go) answer a reset flood with a budget per
    # connection, then GOAWAY(ENHANCE_YOUR_CALM).
    async with running_scheduler() as scheduler:
        client = await RawH2.open(scheduler.port)
        for _ in range(1000):
            client.h2.reset_stream(client.request(JOIN), h2.errors.ErrorCodes.CANCEL)
        await client.flush()  # one write: the server reads it whole, then closes cleanly
        await client.read(3, until=lambda _: client.goaway() is not None)
        goaway = client.goaway()
        assert goaway is not None, "1,000 resets in a row must end the connection"
        assert goaway.error_code == CALM, goaway
        assert b"reset" in (goaway.additional_data or b""), goaway
        assert goaway.last_stream_id < 2 * 300, "the budget is far below 1,000 resets"
        await client.read(2)
        assert client.closed
        assert streams_held() == 0
        await list_nodes_works(scheduler.port)  # everyone else is served


async def test_calls_cancelled_after_their_answer_do_not_count_as_rapid_resets():
    # A Controller that hangs up on a Schedule or a watch once it got what it wanted resets an
    # answered stream: legitimate, however often it happens.
    async with running_scheduler() as scheduler:
        client = await RawH2.open(scheduler.port)
        for _ in range(300):
            stream_id = client.request(WATCH)
            client.h2.send_data(stream_id, message(controller_pb2.WatchRequest()), end_stream=True)
            await client.flush()
            await client.read(
                2,
                until=lambda events, stream_id=stream_id: any(
                    isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
                    for e in events
                ),
            )
            client.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        await client.read(0.3)
        assert client.goaway() is None and not client.closed
        await client.aclose()


# -- 6. streams beyond the limit, header-limit violations -----------------------------------------


async def test_a_stream_beyond_the_concurrent_limit_is_refused_alone():
    # RFC 9113 §5.1.2: a stream error (REFUSED_STREAM), not the whole connection. (A plaintext
    # peer could be a Controller and gets `controller_streams`; here set to the Agents' 100.)
    config = make_config(server={"controller_streams": CONCURRENT_STREAMS})
    async with running_scheduler(config) as scheduler:
        client = await RawH2.open(scheduler.port)
        client.ignore_stream_limit()
        streams = [client.request(STATUS) for _ in range(CONCURRENT_STREAMS)]
        await client.flush()
        await client.read(0.3)
        extra = client.request(STATUS)
        await client.flush()
        await client.read(2, until=lambda _: extra in client.resets())
        assert client.resets(h2.errors.ErrorCodes.REFUSED_STREAM) == [extra]
        assert client.goaway() is None and not client.closed
        client.h2.reset_stream(streams[0], h2.errors.ErrorCodes.CANCEL)  # room for one more
        listed = client.request(LIST)
        client.h2.send_data(listed, message(agent_pb2.Empty()), end_stream=True)
        await client.flush()
        await client.read(3, until=lambda _: client.status(listed) is not None)
        assert client.status(listed) == OK, client.events[-5:]
        await client.aclose()


async def advertised_streams(port: int, context=None) -> int:
    """The concurrent-stream limit the scheduler advertises on a new connection."""
    client = await RawH2.open(port, context)
    await client.read(0.3)  # a limit other than the default comes in a second SETTINGS frame
    limit = client.h2.remote_settings.max_concurrent_streams
    await client.aclose()
    return limit


async def test_controllers_may_hold_many_calls_agents_the_usual_hundred(pki):
    # A Controller keeps one Schedule stream open per instance it placed: at HTTP/2's usual
    # 100, its 101st Schedule would wait silently for one of the first hundred to end.
    async with tls_scheduler(pki, server={"controller_streams": 5_000}) as scheduler:
        controller = client_ctx(pki, pki.controller)
        agent = client_ctx(pki, pki.agent("node-1"))
        assert await advertised_streams(scheduler.port, controller) == 5_000
        assert await advertised_streams(scheduler.port, agent) == CONCURRENT_STREAMS


async def test_a_connections_settings_are_compact_and_changed_settings_acknowledged():
    # h2 keeps each setting's values in a deque (~770 bytes; ~11 KiB of every Agent's
    # connection); the listener's are lists that behave the same.
    from scheduler.grpc_listener import _SettingValues

    config = make_config(server={"controller_streams": 5_000})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        await FakeController(channel).list_nodes()  # the peer is known: the limit is changed
        await FakeController(channel).list_nodes()  # and acknowledged by now
        [processor] = server_connections()
        h2_connection = processor.connection._connection
        local, remote = h2_connection.local_settings, h2_connection.remote_settings
        assert local.max_concurrent_streams == 5_000
        for settings in (local, remote):
            assert all(
                type(values) is _SettingValues and len(values) == 1
                for values in settings._settings.values()
            ), settings._settings


async def test_a_plaintext_controller_holds_more_calls_than_the_usual_hundred():
    watches = CONCURRENT_STREAMS + 50
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)  # one connection for every watch
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(controller.watch()) for _ in range(watches)]
            for events in streams:  # each watch is served: its snapshot arrives
                first = await events.receive()
                assert not isinstance(first, Exception), first
                assert first.WhichOneof("event") == "snapshot"
            assert len(server_connections()) == 1


async def test_a_header_list_over_the_limit_gets_goaway_before_the_close():
    # 20 copies of a 4 KB header: HPACK's dynamic table sends each copy as one byte, so the
    # block is small but decodes to ~80 KB, over the 64 KiB the scheduler advertises.
    async with running_scheduler() as scheduler:
        client = await RawH2.open(scheduler.port)
        client.request(LIST, extra=[("x-big", "a" * 4000)] * 20)
        await client.flush()
        await client.read(3)
        assert client.closed
        goaway = client.goaway()
        assert goaway is not None, "a connection error is announced with GOAWAY (RFC 9113 §5.4.1)"
        assert goaway.error_code == CALM, goaway
        await list_nodes_works(scheduler.port)


# -- 2. what a connection may hold: header blocks, messages -----------------------------------


async def test_a_header_block_that_never_ends_is_closed_after_the_message_timeout():
    config = make_config(server={"message_timeout": 1.0})
    async with running_scheduler(config) as scheduler:
        client = await RawH2.open(scheduler.port)
        client.open_header_block(LIST, continuations=3)
        await client.flush()
        await client.read(0.5)
        assert not client.closed, "still within the time limit"
        await client.read(2.5)
        assert client.closed, "an incomplete header block must not be kept"
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == CALM, goaway
        await list_nodes_works(scheduler.port)


async def test_a_header_block_larger_than_the_limit_is_closed_at_once():
    # h2 buffers up to 64 CONTINUATION frames of up to 16 KiB each (1 MiB) before decoding.
    async with running_scheduler() as scheduler:
        client = await RawH2.open(scheduler.port)
        client.open_header_block(LIST, continuations=8, chunk=16 * 1024)  # 128 KiB
        await client.flush()
        await client.read(2)
        assert client.closed
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == CALM, goaway


async def test_a_message_cut_short_without_end_stream_is_answered_within_the_timeout():
    config = make_config(server={"message_timeout": 1.0})
    async with running_scheduler(config) as scheduler:
        client = await RawH2.open(scheduler.port)
        cut = {}
        for path in (JOIN, STATUS):  # unary and client-streaming requests
            cut[path] = client.request(path)
            client.h2.send_data(cut[path], prefix(100) + b"\x0a\x02ab")
        silent = client.request(JOIN)  # a unary call that never sends its request
        await client.flush()
        started = trio.current_time()
        await client.read(
            4, until=lambda _: all(client.status(s) is not None for s in (*cut.values(), silent))
        )
        assert trio.current_time() - started < 3
        for stream_id in (*cut.values(), silent):
            assert client.status(stream_id) == DEADLINE_EXCEEDED, client.events
            assert "server.message_timeout" in client.message(stream_id)
        assert streams_held() == 0
        await client.aclose()


async def test_incomplete_messages_of_one_connection_hold_at_most_its_buffer():
    # 20 streams each announce a message of the maximal size and send all of it but one byte.
    limit = 256 * 1024
    config = make_config(server={"max_message_bytes": limit, "message_timeout": 30.0})
    async with running_scheduler(config) as scheduler:
        client = await RawH2.open(scheduler.port)
        streams = [client.request(JOIN) for _ in range(20)]
        left = {stream_id: prefix(limit) + b"x" * (limit - 1) for stream_id in streams}
        quiet = 0
        while left and quiet < 3:  # send what flow control allows until nothing moves
            moved = False
            for stream_id, data in list(left.items()):
                room = min(
                    client.h2.local_flow_control_window(stream_id),
                    client.h2.max_outbound_frame_size,
                    len(data),
                )
                if room > 0:
                    client.h2.send_data(stream_id, data[:room])
                    left[stream_id] = data[room:]
                    moved = True
                    if not left[stream_id]:
                        del left[stream_id]
            await client.flush()
            await client.read(0.2)
            quiet = 0 if moved else quiet + 1
        held = bytes_held()
        bound = limit + 1024 * 1024 + 20 * 16 * 1024  # buffer + window + a frame per stream
        assert held <= bound, f"{held} bytes held by one connection; bound {bound}"
        assert left, "flow control must have stopped the client"
        await client.aclose()
        await trio.sleep(0.2)
        assert bytes_held() == 0


# -- 3. handshakes and connections ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("listener"))


def tls_objects() -> list:
    return [o for o in gc.get_objects() if isinstance(o, asyncio.sslproto.SSLProtocol)]


async def test_a_client_that_never_completes_its_handshake_is_closed_after_the_timeout(pki):
    async with tls_scheduler(pki, server={"handshake_timeout": 1.0}) as scheduler:
        silent = await trio.open_tcp_stream("127.0.0.1", scheduler.port)
        started = trio.current_time()
        with trio.move_on_after(5):
            assert await silent.receive_some(1024) == b"", "closed, never answered"
        assert trio.current_time() - started < 2.5, "asyncio's default is 60 s"
        await silent.aclose()
        stats = scheduler.bridge.listener.statistics()
        assert stats["pending_handshakes"] == 0


async def test_nothing_is_kept_after_a_failed_handshake(pki, caplog):
    # asyncio keeps a failed handshake's protocol, SSL object and buffers in reference cycles
    # (~70 KB) until a full collection, and grpclib made a Handler per accepted socket that it
    # forgot only once the connection was made and lost: never, after a failed handshake.
    async with tls_scheduler(pki) as scheduler:
        server = scheduler.bridge.listener._server
        handlers = len(server._handlers)
        bad = bad_client_ctx(pki, "another CA")
        gc.collect()
        gc.disable()  # what is left now stays until this test looks
        try:
            for _ in range(20):
                outcome = await trio.to_thread.run_sync(raw_connection, scheduler.port, bad)
                assert outcome == "closed after handshake", outcome
                plain = await trio.open_tcp_stream("127.0.0.1", scheduler.port)
                await plain.send_all(b"GET / HTTP/1.1\r\n\r\n")  # not TLS at all
                assert await plain.receive_some(1024) == b""
                await plain.aclose()
                gone = await trio.open_tcp_stream("127.0.0.1", scheduler.port)
                await gone.aclose()  # hangs up before its ClientHello (asyncio: an EOF)
            await trio.sleep(0.3)
            assert tls_objects() == [], "a failed handshake left its protocol behind"
            transports = [
                o
                for o in gc.get_objects()
                if isinstance(o, asyncio.selector_events._SelectorSocketTransport)
            ]
            assert transports == [], "a closed connection left its socket transport behind"
            assert len(server._handlers) == handlers, "a failed handshake left a grpclib Handler"
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == [], errors[:3]
        finally:
            gc.enable()


async def test_an_ended_call_leaves_nothing_for_the_garbage_collector():
    # Every way a call ends left it in a reference cycle until a full collection, which the
    # scheduler's GC thresholds make rare: trio-asyncio's wrapper of each call's future (a
    # call answered), the error's traceback holding the frames that hold the future (a call
    # refused), grpclib's Wrapper keeping the error that cancelled the call (a call the client
    # reset, with the messages read ahead for it: +100 MB under bench/attacks.py unknown_flood).
    from scheduler._proto import agent_pb2
    from scheduler.grpc_bridge import Call
    from tests.fakes import FakeAgent, drop_stream, saved_cycles, status

    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller, agent = FakeController(channel), FakeAgent(channel, "node-1")
        await controller.list_nodes()
        await agent.join()
        async with saved_cycles(0.2) as found:
            for _ in range(10):
                await controller.list_nodes()  # answered
                with pytest.raises(GRPCError):
                    await agent.join("Not A Node Id!")  # refused
                stream = await agent.report()  # reset by the client after two statuses
                await stream.send(status("node-1"))
                await trio.sleep(0.05)
                await drop_stream(stream)
        calls = [o for o in found if isinstance(o, Call)]
        statuses = [o for o in found if isinstance(o, agent_pb2.NodeStatus)]
        assert calls == [] and statuses == [], (
            f"{len(calls)} ended calls and {len(statuses)} statuses left in reference cycles"
        )


async def test_at_the_connection_limit_a_new_client_closes_the_oldest_handshake(pki):
    async with tls_scheduler(pki, server={"max_connections": 16}) as scheduler:
        listener = scheduler.bridge.listener
        squatters = [await trio.open_tcp_stream("127.0.0.1", scheduler.port) for _ in range(16)]
        await wait_until(lambda: listener.statistics()["pending_handshakes"] == 16)
        async with connect(scheduler.port, client_ctx(pki, pki.controller)) as channel:
            assert await FakeController(channel).list_nodes() == []
        assert listener.statistics()["closed_handshakes"] >= 1
        assert await squatters[0].receive_some(1024) == b"", "the oldest squatter was closed"
        for squatter in squatters:
            await squatter.aclose()


async def test_at_most_so_many_handshakes_are_pending_the_oldest_closed_first(pki, monkeypatch):
    import scheduler.grpc_listener as listener_module

    monkeypatch.setattr(listener_module, "PENDING_HANDSHAKES", 4)
    async with tls_scheduler(pki) as scheduler:
        listener = scheduler.bridge.listener
        squatters = [await trio.open_tcp_stream("127.0.0.1", scheduler.port) for _ in range(6)]
        await wait_until(lambda: listener.statistics()["closed_handshakes"] == 2)
        assert listener.statistics()["pending_handshakes"] == 4
        for squatter in squatters[:2]:
            assert await squatter.receive_some(1024) == b"", "the oldest two were closed"
        async with connect(scheduler.port, client_ctx(pki, pki.controller)) as channel:
            assert await FakeController(channel).list_nodes() == []
        for squatter in squatters:
            await squatter.aclose()


async def test_one_agent_holds_at_most_a_few_connections(pki):
    from scheduler.grpc_listener import AGENT_CONNECTIONS

    async with tls_scheduler(pki) as scheduler:
        context = client_ctx(pki, pki.agent("node-1"))
        clients = []
        for _ in range(AGENT_CONNECTIONS + 2):
            client = await RawH2.open(scheduler.port, context)
            client.request(STATUS)  # a call open: the connection is not idle
            await client.flush()
            clients.append(client)
        for client in clients:
            await client.read(0.3)
        closed = [c for c in clients if c.closed]
        assert closed == clients[:2], "the oldest ones make room"
        assert all(c.goaway().error_code == CALM for c in closed)
        assert b"connections of this Agent" in closed[0].goaway().additional_data
        other = await RawH2.open(scheduler.port, client_ctx(pki, pki.agent("node-2")))
        await other.read(0.3)
        assert not other.closed, "another Agent is not affected"
        for client in (*clients, other):
            await client.aclose()


async def test_at_the_limit_with_every_connection_busy_a_new_one_is_refused(caplog):
    config = make_config(server={"max_connections": 16})
    async with running_scheduler(config) as scheduler:
        busy = []
        for _ in range(16):
            client = await RawH2.open(scheduler.port)
            client.request(STATUS)
            await client.flush()
            busy.append(client)
        await trio.sleep(0.2)
        caplog.clear()
        for _ in range(10):
            late = await RawH2.open(scheduler.port)
            await late.read(1, until=lambda _, late=late: late.closed)
            assert late.closed and late.goaway().error_code == CALM
            await late.aclose()
        assert scheduler.bridge.listener.statistics()["refused"] == 10
        lines = [r for r in caplog.records if "refused a new one" in r.getMessage()]
        assert len(lines) == 1, "one line, rate-limited, not one per refusal"
        from tests.test_operations import metric, scrape

        samples = await scrape(scheduler)
        assert metric(samples, "orka_scheduler_connections_ended_total", reason="refused") == 10
        assert metric(samples, "orka_scheduler_connections", state="open") == 16
        assert metric(samples, "orka_scheduler_connections_limit") == 16
        assert all(not client.closed for client in busy)
        for client in busy:
            await client.aclose()


async def test_an_address_opening_connections_too_fast_is_refused_before_tls(caplog):
    # A reconnect flood is a handshake flood: ~2 ms of the scheduler's CPU each. Refused at
    # accept() it costs next to nothing; the scheduler's own host is not limited.
    config = make_config(server={"connection_rate_per_ip": 2.0})  # bursts of 8
    async with running_scheduler(config) as scheduler:

        async def served(local: str) -> bool:
            stream = await trio.open_tcp_stream("127.0.0.1", scheduler.port, local_address=local)
            try:
                with trio.move_on_after(2):
                    return await stream.receive_some(1024) != b""  # the server's SETTINGS
                return False
            finally:
                await stream.aclose()

        remote = [await served("127.0.0.2") for _ in range(20)]
        assert remote[:8] == [True] * 8 and remote.count(True) <= 9, remote
        assert all([await served("127.0.0.1") for _ in range(20)]), "local peers: no limit"
        lines = [r for r in caplog.records if "connection_rate_per_ip" in r.getMessage()]
        assert len(lines) == 1 and "127.0.0.2" in lines[0].getMessage()
        assert scheduler.bridge.listener.statistics()["refused_rate"] >= 11


async def test_the_addresses_whose_rate_is_tracked_are_bounded(monkeypatch):
    import scheduler.grpc_listener as listener_module

    monkeypatch.setattr(listener_module, "PEERS_REMEMBERED", 3)
    async with running_scheduler() as scheduler:
        for last in range(2, 8):
            stream = await trio.open_tcp_stream(
                "127.0.0.1", scheduler.port, local_address=f"127.0.0.{last}"
            )
            await stream.aclose()
        peers = scheduler.bridge.listener._peers
        await wait_until(lambda: "127.0.0.7" in peers)
        assert list(peers) == ["127.0.0.5", "127.0.0.6", "127.0.0.7"], "the idlest forgotten"


async def test_out_of_descriptors_accept_logs_one_line_and_recovers(caplog):
    # asyncio's accept loop went on after EMFILE up to its backlog (4,096) times per wake-up,
    # each with a traceback: thousands of lines a second, and every new client locked out.
    async with running_scheduler() as scheduler:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
        script = (
            f"import socket, time\n"
            f"s = [socket.create_connection(('127.0.0.1', {scheduler.port})) "
            f"for _ in range(20)]\ntime.sleep(4)\n"
        )
        caplog.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 5, hard))
        try:
            clients = subprocess.Popen([sys.executable, "-c", script])
            await trio.sleep(2.5)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records][:5]
        assert not any(r.exc_info for r in caplog.records), "no tracebacks"
        await list_nodes_works(scheduler.port)  # accepting again
        clients.kill()
        clients.wait()


# -- 6. refusals are logged -----------------------------------------------------------------------


async def test_refusals_are_logged_rate_limited_with_peer_and_identity(pki, caplog):
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.agent("node-1"))) as agent,
        connect(scheduler.port, client_ctx(pki, pki.no_uri)) as nobody,
    ):
        caplog.clear()
        for _ in range(30):
            with pytest.raises(GRPCError):
                await FakeController(agent).list_nodes()
            with pytest.raises(GRPCError):
                await FakeAgent(agent, "node-1").join("node-2")
            with pytest.raises(GRPCError):
                await FakeAgent(nobody, "node-1").join()
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
        assert len(lines) == 3, lines  # one per peer and identity, and per kind of refusal
        denied = [line for line in lines if "PERMISSION_DENIED" in line]
        assert any(
            "ListNodes from 127.0.0.1" in line and "agent 'node-1'" in line for line in denied
        ), denied
        assert any("JoinCluster from 127.0.0.1 (agent 'node-1')" in line for line in denied)
        unauthenticated = [line for line in lines if "UNAUTHENTICATED" in line]
        assert unauthenticated and "no URI SAN" in unauthenticated[0]
        assert not scheduler.cluster.nodes


async def test_messages_waiting_for_a_throttled_handler_are_bounded_in_bytes():
    # The pump reads a request stream ahead of its handler into a buffer of 64 messages: with
    # messages of up to 4 MiB, a throttled status stream could hold 256 MiB decoded.
    from scheduler.grpc_bridge import INBOX_BYTES, Inbound
    from tests.fakes import FakeAgent, status

    config = make_config(liveness={"status_rate": 0.5, "status_burst": 1})
    big = status("node-1", instances=[(f"run-{i:05d}", 1) for i in range(3000)])
    size = big.ByteSize()
    assert 20_000 < size < INBOX_BYTES / 4
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        agent = FakeAgent(channel, "node-1")
        await agent.join()
        stream = await agent.report()

        async def flood() -> None:
            for _ in range(60):
                await stream.send(big)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.sleep(2)
            waiting = [len(inbox) for inbox in gc.get_objects() if isinstance(inbox, Inbound)]
            assert waiting and max(waiting) * size <= INBOX_BYTES + size, (waiting, size)
            nursery.cancel_scope.cancel()
        channel.close()  # the stream is stalled by flow control: hang up the connection
