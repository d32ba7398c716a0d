"""SPEC §3 end to end: the scheduler's one TLS listener and its calls to Agents, over real mTLS
sockets on 127.0.0.1 with grpclib clients (the official grpcio client: test_tls_grpcio.py).

Certificates come from a development PKI (`init_pki`); bad ones (another CA, expired, no URI
SAN, another node's) are built with cryptography directly. Every test runs a real scheduler
(`scheduler.app.serve`, wired by `tls_setup.server_tls` like `orka-scheduler serve`) and a
`fail_after` guard, and checks that the legitimate clients are unaffected by the refused ones.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import socket
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from scheduler import security
from scheduler._proto import controller_grpc, controller_pb2
from scheduler.app import serve
from scheduler.pki import CertPair, PkiPaths, init_pki
from scheduler.security import client_ssl_context, server_ssl_context
from scheduler.tls_setup import server_tls
from tests.conftest import IO_GUARD, make_config
from tests.fakes import (
    FakeAgent,
    FakeController,
    RecordingWorkloadAgent,
    aio,
    drop_stream,
    event_kind,
    make_channel,
    open_schedule,
    scheduling_request,
    status,
    stop_instance,
    wait_event,
    wait_until,
)

TD = "orka.local"
HANDSHAKE_TIMEOUT = 5.0  # s: a loopback handshake takes milliseconds; a hang must fail, not stall
# What a grpclib client sees when the server aborts the connection during or right after the
# handshake (TLS 1.3: the client finishes first and learns of the refusal on its first read).
CONNECTION_FAILURES = (StreamTerminatedError, ConnectionError, ssl.SSLError, OSError)


# --- PKI ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """The cluster PKI and the bad certificates the tests present."""

    paths: PkiPaths
    other_ca: PkiPaths  # an unrelated CA in the same trust domain, with its own node-1
    expired: CertPair  # node-1's identity from the cluster CA, expired yesterday
    no_uri: CertPair  # from the cluster CA, valid, but with no URI SAN (no identity)

    @property
    def ca(self) -> Path:
        return self.paths.ca

    def agent(self, node_id: str) -> CertPair:
        return self.paths.agent(node_id)

    @property
    def controller(self) -> CertPair:
        return self.paths.controller("controller")

    @property
    def scheduler(self) -> CertPair:
        return self.paths.scheduler


def make_pki(directory: Path) -> Pki:
    paths = init_pki(directory / "pki", agents=("node-1", "node-2"), controllers=("controller",))
    other = init_pki(directory / "other", agents=("node-1",))
    bad = directory / "bad"
    return Pki(
        paths,
        other,
        expired=make_leaf(
            paths,
            bad / "expired",
            uri=f"spiffe://{TD}/agent/node-1",
            valid_from=-10,
            valid_until=-1,
        ),
        no_uri=make_leaf(paths, bad / "no-uri", uri=None, dns=("node-1",)),
    )


def make_leaf(
    ca_paths: PkiPaths,
    directory: Path,
    *,
    uri: str | None,
    dns=("localhost",),
    ips=("127.0.0.1",),
    valid_from: float = -1,
    valid_until: float = 1,
) -> CertPair:
    """A leaf (client and server usage) signed by `ca_paths`' CA; validity in days from now."""
    ca = x509.load_pem_x509_certificate(ca_paths.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_paths.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
    names += [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, directory.name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=valid_from))
        .not_valid_after(now + dt.timedelta(days=valid_until))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "leaf.pem", directory / "leaf.key")
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def serial_of(pair: CertPair) -> int:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number


def peer_serial(peercert: dict | None) -> int:
    """The serial number of a verified peer certificate as `getpeercert()` gives it."""
    assert peercert, "no verified peer certificate on this connection"
    return int(peercert["serialNumber"], 16)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


# --- SSL contexts for the clients --------------------------------------------------------------


def client_ctx(pki: Pki, pair: CertPair | None) -> ssl.SSLContext:
    """A client context trusting the cluster CA and presenting `pair` (None: no certificate)."""
    if pair is not None:
        return client_ssl_context(pki.ca, pair.cert, pair.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=pki.ca)
    context.set_alpn_protocols(["h2"])
    return context


