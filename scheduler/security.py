"""SSL contexts, peer identities and per-service authorization (SPEC §3).

A peer's identity is the single URI SAN of its certificate, SPIFFE style:
`spiffe://<trust-domain>/agent/<node-id>`, `.../controller/<name>` or `.../scheduler`. The TLS
handshake proves the certificate comes from the cluster CA; this module turns it into an
`Identity`, decides which services that identity may call (`authorize`) and which node an Agent
may speak for (`check_node`). `Authorizer` puts these together for the gRPC server, extracting
each connection's identity once (`IdentityCache`).

Host names play no part in identity: the scheduler dials an Agent at the peer IP of its
JoinCluster call, which its certificate rarely names, so client contexts skip host-name checks
and callers check the URI SAN with `verify_agent_peer` instead.
"""

from __future__ import annotations

import os
import ssl
import weakref
from dataclasses import dataclass
from typing import Literal

from scheduler.errors import PermissionDenied, Unauthenticated
from scheduler.names import DEFAULT_TRUST_DOMAIN, NODE_ID_RULE, valid_node_id, valid_trust_domain

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2  # HTTP/2 (RFC 7540 §9.2) forbids older versions
ALPN = ["h2"]  # gRPC runs on HTTP/2; official grpcio clients refuse a server that does not say so
# TLS 1.2 suites HTTP/2 permits (RFC 7540 §9.2.2, as grpclib's client uses); TLS 1.3 suites
# are all acceptable and are not affected by set_ciphers.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

Kind = Literal["agent", "controller", "scheduler"]
KINDS: tuple[Kind, ...] = ("agent", "controller", "scheduler")
SPIFFE_SCHEME = "spiffe://"

# Probes and tooling: any member of the cluster may ask whether the scheduler is up.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
# The one proto package each kind may call; the scheduler's own certificate calls nothing.
_PACKAGE_OF_KIND = {"agent": "scheduler.agent", "controller": "scheduler.controller"}
_WHY_NOT = {
    "agent": "Agents may call only scheduler.agent services",
    "controller": "Controllers may call only scheduler.controller services",
    "scheduler": "the scheduler's own certificate is for dialing Agents, not for calling in",
}
_QUOTE_LIMIT = 200  # characters of a peer-supplied string echoed in an error message

PathLike = str | os.PathLike[str]


class IdentityError(Exception):
    """A peer's certificate names no acceptable identity; the message says what is wrong."""


class TlsSetupError(Exception):
    """CA, certificate or key files cannot be loaded into an SSL context."""


# --- SSL contexts ------------------------------------------------------------------------------


def server_ssl_context(ca: PathLike, cert: PathLike, key: PathLike) -> ssl.SSLContext:
    """The gRPC listener's context: client certificates from the cluster CA are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context)
    _load(context, ca, cert, key)
    return context


def client_ssl_context(ca: PathLike, cert: PathLike, key: PathLike) -> ssl.SSLContext:
    """A context for dialing with our certificate: the scheduler to Agents, tests and CLI to us.

    The server must present a certificate from the cluster CA, but its host name is not
    checked (see the module docstring): after the handshake, check who answered with
    `verify_agent_peer` or `identity_from_peercert`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context)
    _load(context, ca, cert, key)
    return context


def reload(context: ssl.SSLContext, ca: PathLike, cert: PathLike, key: PathLike) -> None:
    """Load a rotated certificate, key and CA into a context in use (e.g. on SIGHUP).

    Handshakes started afterwards use the new material; established connections keep theirs.
    The files are first loaded into a scratch context, so a bad file raises `TlsSetupError`
    and leaves `context` untouched. CA certificates accumulate: OpenSSL can add to a context's
    trust store but not remove from it, which suits a CA rollover (old and new both trusted);
    dropping a CA takes a restart.
    """
    _load(ssl.SSLContext(context.protocol), ca, cert, key)
    _load(context, ca, cert, key)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_TLS
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(ALPN)
    # Compression leaks secrets (CRIME); HTTP/2 forbids both it and renegotiation.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load(context: ssl.SSLContext, ca: PathLike, cert: PathLike, key: PathLike) -> None:
    """Our chain and key, and the cluster CA as the only trust anchor (no system CAs)."""
    try:
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=ca)
    except OSError as error:  # ssl.SSLError is an OSError
        raise TlsSetupError(
            f"cannot load TLS files (ca={os.fspath(ca)}, cert={os.fspath(cert)}, "
            f"key={os.fspath(key)}): {error}"
        ) from None


