"""SSL contexts, identities and authorization, over real TLS handshakes on 127.0.0.1.

The handshakes use the stdlib `ssl` module with blocking sockets: a small threaded server
(`TlsServer`) handshakes each connection, records what it saw, then echoes. Every socket has a
timeout, so a broken handshake fails a test instead of hanging it. Bad certificates are made
with cryptography directly, signed by the cluster CA unless the test is about another CA.
"""

from __future__ import annotations

import datetime as dt
import gc
import queue
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scheduler.errors import PermissionDenied, Refusal, Unauthenticated
from scheduler.pki import CertPair, PkiPaths, init_pki
from scheduler.security import (
    Authorizer,
    Identity,
    IdentityCache,
    IdentityError,
    TlsSetupError,
    authorize,
    check_node,
    client_ssl_context,
    identity_from_peercert,
    reload,
    server_ssl_context,
    verify_agent_peer,
)

TD = "orka.local"
TIMEOUT = 5.0  # s; generous for a loopback handshake, short enough to fail a hung test


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki", agents=("node-1", "node-2"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> PkiPaths:
    """A second, unrelated CA in the same trust domain: its certificates must not be accepted."""
    return init_pki(tmp_path_factory.mktemp("other") / "pki", agents=("node-1",))


def server_context(paths: PkiPaths, pair: CertPair | None = None) -> ssl.SSLContext:
    pair = pair or paths.scheduler
    return server_ssl_context(paths.ca, pair.cert, pair.key)


def client_context(paths: PkiPaths, pair: CertPair) -> ssl.SSLContext:
    return client_ssl_context(paths.ca, pair.cert, pair.key)