def bad_client_ctx(pki: Pki, which: str) -> ssl.SSLContext:
    """Trusts the cluster CA (so only the server can refuse) but presents a bad certificate."""
    pair = {
        "no certificate": None,
        "another CA": pki.other_ca.agent("node-1"),
        "expired": pki.expired,
    }[which]
    return client_ctx(pki, pair)


def raw_connection(port: int, context: ssl.SSLContext) -> str:
    """Handshake with the scheduler on a plain blocking socket, then read its first bytes.

    "served": the server sent HTTP/2 bytes (it accepted us); "closed after handshake": our side
    of the handshake completed (we accepted the server's certificate) and then the server
    closed the connection (it refused ours: asyncio closes without sending the TLS alert);
    otherwise the TLS error our side saw. Blocking: run it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(HTTP2_PREFACE)
                try:
                    data = tls.recv(1024)
                except (ssl.SSLError, ConnectionError):
                    data = b""
        except ssl.SSLError as error:
            return f"handshake failed: {error}"
    return "served" if data else "closed after handshake"


# The client preface, then an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


# --- a scheduler over TLS, and Agents that serve WorkloadService over TLS ----------------------


@asynccontextmanager
async def tls_scheduler(pki: Pki, **sections):
    """A scheduler wired as `orka-scheduler serve` wires it (server_tls), on 127.0.0.1:0.

    Unlike conftest's `running_scheduler`, it also passes `agent_ssl`, so the scheduler dials
    Agents over TLS with its own certificate. The scheduler object gains `server_ssl`,
    `agent_ssl` and `shutdown`. The test's own asyncio loop (for grpclib clients and fake
    Agents: `connect`, `open_tls_node`) is open inside the block.
    """
    sections.setdefault(
        "tls",
        {
            "ca": str(pki.ca),
            "cert": str(pki.scheduler.cert),
            "key": str(pki.scheduler.key),
            "trust_domain": TD,
        },
    )
    sections.setdefault("scheduling", {"attempt_timeout": 3.0})
    config = make_config(**sections)
    server_ssl, authorizer, agent_ssl = server_tls(config)
    shutdown = trio.Event()
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        scheduler = await nursery.start(
            functools.partial(
                serve,
                config,
                ssl_context=server_ssl,
                authorize=authorizer,
                agent_ssl=agent_ssl,
                shutdown=shutdown,
            )
        )
        scheduler.shutdown, scheduler.server_ssl, scheduler.agent_ssl = (
            shutdown,
            server_ssl,
            agent_ssl,
        )
        try:
            with trio.fail_after(IO_GUARD):
                yield scheduler
        finally:
            shutdown.set()


@asynccontextmanager
async def connect(port: int, context: ssl.SSLContext | None):
    """A grpclib channel to 127.0.0.1:port on the test's loop (inside `tls_scheduler`)."""
    channel = await make_channel(port, ssl=context)
    try:
        yield channel
    finally:
        channel.close()


class TlsWorkloadAgent(RecordingWorkloadAgent):
    """A fake Agent's WorkloadService served over TLS with the certificate the test chooses.

    `created` lists the Workloads received; `client_serials` the serial of the certificate the
    scheduler presented on each Create call.
    """

    def __init__(self, node_id: str, context: ssl.SSLContext, **kwargs) -> None:
        super().__init__(node_id, **kwargs)
        self.context = context
        self.client_serials: list[int] = []

    async def start(self) -> int:
        async def start() -> int:
            self._server = Server([self])
            await self._server.start("127.0.0.1", 0, ssl=self.context)
            return self._server._server.sockets[0].getsockname()[1]

        self.port = await aio(start)()
        return self.port

    async def _create(self, stream) -> None:
        self.client_serials.append(peer_serial(stream.peer.cert()))
        await super()._create(stream)