# --- identities --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified peer is: an Agent (name = node id), a Controller, or the scheduler."""

    kind: Kind
    name: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"identity kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "scheduler" and self.name:
            raise ValueError("the scheduler's identity has no name")
        if self.kind != "scheduler" and not valid_node_id(self.name):
            raise ValueError(f"invalid {self.kind} name {self.name!r}: expected {NODE_ID_RULE}")
        if not valid_trust_domain(self.trust_domain):
            raise ValueError(f"invalid trust domain {self.trust_domain!r}")

    @property
    def uri(self) -> str:
        """The SPIFFE ID a certificate for this identity carries as its URI SAN."""
        path = self.kind if self.kind == "scheduler" else f"{self.kind}/{self.name}"
        return f"{SPIFFE_SCHEME}{self.trust_domain}/{path}"

    def __str__(self) -> str:
        return "the scheduler" if self.kind == "scheduler" else f"{self.kind} '{self.name}'"


def identity_from_peercert(peercert: dict | None, trust_domain: str) -> Identity:
    """The identity named by a verified peer certificate, as `SSLObject.getpeercert()` gives it."""
    if not peercert:
        raise IdentityError(
            "the peer presented no verified certificate: a certificate from "
            "the cluster CA is required"
        )
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    if not uris:
        raise IdentityError(
            f"the peer's certificate has no URI SAN, so it names no identity: "
            f"expected one of {_expected_forms(trust_domain)}"
        )
    if len(uris) > 1:
        raise IdentityError(
            f"the peer's certificate has {len(uris)} URI SANs "
            f"({', '.join(_quote(uri) for uri in uris)}): an identity "
            f"certificate carries exactly one"
        )
    return _parse_spiffe_id(uris[0], trust_domain)


def verify_agent_peer(peercert: dict | None, trust_domain: str, node_id: str) -> Identity:
    """Check that the Agent the scheduler dialed for `node_id` has a certificate naming it."""
    try:
        identity = identity_from_peercert(peercert, trust_domain)
    except IdentityError as error:
        raise IdentityError(f"the Agent dialed for node {_quote(node_id)}: {error}") from None
    if identity.kind != "agent" or identity.name != node_id:
        raise IdentityError(
            f"the Agent dialed for node {_quote(node_id)} presented the "
            f"certificate of {identity}: is another node at that address?"
        )
    return identity


def _parse_spiffe_id(uri: str, trust_domain: str) -> Identity:
    """Scheme and trust domain compare exactly: the SPIFFE ID specification allows only lower
    case in both (go-spiffe and the other reference libraries refuse anything else), so an ID
    that differs from ours only by case is not ours."""
    if not uri.startswith(SPIFFE_SCHEME):
        lowercase = (
            " (SPIFFE IDs are lower case in scheme and trust domain)"
            if uri[: len(SPIFFE_SCHEME)].lower() == SPIFFE_SCHEME
            else ""
        )
        raise IdentityError(
            f"the peer's URI SAN {_quote(uri)} is not a SPIFFE ID{lowercase}: "
            f"expected one of {_expected_forms(trust_domain)}"
        )
    authority, _, path = uri[len(SPIFFE_SCHEME) :].partition("/")
    if authority != trust_domain:
        lowercase = (
            " (SPIFFE trust domains are lower case)" if authority.lower() == trust_domain else ""
        )
        raise IdentityError(
            f"the peer's identity {_quote(uri)} belongs to trust domain "
            f"{_quote(authority)}, not this cluster's {trust_domain!r}{lowercase}"
        )
    match path.split("/"):
        case ["scheduler"]:
            return Identity("scheduler", "", trust_domain)
        case ["agent" | "controller" as kind, name]:
            if not valid_node_id(name):
                what = "node id" if kind == "agent" else "controller name"
                raise IdentityError(
                    f"the peer's identity {_quote(uri)} has an invalid {what} "
                    f"{_quote(name)}: expected {NODE_ID_RULE}"
                )
            return Identity(kind, name, trust_domain)
    raise IdentityError(
        f"the peer's identity {_quote(uri)} is of no known kind: expected one of "
        f"{_expected_forms(trust_domain)}"
    )