def make_cert(
    paths: PkiPaths,
    directory: Path,
    *,
    uris=(),
    dns=(),
    valid_from: float = -1,
    valid_until: float = 1,
    usages=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
) -> CertPair:
    """A leaf signed by `paths`' CA with exactly the SANs given; validity in days from now."""
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test leaf")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=valid_from))
        .not_valid_after(now + dt.timedelta(days=valid_until))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
    names = [*(x509.UniformResourceIdentifier(u) for u in uris), *(x509.DNSName(d) for d in dns)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "leaf.pem", directory / "leaf.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


@dataclass
class Accepted:
    """What the server saw of one connection."""

    peercert: dict | None = None
    alpn: str | None = None
    error: Exception | None = None


class TlsServer:
    """A TLS server on 127.0.0.1: handshakes each connection, records it, then echoes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.accepted: queue.Queue[Accepted] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # how often the accept loop looks for close()
        self.address = self._listener.getsockname()
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(TIMEOUT)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except OSError as error:  # ssl.SSLError included
            self.accepted.put(Accepted(error=error))
            raw.close()
            return
        self.accepted.put(Accepted(tls.getpeercert(), tls.selected_alpn_protocol()))
        with tls:
            try:
                while data := tls.recv(1024):
                    tls.sendall(data)
            except OSError:
                pass

    def next_accepted(self) -> Accepted:
        return self.accepted.get(timeout=TIMEOUT)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


@pytest.fixture
def serve():
    servers: list[TlsServer] = []

    def start(context: ssl.SSLContext) -> TlsServer:
        servers.append(TlsServer(context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def connect(server: TlsServer, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(server.address, timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def echo(tls: ssl.SSLSocket, data: bytes = b"ping") -> bytes:
    tls.sendall(data)
    return tls.recv(len(data))


@dataclass
class Exchange:
    """Both sides of one connection: a handshake and one echoed message."""

    server: Accepted
    peercert: dict | None = None  # the client's view of the server
    alpn: str | None = None
    error: Exception | None = None  # the client's error


def exchange(server: TlsServer, context: ssl.SSLContext) -> Exchange:
    """Connect, handshake, echo once (a TLS 1.3 server refuses a client cert only after the
    client's handshake completed, so the client learns of it on its first read)."""
    result = Exchange(Accepted())
    try:
        with connect(server, context) as tls:
            result.peercert, result.alpn = tls.getpeercert(), tls.selected_alpn_protocol()
            assert echo(tls) == b"ping"
    except OSError as error:
        result.error = error
    result.server = server.next_accepted()
    return result


# --- contexts ----------------------------------------------------------------------------------


def test_server_context_requires_client_certificates_from_the_cluster_ca_only(paths):
    context = server_context(paths)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert [ca["subject"] for ca in context.get_ca_certs()] == [
        ((("organizationName", "orka orka.local"),), (("commonName", "orka development CA"),))
    ]


def test_client_context_verifies_the_server_but_not_its_host_name(paths):
    context = client_context(paths, paths.agent("node-1"))
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1


def test_unreadable_files_are_named(paths, tmp_path):
    with pytest.raises(TlsSetupError, match="missing.pem"):
        server_ssl_context(paths.ca, tmp_path / "missing.pem", paths.scheduler.key)


# --- handshakes and identities -----------------------------------------------------------------


def test_agent_handshake_yields_its_identity_and_h2(paths, serve):
    server = serve(server_context(paths))
    result = exchange(server, client_context(paths, paths.agent("node-1")))
    assert result.error is None and result.server.error is None
    assert identity_from_peercert(result.server.peercert, TD) == Identity("agent", "node-1", TD)
    assert identity_from_peercert(result.peercert, TD) == Identity("scheduler", "", TD)
    assert result.alpn == result.server.alpn == "h2"


def test_controller_handshake_yields_its_identity(paths, serve):
    server = serve(server_context(paths))
    result = exchange(server, client_context(paths, paths.controller("controller")))
    assert identity_from_peercert(result.server.peercert, TD) == Identity(
        "controller", "controller", TD
    )


def test_scheduler_dialing_an_agent_checks_the_node(paths, serve):
    agent = serve(server_context(paths, paths.agent("node-1")))
    result = exchange(agent, client_context(paths, paths.scheduler))
    assert result.error is None
    assert verify_agent_peer(result.peercert, TD, "node-1") == Identity("agent", "node-1", TD)
    with pytest.raises(IdentityError, match="node 'node-2'.*agent 'node-1'"):
        verify_agent_peer(result.peercert, TD, "node-2")


def test_verify_agent_peer_refuses_a_controller_and_no_certificate():
    controller = {"subjectAltName": (("URI", "spiffe://orka.local/controller/node-1"),)}
    with pytest.raises(IdentityError, match="controller 'node-1'"):
        verify_agent_peer(controller, TD, "node-1")
    with pytest.raises(IdentityError, match="dialed for node 'node-1'.*no verified certificate"):
        verify_agent_peer(None, TD, "node-1")


@pytest.mark.parametrize(
    "uris,dns,message",
    [
        ((), (), "no URI SAN"),
        ((), ("node-1",), "no URI SAN"),
        (
            ("spiffe://orka.local/agent/node-1", "spiffe://orka.local/agent/node-2"),
            (),
            "2 URI SANs",
        ),
        (("spiffe://other.example/agent/node-1",), (), "trust domain 'other.example'"),
        (("spiffe://orka.local/robot/r2",), (), "no known kind"),
        (("spiffe://orka.local/agent/node_1",), (), "invalid node id 'node_1'"),
        (("https://orka.local/agent/node-1",), (), "not a SPIFFE ID"),
    ],
    ids=[
        "no-san",
        "dns-only",
        "two-uris",
        "foreign-domain",
        "unknown-kind",
        "bad-node-id",
        "not-spiffe",
    ],
)
def test_certificates_from_the_cluster_ca_without_a_valid_identity(
    paths, serve, tmp_path, uris, dns, message
):
    bad = make_cert(paths, tmp_path, uris=uris, dns=dns)
    server = serve(server_context(paths))
    result = exchange(server, client_context(paths, bad))
    assert result.server.error is None  # the CA signed it: TLS alone accepts it
    with pytest.raises(IdentityError, match=message):
        identity_from_peercert(result.server.peercert, TD)


def test_a_certificate_from_another_ca_fails_the_handshake(paths, other_ca, serve):
    server = serve(server_context(paths))
    result = exchange(server, client_context(paths, other_ca.agent("node-1")))
    assert isinstance(result.server.error, ssl.SSLCertVerificationError)
    assert result.error is not None


def test_a_server_from_another_ca_is_refused_by_the_client(paths, other_ca, serve):
    server = serve(server_context(other_ca, other_ca.agent("node-1")))
    result = exchange(server, client_context(paths, paths.scheduler))
    assert isinstance(result.error, ssl.SSLCertVerificationError)


def test_an_expired_client_certificate_fails_the_handshake(paths, serve, tmp_path):
    expired = make_cert(
        paths, tmp_path, uris=("spiffe://orka.local/agent/node-1",), valid_from=-10, valid_until=-5
    )
    server = serve(server_context(paths))
    result = exchange(server, client_context(paths, expired))
    assert isinstance(result.server.error, ssl.SSLCertVerificationError)
    assert "expired" in str(result.server.error)
    assert result.error is not None


def test_an_expired_agent_certificate_is_refused_by_the_scheduler(paths, serve, tmp_path):
    expired = make_cert(
        paths, tmp_path, uris=("spiffe://orka.local/agent/node-1",), valid_from=-10, valid_until=-5
    )
    agent = serve(server_context(paths, expired))
    result = exchange(agent, client_context(paths, paths.scheduler))
    assert isinstance(result.error, ssl.SSLCertVerificationError)
    assert "expired" in str(result.error)


def test_a_client_without_a_certificate_fails_the_handshake(paths, serve):
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(paths.ca)
    server = serve(server_context(paths))
    result = exchange(server, anonymous)
    assert result.server.error is not None and result.error is not None


# --- identities without handshakes -------------------------------------------------------------


def peercert(*uris: str) -> dict:
    return {"subject": (), "subjectAltName": tuple(("URI", uri) for uri in uris)}


@pytest.mark.parametrize(
    "uri,identity",
    [
        ("spiffe://orka.local/agent/node-1", Identity("agent", "node-1")),
        ("spiffe://orka.local/agent/0F8FAD5B-D9CB", Identity("agent", "0F8FAD5B-D9CB")),
        ("spiffe://orka.local/controller/ctl", Identity("controller", "ctl")),
        ("spiffe://orka.local/scheduler", Identity("scheduler", "")),
    ],
)
def test_identity_from_valid_uris(uri, identity):
    assert identity_from_peercert(peercert(uri), TD) == identity


@pytest.mark.parametrize(
    "cert,message",
    [
        (None, "no verified certificate"),
        ({}, "no verified certificate"),
        ({"subject": ()}, "no URI SAN"),
        (peercert("spiffe://orka.local/agent"), "no known kind"),
        (peercert("spiffe://orka.local/agent/"), "invalid node id ''"),
        (peercert("spiffe://orka.local/agent/a/b"), "no known kind"),
        (peercert("spiffe://orka.local/scheduler/x"), "no known kind"),
        (peercert("spiffe://orka.local/controller/x?y"), "invalid controller name 'x\\?y'"),
        (peercert("spiffe://orka.local:443/scheduler"), "trust domain 'orka.local:443'"),
        (peercert("spiffe://orka.local"), "no known kind"),
        (peercert("spiffe://orka.local/agent/" + "n" * 300), r"\.\.\. \(300 characters\)"),
        # The SPIFFE ID specification: scheme and trust domain are lower case, nothing else.
        (peercert("SPIFFE://ORKA.LOCAL/agent/node-1"), "not a SPIFFE ID \\(SPIFFE IDs are lower"),
        (peercert("Spiffe://orka.local/agent/node-1"), "not a SPIFFE ID \\(SPIFFE IDs are lower"),
        (peercert("spiffe://ORKA.local/agent/node-1"), "trust domains are lower case"),
    ],
)
def test_identity_refusals(cert, message):
    with pytest.raises(IdentityError, match=message):
        identity_from_peercert(cert, TD)


def test_refusals_say_what_is_expected():
    with pytest.raises(IdentityError) as refusal:
        identity_from_peercert({"subject": ()}, "prod.example")
    assert "spiffe://prod.example/agent/<node-id>" in str(refusal.value)


def test_identity_uri_and_str():
    assert Identity("agent", "n1", "td").uri == "spiffe://td/agent/n1"
    assert Identity("scheduler", "").uri == "spiffe://orka.local/scheduler"
    assert str(Identity("agent", "n1")) == "agent 'n1'"
    assert str(Identity("controller", "c")) == "controller 'c'"
    assert str(Identity("scheduler", "")) == "the scheduler"


@pytest.mark.parametrize(
    "kind,name", [("robot", "r"), ("agent", ""), ("agent", "a/b"), ("scheduler", "x")]
)
def test_identity_validates(kind, name):
    with pytest.raises(ValueError):
        Identity(kind, name)


# --- the identity cache ------------------------------------------------------------------------


class FakeSslObject:
    """Stands in for an `ssl.SSLObject`: a certificate and a count of how often it was read."""

    def __init__(self, cert: dict | None) -> None:
        self.cert = cert
        self.reads = 0

    def getpeercert(self) -> dict | None:
        self.reads += 1
        return self.cert


def test_identity_is_extracted_once_per_connection():
    cache = IdentityCache()
    connection = FakeSslObject(peercert("spiffe://orka.local/agent/n1"))
    for _ in range(3):
        assert cache.identity_for(connection, TD) == Identity("agent", "n1")
    assert connection.reads == 1


def test_refusals_are_cached_too():
    cache = IdentityCache()
    connection = FakeSslObject(peercert())
    for _ in range(3):
        with pytest.raises(IdentityError, match="no URI SAN"):
            cache.identity_for(connection, TD)
    assert connection.reads == 1


def test_entries_go_away_with_their_connection():
    cache = IdentityCache()
    connection = FakeSslObject(peercert())
    with pytest.raises(IdentityError):
        cache.identity_for(connection, TD)
    assert len(cache) == 1
    del connection
    gc.collect()
    assert len(cache) == 0


def test_cache_accepts_real_ssl_objects(paths):
    context = server_context(paths)
    ssl_object = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    with pytest.raises(ValueError):  # no handshake yet: nothing is cached
        IdentityCache().identity_for(ssl_object, TD)


def test_a_plaintext_connection_has_no_identity():
    with pytest.raises(IdentityError, match="not TLS"):
        IdentityCache().identity_for(None, TD)


# --- authorization -----------------------------------------------------------------------------

AGENT = Identity("agent", "node-1")
CONTROLLER = Identity("controller", "controller")
SCHEDULER = Identity("scheduler", "")
JOIN = "/scheduler.agent.LifecycleService/JoinCluster"
STATUS = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
SCHEDULE = "/scheduler.controller.SchedulingService/Schedule"
WATCH = "/scheduler.controller.ClusterService/WatchEvents"
CREATE = "/node_agent.WorkloadService/Create"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

ALLOWED = {
    AGENT: {JOIN, STATUS, HEALTH, REFLECTION, REFLECTION_V1},
    CONTROLLER: {SCHEDULE, WATCH, HEALTH, REFLECTION, REFLECTION_V1},
    SCHEDULER: {HEALTH, REFLECTION, REFLECTION_V1},
}
PATHS = [
    JOIN,
    STATUS,
    SCHEDULE,
    WATCH,
    CREATE,
    HEALTH,
    REFLECTION,
    REFLECTION_V1,
    "/scheduler.agentx.LifecycleService/JoinCluster",
    "/scheduler.agent.sub.Service/Method",
    "/scheduler.agent.LifecycleService",
    "scheduler.agent.LifecycleService/JoinCluster",
    "/scheduler.agent.LifecycleService/Join/Cluster",
    "/grpc.health.v1.Health/",
]


@pytest.mark.parametrize("identity", list(ALLOWED), ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_authorize_matrix(identity, path):
    if path in ALLOWED[identity]:
        authorize(identity, path)
    else:
        with pytest.raises(Refusal) as refusal:
            authorize(identity, path)
        assert type(refusal.value) is PermissionDenied
        assert refusal.value.message.startswith(f"{identity} may not call {path!r}")


def test_authorize_says_why():
    with pytest.raises(PermissionDenied, match="Agents may call only scheduler.agent services"):
        authorize(AGENT, SCHEDULE)
    with pytest.raises(PermissionDenied, match="Controllers may call only scheduler.controller"):
        authorize(CONTROLLER, JOIN)
    with pytest.raises(
        PermissionDenied, match="the scheduler's own certificate is for dialing Agents"
    ):
        authorize(SCHEDULER, JOIN)


def test_authorize_refuses_a_missing_identity():
    with pytest.raises(Refusal) as refusal:
        authorize(None, HEALTH)
    assert type(refusal.value) is PermissionDenied


def test_check_node():
    check_node(AGENT, "node-1")
    check_node(None, "anything")  # insecure mode: identities unchecked
    for identity, node in [
        (AGENT, "node-2"),
        (AGENT, "NODE-1"),
        (CONTROLLER, "controller"),
        (SCHEDULER, "node-1"),
    ]:
        with pytest.raises(Refusal) as refusal:
            check_node(identity, node)
        assert type(refusal.value) is PermissionDenied
        assert str(identity) in refusal.value.message and repr(node) in refusal.value.message


def test_authorizer_combines_identity_and_authorization():
    authorizer = Authorizer(TD)
    agent = FakeSslObject(peercert("spiffe://orka.local/agent/node-1"))
    assert authorizer(agent, JOIN) == AGENT
    with pytest.raises(Refusal) as refusal:
        authorizer(agent, SCHEDULE)
    assert type(refusal.value) is PermissionDenied
    with pytest.raises(Refusal) as refusal:
        authorizer(FakeSslObject(peercert("spiffe://elsewhere/agent/node-1")), JOIN)
    assert type(refusal.value) is Unauthenticated
    assert "trust domain 'elsewhere'" in refusal.value.message
    assert agent.reads == 1


# --- certificate rotation ----------------------------------------------------------------------


def dns_names(peer: dict) -> list[str]:
    return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]


def test_reload_rotates_the_certificate_for_new_handshakes_only(paths, serve, tmp_path):
    context = server_context(paths)
    server = serve(context)
    client = client_context(paths, paths.agent("node-1"))
    with connect(server, client) as established:
        assert "localhost" in dns_names(established.getpeercert())
        assert server.next_accepted().error is None

        rotated = make_cert(
            paths, tmp_path, uris=("spiffe://orka.local/scheduler",), dns=("rotated.example",)
        )
        reload(context, paths.ca, rotated.cert, rotated.key)

        assert echo(established) == b"ping"  # the established connection is untouched
        result = exchange(server, client)
        assert result.error is None and dns_names(result.peercert) == ["rotated.example"]


def test_reload_adds_a_new_ca(paths, other_ca, serve, tmp_path):
    context = server_context(paths)
    server = serve(context)
    newcomer = client_context(other_ca, other_ca.agent("node-1"))
    assert exchange(server, newcomer).server.error is not None

    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(paths.ca.read_bytes() + other_ca.ca.read_bytes())
    reload(context, bundle, paths.scheduler.cert, paths.scheduler.key)
    # The newcomer must also trust our CA to accept the scheduler's certificate.
    newcomer.load_verify_locations(paths.ca)

    assert exchange(server, newcomer).server.error is None
    assert exchange(server, client_context(paths, paths.agent("node-1"))).server.error is None


def test_a_failed_reload_leaves_the_context_as_it_was(paths, serve):
    context = server_context(paths)
    server = serve(context)
    mismatched_key = paths.agent("node-1").key
    with pytest.raises(TlsSetupError):
        reload(context, paths.ca, paths.scheduler.cert, mismatched_key)
    result = exchange(server, client_context(paths, paths.agent("node-1")))
    assert result.error is None
    assert identity_from_peercert(result.peercert, TD) == SCHEDULER