def agent_server_ctx(pki: Pki, pair: CertPair) -> ssl.SSLContext:
    """What an Agent serves WorkloadService with: its certificate; clients from the cluster CA."""
    return server_ssl_context(pki.ca, pair.cert, pair.key)


_OWN = object()  # open_tls_node: serve WorkloadService with the node's own certificate


@asynccontextmanager
async def open_tls_node(
    port: int,
    pki: Pki,
    scheduler,
    node_id: str,
    *,
    serve_with: ssl.SSLContext | None | object = _OWN,
    mode: str = "accept",
    journal: list | None = None,
    **metrics,
):
    """A node over TLS: its WorkloadService (served with `serve_with`: by default a context
    with the node's own certificate; None for plaintext) and its Agent (node_id's certificate)
    joined, with one status sent.

    Yields (agent, workloads, stream); the stream stays open until the block ends."""
    pair = pki.agent(node_id)
    context = agent_server_ctx(pki, pair) if serve_with is _OWN else serve_with
    workloads = TlsWorkloadAgent(node_id, context, mode=mode, journal=journal)
    await workloads.start()
    channel = await make_channel(port, ssl=client_ctx(pki, pair))
    stream = None
    try:
        agent = FakeAgent(channel, node_id, workloads.port)
        await agent.join()
        stream = await agent.report(**metrics)
        await wait_until(
            lambda: (
                node_id in scheduler.cluster.nodes
                and scheduler.cluster.nodes[node_id].metrics is not None
            )
        )
        yield agent, workloads, stream
    finally:
        with trio.CancelScope(shield=True):
            if stream is not None:
                await drop_stream(stream)
            channel.close()
            await workloads.stop()


async def applied(scheduler, stream, node_id: str, load: float) -> None:
    """Send a status with CPU load `load` on `stream`; wait until the scheduler applied it."""
    await stream.send(status(node_id, load=load))
    await wait_until(lambda: _load(scheduler, node_id) == load)


def _load(scheduler, node_id: str):
    node = scheduler.cluster.nodes.get(node_id)
    metrics = node.metrics if node is not None else None
    return metrics.cpu_load if metrics is not None else None


def pending(events: trio.MemoryReceiveChannel) -> list:
    """The events already delivered to a `FakeController.watch` channel (the watch stays on)."""
    found = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return found
        assert not isinstance(event, BaseException), f"the watch ended: {event!r}"
        found.append(event)


async def last_status(stream, message) -> BaseException | None:
    """Send `message` as the last of an open status stream (half-closing it), then return how
    the scheduler ended the call: its GRPCError, or None if OK.

    Half-closing matters to grpclib clients: when a server refuses a stream the client is still
    sending on, grpclib's server sends the trailers then RST_STREAM(NO_ERROR), and grpclib's
    client reports "Stream reset by remote party" instead of the status.
    """
    try:
        await aio(stream._stream.send_message)(message, end=True)
        return await stream.outcome()
    finally:
        await stream.cancel()


async def expect_refused_connection(port: int, context: ssl.SSLContext | None) -> BaseException:
    """A controller call on a fresh connection must fail at the connection level, promptly."""
    async with connect(port, context) as channel:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            with pytest.raises(CONNECTION_FAILURES) as caught:
                nodes = await FakeController(channel).list_nodes()
                pytest.fail(f"the scheduler answered a refused client: {nodes}")
    return caught.value


# --- tests: who may connect --------------------------------------------------------------------


async def test_agent_and_controller_work_over_mtls(pki):
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.controller)) as control,
    ):
        controller = FakeController(control)
        async with controller.watch() as events:
            async with open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, _, stream):
                await wait_event(events, "JOINED", "node-1")
                await applied(scheduler, stream, "node-1", 42.0)
                nodes = await controller.list_nodes()
                assert [node.id for node in nodes] == ["node-1"]