def _expected_forms(trust_domain: str) -> str:
    base = f"{SPIFFE_SCHEME}{trust_domain}"
    return f"{base}/agent/<node-id>, {base}/controller/<name>, {base}/scheduler"


def _quote(text: str) -> str:
    """`text` from a peer, safe and short enough for a log line or gRPC message."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return repr(text[:_QUOTE_LIMIT]) + f"... ({len(text)} characters)"


class IdentityCache:
    """Each connection's identity, extracted once per connection rather than per call.

    Keyed weakly by the connection's ssl object (`transport.get_extra_info("ssl_object")`), so
    an entry goes away with its connection. A refusal is cached too: a peer with a bad
    certificate costs one parse, however many calls it makes.
    """

    def __init__(self) -> None:
        # ssl object -> (trust domain, identity or refusal message)
        self._by_connection: weakref.WeakKeyDictionary[object, tuple[str, Identity | str]] = (
            weakref.WeakKeyDictionary()
        )

    def identity_for(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str
    ) -> Identity:
        """The identity of the connection's peer; raises `IdentityError` if it has none."""
        if ssl_object is None:
            raise IdentityError("the connection is not TLS, so the peer has no identity")
        entry = self._by_connection.get(ssl_object)
        if entry is None or entry[0] != trust_domain:
            try:
                found: Identity | str = identity_from_peercert(
                    ssl_object.getpeercert(), trust_domain
                )
            except IdentityError as error:
                found = str(error)  # the message, not the exception: no traceback kept alive
            entry = (trust_domain, found)
            self._by_connection[ssl_object] = entry
        if isinstance(entry[1], str):
            raise IdentityError(entry[1])
        return entry[1]

    def __len__(self) -> int:
        return len(self._by_connection)


# --- authorization -----------------------------------------------------------------------------


def authorize(identity: Identity | None, method_path: str) -> None:
    """Allow `identity` to call `method_path` ("/package.Service/Method") or raise
    PERMISSION_DENIED.

    In insecure mode there is no identity and nothing to authorize: do not call this then. A
    `None` here means a TLS peer whose identity was lost, so it is refused.
    """
    service = _service_of(method_path)
    if identity is None:
        raise PermissionDenied(
            f"a peer without a verified identity may not call {_quote(method_path)}"
        )
    if service is None:
        raise PermissionDenied(
            f"{identity} may not call {_quote(method_path)}: not a gRPC method path"
        )
    if service in OPEN_SERVICES:
        return
    package = service.rpartition(".")[0]
    if package == _PACKAGE_OF_KIND.get(identity.kind):
        return
    raise PermissionDenied(
        f"{identity} may not call {_quote(method_path)}: {_WHY_NOT[identity.kind]}"
    )


class Authorizer:
    """Per call: who is calling, and may they call this method? For the gRPC server's bridge.

    Called with the connection's ssl object and the method path; returns the caller's
    `Identity` or raises a Refusal: Unauthenticated when the certificate names no acceptable
    identity, PermissionDenied when the identity may not call the method.
    """

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._identities = IdentityCache()

    def __call__(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None, method_path: str
    ) -> Identity:
        try:
            identity = self._identities.identity_for(ssl_object, self.trust_domain)
        except IdentityError as error:
            raise Unauthenticated(str(error)) from None
        authorize(identity, method_path)
        return identity

    def identify(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity | None:
        """The identity of a connection's peer, or None if its certificate names none (the
        listener counts each Agent's connections with it)."""
        try:
            return self._identities.identity_for(ssl_object, self.trust_domain)
        except IdentityError:
            return None


def check_node(identity: Identity | None, node_id: str) -> None:
    """Allow a message about node `node_id` from `identity`, or raise PERMISSION_DENIED.

    Under TLS an Agent may speak only for the node its certificate names (exact match).
    `None` is insecure mode: identities are unchecked, so it passes.
    """
    if identity is None:
        return
    if identity.kind == "agent" and identity.name == node_id:
        return
    raise PermissionDenied(
        f"{identity} may not speak for node {_quote(node_id)}: an Agent may send "
        f"only the node id its certificate names"
    )


def _service_of(method_path: str) -> str | None:
    """The service of a method path ("/pkg.Service/Method" -> "pkg.Service"); None if malformed."""
    if not method_path.startswith("/"):
        return None
    service, slash, method = method_path[1:].partition("/")
    if not slash or not service or not method or "/" in method:
        return None
    return service