async def test_a_status_far_larger_than_the_tls_read_buffer_is_applied(pki):
    # the bridge reads TLS through a small buffer (_compat.TLS_READ_BUFFER): a message spanning many
    # TLS records must still arrive whole.
    from scheduler._compat import TLS_READ_BUFFER

    instances = {f"run-{number:05d}": 1 for number in range(3000)}
    big = status("node-1", instances=list(instances.items()))
    assert big.ByteSize() > 10 * TLS_READ_BUFFER
    async with tls_scheduler(pki) as scheduler:
        async with open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, _, stream):
            await stream.send(big)
            node = scheduler.cluster.nodes["node-1"]
            await wait_until(lambda: len(node.reported or ()) == 3000)
            assert [report.instance_id for report in node.reported] == list(instances)
            # None placed by this scheduler: announced (and counted) within the flood guard.
            from scheduler.instances import UNKNOWN_ANNOUNCED

            assert len(node.ids) == UNKNOWN_ANNOUNCED and set(node.ids) <= set(instances)


@pytest.mark.parametrize("which", ["no certificate", "another CA", "expired"])
async def test_bad_client_certificate_is_refused_at_the_handshake(pki, which):
    async with tls_scheduler(pki) as scheduler:
        context = bad_client_ctx(pki, which)
        error = await expect_refused_connection(scheduler.port, context)
        assert "Connection lost" in str(error) or isinstance(error, OSError), repr(error)
        # The refusal is the server's: our side accepted its certificate, then it hung up.
        outcome = await trio.to_thread.run_sync(raw_connection, scheduler.port, context)
        assert outcome == "closed after handshake", outcome
        good = client_ctx(pki, pki.controller)
        assert await trio.to_thread.run_sync(raw_connection, scheduler.port, good) == "served"
        assert not scheduler.cluster.nodes


async def test_certificate_without_uri_san_is_unauthenticated(pki):
    """From the cluster CA, so the handshake succeeds; but it names no identity."""
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.no_uri)) as channel,
    ):
        with pytest.raises(GRPCError) as caught:
            await FakeAgent(channel, "node-1").join()
        assert caught.value.status is Status.UNAUTHENTICATED
        assert "no URI SAN" in caught.value.message
        assert not scheduler.cluster.nodes


async def test_an_upper_case_spiffe_id_is_unauthenticated(pki, tmp_path):
    # SPIFFE IDs are lower case in scheme and trust domain (the SPIFFE ID specification and its
    # reference libraries): "SPIFFE://ORKA.LOCAL/agent/node-1" names no identity here.
    shouting = make_leaf(pki.paths, tmp_path / "shouting", uri="SPIFFE://ORKA.LOCAL/agent/node-1")
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, shouting)) as channel,
    ):
        with pytest.raises(GRPCError) as caught:
            await FakeAgent(channel, "node-1").join()
        assert caught.value.status is Status.UNAUTHENTICATED
        assert "lower case" in caught.value.message, caught.value.message
        assert not scheduler.cluster.nodes


async def test_plaintext_client_fails_cleanly(pki):
    async with tls_scheduler(pki) as scheduler:
        await expect_refused_connection(scheduler.port, None)
        # The listener is unharmed: a proper client is served right after.
        async with connect(scheduler.port, client_ctx(pki, pki.controller)) as channel:
            assert await FakeController(channel).list_nodes() == []


# --- tests: what an identity may do ------------------------------------------------------------


async def test_agent_cannot_join_as_another_node(pki):
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.agent("node-1"))) as channel,
    ):
        with pytest.raises(GRPCError) as caught:
            await FakeAgent(channel, "node-1").join("node-2")
        assert caught.value.status is Status.PERMISSION_DENIED
        assert "agent 'node-1'" in caught.value.message and "'node-2'" in caught.value.message, (
            caught.value.message
        )
        assert "node-2" not in scheduler.cluster.nodes


async def test_agent_cannot_leave_for_another_node(pki):
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-2"),
        connect(scheduler.port, client_ctx(pki, pki.agent("node-1"))) as channel,
    ):
        with pytest.raises(GRPCError) as caught:
            await FakeAgent(channel, "node-1").leave("node-2")
        assert caught.value.status is Status.PERMISSION_DENIED
        assert "agent 'node-1'" in caught.value.message and "'node-2'" in caught.value.message
        assert scheduler.cluster.nodes["node-2"].session is not None, "node-2 was made to leave"


async def test_status_stream_for_another_node_is_refused(pki):
    """The first message binds the stream: it must name the certificate's node."""
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-2") as (_, _, good),
        connect(scheduler.port, client_ctx(pki, pki.agent("node-1"))) as channel,
    ):
        agent = FakeAgent(channel, "node-1")
        await agent.join()
        stream = await agent.open_stream()
        error = await last_status(stream, status("node-2", load=99.0))
        assert isinstance(error, GRPCError) and error.status is Status.PERMISSION_DENIED, error
        assert "agent 'node-1'" in error.message and "'node-2'" in error.message, error.message
        assert _load(scheduler, "node-2") != 99.0, "node-1 reported for node-2"
        await applied(scheduler, good, "node-2", 7.0)  # node-2's own stream is untouched


async def test_status_stream_switching_node_mid_stream_is_refused(pki):
    """After a valid first message the stream belongs to node-1; a status for node-2 ends it.

    Every message's id is checked against the certificate (SPEC §2.1), so this is
    PERMISSION_DENIED; nothing is applied to node-2 and the message names both nodes.
    """
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-2") as (_, _, good),
        open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, _, stream),
    ):
        await applied(scheduler, stream, "node-1", 11.0)
        error = await last_status(stream, status("node-2", load=99.0))
        assert isinstance(error, GRPCError), error
        assert error.status is Status.PERMISSION_DENIED, error  # SPEC §2.1: every id
        assert "node-1" in error.message and "node-2" in error.message, error.message
        assert _load(scheduler, "node-2") != 99.0, "node-1 reported for node-2"
        await applied(scheduler, good, "node-2", 8.0)


@pytest.mark.parametrize("method", ["Schedule", "WatchEvents", "ListNodes", "Stop"])
async def test_agent_certificate_cannot_call_controller_services(pki, method):
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, workloads, _),
        connect(scheduler.port, client_ctx(pki, pki.agent("node-1"))) as channel,
    ):
        error = await controller_call(channel, method)
        assert isinstance(error, GRPCError) and error.status is Status.PERMISSION_DENIED, error
        assert "agent 'node-1'" in error.message and method in error.message, error.message
        assert "Agents may call only scheduler.agent services" in error.message
        assert workloads.created == [], "an Agent's certificate got a workload scheduled"


async def controller_call(channel, method: str) -> BaseException | None:
    """Call a Controller method; return how it ended (None: OK)."""
    controller = FakeController(channel)
    if method == "Schedule":
        async with open_schedule(channel, scheduling_request("web-1")) as call:
            _, error = await call.result()
        return error
    if method == "WatchEvents":
        async with controller.watch() as events:
            item = await events.receive()
        return item if isinstance(item, BaseException) else None
    try:
        if method == "ListNodes":
            await controller.list_nodes()
        else:
            return await stop_instance(channel, "web-1")
    except GRPCError as error:
        return error
    return None


@pytest.mark.parametrize("method", ["JoinCluster", "LeaveCluster", "UpdateNodeStatus"])
async def test_controller_certificate_cannot_call_agent_services(pki, method):
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.controller)) as channel,
    ):
        agent = FakeAgent(channel, "node-1")
        error = None
        try:
            if method == "JoinCluster":
                await agent.join()
            elif method == "LeaveCluster":
                await agent.leave()
            else:
                error = await last_status(await agent.open_stream(), status("node-1"))
        except GRPCError as err:
            error = err
        except StreamTerminatedError as err:
            # Refused on its HEADERS, before the client half-closed: grpclib's server sends the
            # trailers then RST_STREAM(NO_ERROR), and grpclib's client reports the reset
            # instead of the status (grpcio reads the status: test_tls_grpcio.py checks it).
            assert method == "UpdateNodeStatus" and "error_code: 0" in str(err), repr(err)
            assert not scheduler.cluster.nodes
            return
        assert isinstance(error, GRPCError) and error.status is Status.PERMISSION_DENIED, error
        assert "controller 'controller'" in error.message and method in error.message
        assert not scheduler.cluster.nodes


async def test_scheduler_certificate_cannot_call_in(pki):
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.scheduler)) as channel,
    ):
        with pytest.raises(GRPCError) as caught:
            await FakeController(channel).list_nodes()
        assert caught.value.status is Status.PERMISSION_DENIED
        assert "the scheduler's own certificate" in caught.value.message


async def test_legitimate_clients_keep_working_while_bad_ones_are_refused(pki):
    """One good Agent streams throughout; after every refusal its next status still applies."""
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, _, good),
        connect(scheduler.port, client_ctx(pki, pki.controller)) as control,
    ):
        controller = FakeController(control)
        async with controller.watch() as events:
            load = 1.0
            for which in ("no certificate", "another CA", "expired"):
                await expect_refused_connection(scheduler.port, bad_client_ctx(pki, which))
                await applied(scheduler, good, "node-1", load)
                load += 1
            await expect_refused_connection(scheduler.port, None)  # plaintext
            await applied(scheduler, good, "node-1", load)

            async with connect(scheduler.port, client_ctx(pki, pki.agent("node-2"))) as channel:
                impostor = FakeAgent(channel, "node-2")
                with pytest.raises(GRPCError):
                    await impostor.join("node-1")  # another node's id
                with pytest.raises(GRPCError):
                    await FakeController(channel).list_nodes()  # a Controller's service
                stream = await impostor.open_stream()
                error = await last_status(stream, status("node-1", load=99.0))
                assert error.status is Status.PERMISSION_DENIED, error
            await applied(scheduler, good, "node-1", 50.0)

            # The controller's watch saw node-1 all along and nothing of the impostors.
            await wait_event(events, "STATUS", "node-1")
            seen = [(event_kind(event), event.node.node.id) for event in pending(events)]
            assert all(kind == "STATUS" and node == "node-1" for kind, node in seen), seen
            nodes = await controller.list_nodes()
            assert [(node.id, node.cpu_load) for node in nodes] == [("node-1", 50.0)]
        assert scheduler.cluster.nodes["node-1"].session is not None
        await good.send(status("node-1", load=51.0))
        assert await good.finish() is not None  # the good stream ends OK when the Agent ends it


# --- tests: the scheduler checks the Agents it dials -------------------------------------------


async def test_scheduler_refuses_agent_serving_another_nodes_certificate(pki, caplog):
    """node-1 joins with its own certificate, but its WorkloadService answers with node-2's."""
    caplog.set_level(logging.INFO, logger="scheduler")
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(
            scheduler.port,
            pki,
            scheduler,
            "node-1",
            serve_with=agent_server_ctx(pki, pki.agent("node-2")),
        ) as (_, impostor, good),
        connect(scheduler.port, client_ctx(pki, pki.controller)) as channel,
    ):
        async with open_schedule(channel, scheduling_request("web-1")) as call:
            statuses, error = await call.result()
        assert statuses == []
        assert isinstance(error, GRPCError) and error.status is Status.UNAVAILABLE, error
        assert "certificate of agent 'node-2'" in error.message, error.message
        assert "node 'node-1'" in error.message, error.message
        assert impostor.created == [], "the Workload reached an Agent that is not node-1"
        assert "web-1" not in scheduler.instances._instances
        await applied(scheduler, good, "node-1", 3.0)  # the node itself stays in the cluster


def impostor_context(pki: Pki, served_by: str) -> ssl.SSLContext | None:
    """What node-1's WorkloadService serves when it is not node-1's genuine Agent."""
    if served_by == "another node's certificate":
        return agent_server_ctx(pki, pki.agent("node-2"))
    if served_by == "another CA":
        return agent_server_ctx(pki, pki.other_ca.agent("node-1"))
    assert served_by == "plaintext"
    return None


@pytest.mark.parametrize("served_by", ["another node's certificate", "another CA", "plaintext"])
async def test_impostor_agent_is_skipped_for_a_genuine_one(pki, caplog, served_by):
    """node-1 (ranked first: more free memory) does not serve as node-1; node-2 is genuine."""
    caplog.set_level(logging.INFO, logger="scheduler")
    journal: list = []
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.controller)) as channel,
        open_tls_node(
            scheduler.port, pki, scheduler, "node-2", journal=journal, mem_free=1 << 30
        ) as (_, genuine, _),
        open_tls_node(
            scheduler.port,
            pki,
            scheduler,
            "node-1",
            journal=journal,
            serve_with=impostor_context(pki, served_by),
            mem_free=7 << 30,
        ) as (_, impostor, _),
    ):
        async with open_schedule(channel, scheduling_request("web-1")) as call:
            running = await call.until(controller_pb2.Status.RUNNING)
            assert running.instance_id == "web-1" and running.node_id == "node-2", running
            await call.cancel()
        assert impostor.created == [] and genuine.created == ["web-1"], journal
        refusals = [
            record.getMessage()
            for record in caplog.records
            if "node node-1 refused" in record.getMessage()
        ]
        assert len(refusals) == 1 and "UNAVAILABLE" in refusals[0], (
            "the impostor was not tried first (or not refused): fix the ranking in this test",
            refusals,
        )


# --- tests: certificate rotation ----------------------------------------------------------------


async def test_reload_rotates_the_server_certificate_without_dropping_streams(pki, tmp_path):
    rotated = make_leaf(pki.paths, tmp_path / "rotated", uri=f"spiffe://{TD}/scheduler")
    async with (
        tls_scheduler(pki) as scheduler,
        open_tls_node(scheduler.port, pki, scheduler, "node-1") as (agent, _, stream),
    ):
        old_serial = peer_serial(stream._stream.peer.cert())
        assert old_serial == serial_of(pki.scheduler)

        security.reload(scheduler.server_ssl, pki.ca, rotated.cert, rotated.key)

        # The established connection and its stream carry on with the old certificate.
        await applied(scheduler, stream, "node-1", 21.0)
        assert peer_serial(stream._stream.peer.cert()) == old_serial
        # A new call on the old connection is still served (and answered by the handler: a
        # live node cannot join twice).
        with pytest.raises(GRPCError) as caught:
            await agent.join()
        assert caught.value.status is Status.ALREADY_EXISTS, caught.value

        # A new connection sees the new certificate and is served.
        async with connect(scheduler.port, client_ctx(pki, pki.controller)) as channel:
            seen = await _served_serial(channel)
            assert seen == serial_of(rotated), (hex(seen), hex(serial_of(rotated)))
        await applied(scheduler, stream, "node-1", 22.0)


async def _served_serial(channel) -> int:
    """ListNodes on `channel`, returning the serial of the certificate the server presented."""
    stub = controller_grpc.ClusterServiceStub(channel)

    async def call() -> int:
        async with stub.ListNodes.open() as stream:
            await stream.send_message(controller_pb2.Empty(), end=True)
            await stream.recv_message()
            return peer_serial(stream.peer.cert())

    return await aio(call)()


async def test_reload_of_the_agent_dialing_context_uses_the_new_certificate(pki, tmp_path):
    rotated = make_leaf(pki.paths, tmp_path / "rotated", uri=f"spiffe://{TD}/scheduler")
    async with (
        tls_scheduler(pki) as scheduler,
        connect(scheduler.port, client_ctx(pki, pki.controller)) as channel,
    ):
        async with open_tls_node(scheduler.port, pki, scheduler, "node-1") as (_, node, _):
            async with open_schedule(channel, scheduling_request("web-1")) as call:
                await call.until(controller_pb2.Status.RUNNING)
                await call.cancel()
        assert node.client_serials == [serial_of(pki.scheduler)]

        security.reload(scheduler.agent_ssl, pki.ca, rotated.cert, rotated.key)
        async with open_tls_node(scheduler.port, pki, scheduler, "node-2") as (_, node, _):
            async with open_schedule(channel, scheduling_request("web-2")) as call:
                await call.until(controller_pb2.Status.RUNNING)
                await call.cancel()
        assert node.client_serials == [serial_of(rotated)]
