"""Development PKI: a cluster CA and SPIFFE-style certificates for the scheduler, Agents and
Controllers (SPEC §3, `orka-scheduler certs init DIR`).

Every certificate carries exactly one URI SAN, its identity (see `scheduler.security`); DNS and
IP SANs are extras for clients that check host names (official grpcio clients do). Keys are EC
P-256, signatures ECDSA with SHA-256.

Layout of a PKI directory (directories 0700 when created here, keys 0600, the rest 0644):

    trust_domain              the trust domain, one line: later commands read it from here
    ca.pem, ca.key            the cluster CA; never overwritten once it exists
    scheduler.pem, .key       server + client: spiffe://<td>/scheduler
    agents/<node-id>.pem, .key          client + server: spiffe://<td>/agent/<node-id>
    controllers/<name>.pem, .key        client: spiffe://<td>/controller/<name>

`init_pki` is idempotent: it keeps every certificate that is still usable (present, issued by
this CA, unexpired, matching its key and the names it would get now) and issues the others, so
`serve` may call it on every start. `issue_agent` / `issue_controller` always issue a fresh pair: an
operator asking for a certificate wants a new one (a lost or leaked key).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scheduler.names import (
    DEFAULT_TRUST_DOMAIN,
    NODE_ID_RULE,
    TRUST_DOMAIN_RULE,
    valid_node_id,
    valid_trust_domain,
)
from scheduler.security import Identity

DEFAULT_SCHEDULER_HOSTS = ("localhost", "127.0.0.1", "::1")  # local clients dial one of these
CA_DAYS = 3650  # ten years: a development CA should outlive every cluster built on it
LEAF_DAYS = 365  # one year: long enough for development, short enough that rotation is practised
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before in the past: peers with a slow clock accept it
CURVE = ec.SECP256R1()  # P-256: accepted by every TLS stack we meet (OpenSSL, grpcio's BoringSSL)
SIGNATURE_HASH = hashes.SHA256()  # ECDSA-with-SHA256, the pairing TLS expects for P-256
MAX_NAME_ATTRIBUTE = 64  # X.520 upper bound for CN and O; node ids may be longer (253)
NAME_MAX = 255  # bytes in a file name on Linux file systems: bounds `<node-id>.pem`

KEY_MODE = 0o600  # private keys: owner only
CERT_MODE = 0o644  # certificates and the trust domain are public
DIR_MODE = 0o700  # the CA key lives here: no one else needs to list it

TRUST_DOMAIN_FILE = "trust_domain"
AGENTS_DIR = "agents"
CONTROLLERS_DIR = "controllers"


class PkiError(Exception):
    """The PKI directory cannot be created or used as asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class CertPair:
    """Where one certificate and its private key live."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """The files of one PKI directory (see the module docstring for the layout)."""

    directory: Path
    trust_domain: str

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PkiPaths:
        """The PKI made earlier by `init_pki` in `directory`, with its recorded trust domain."""
        directory = Path(directory)
        return cls(directory, read_trust_domain(directory))

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def scheduler(self) -> CertPair:
        return _pair(self.directory, "scheduler")

    def agent(self, node_id: str) -> CertPair:
        _check_name(node_id, "node id")
        return _pair(self.directory / AGENTS_DIR, node_id)

    def controller(self, name: str) -> CertPair:
        _check_name(name, "controller name")
        return _pair(self.directory / CONTROLLERS_DIR, name)


def init_pki(
    directory: str | os.PathLike[str],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    agents: Iterable[str] = (),
    controllers: Iterable[str] = ("controller",),
    scheduler_hosts: Iterable[str] = DEFAULT_SCHEDULER_HOSTS,
    days: int = LEAF_DAYS,
) -> PkiPaths:
    """Create (or complete) a development PKI in `directory` and return its paths.

    An existing CA is always kept; its recorded trust domain must equal `trust_domain`.
    """
    if not valid_trust_domain(trust_domain):
        raise PkiError(f"invalid trust domain {trust_domain!r}: expected {TRUST_DOMAIN_RULE}")
    _check_days(days)
    agents, controllers = tuple(agents), tuple(controllers)
    paths = PkiPaths(Path(directory), trust_domain)
    for node_id in agents:
        paths.agent(node_id)  # validates the id and its file names before anything is written
    for name in controllers:
        paths.controller(name)
    hosts = _scheduler_sans(scheduler_hosts)

    _make_private_dir(paths.directory)
    ca = _ensure_ca(paths)
    _ensure_leaf(
        ca,
        paths.scheduler,
        Identity("scheduler", "", trust_domain),
        hosts,
        (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        days,
    )
    for node_id in agents:
        _ensure_leaf(
            ca,
            _agent_pair(paths, node_id),
            Identity("agent", node_id, trust_domain),
            _agent_sans(node_id),
            _AGENT_USAGES,
            days,
        )
    for name in controllers:
        _ensure_leaf(
            ca,
            _controller_pair(paths, name),
            Identity("controller", name, trust_domain),
            (),
            _CONTROLLER_USAGES,
            days,
        )
    return paths


def issue_agent(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    trust_domain: str | None = None,
    days: int = LEAF_DAYS,
) -> CertPair:
    """Issue a fresh certificate for Agent `node_id` from the CA in `directory`.

    `trust_domain` defaults to the one recorded by `init_pki`; a different one is refused.
    """
    _check_name(node_id, "node id")
    paths = _existing_pki(directory, trust_domain)
    pair = _agent_pair(paths, node_id)
    _issue_leaf(
        _load_ca(paths),
        pair,
        Identity("agent", node_id, paths.trust_domain),
        _agent_sans(node_id),
        _AGENT_USAGES,
        days,
    )
    return pair


def issue_controller(
    directory: str | os.PathLike[str],
    name: str,
    *,
    trust_domain: str | None = None,
    days: int = LEAF_DAYS,
) -> CertPair:
    """Issue a fresh certificate for Controller `name` from the CA in `directory`."""
    _check_name(name, "controller name")
    paths = _existing_pki(directory, trust_domain)
    pair = _controller_pair(paths, name)
    _issue_leaf(
        _load_ca(paths),
        pair,
        Identity("controller", name, paths.trust_domain),
        (),
        _CONTROLLER_USAGES,
        days,
    )
    return pair


def read_trust_domain(directory: str | os.PathLike[str]) -> str:
    """The trust domain `init_pki` recorded in `directory`."""
    path = Path(directory) / TRUST_DOMAIN_FILE
    try:
        trust_domain = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise PkiError(
            f"{path} is missing: is {directory} a PKI made by 'orka-scheduler certs init'?"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PkiError(f"cannot read {path}: {error}") from None
    if not valid_trust_domain(trust_domain):
        raise PkiError(
            f"{path} holds {trust_domain!r}, not a trust domain: expected {TRUST_DOMAIN_RULE}"
        )
    return trust_domain


# Agents also serve node_agent.WorkloadService to the scheduler, so they need serverAuth too.
_AGENT_USAGES = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)
_CONTROLLER_USAGES = (ExtendedKeyUsageOID.CLIENT_AUTH,)
_LOOPBACKS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # RSA: a CA an operator brought along


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: x509.Certificate
    key: CaKey


def _pair(directory: Path, stem: str) -> CertPair:
    if len(f"{stem}.pem") > NAME_MAX:
        raise PkiError(
            f"name {stem[:20]!r}... ({len(stem)} characters) is too long for a file "
            f"name: certificates can be issued for names of up to {NAME_MAX - 4}"
        )
    return CertPair(directory / f"{stem}.pem", directory / f"{stem}.key")


def _agent_pair(paths: PkiPaths, node_id: str) -> CertPair:
    _make_private_dir(paths.directory / AGENTS_DIR)
    return paths.agent(node_id)


def _controller_pair(paths: PkiPaths, name: str) -> CertPair:
    _make_private_dir(paths.directory / CONTROLLERS_DIR)
    return paths.controller(name)


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"a certificate must be valid for at least 1 day, not {days}")


def _check_name(name: object, what: str) -> None:
    if not valid_node_id(name):
        raise PkiError(f"invalid {what} {name!r}: expected {NODE_ID_RULE}")


def _existing_pki(directory: str | os.PathLike[str], trust_domain: str | None) -> PkiPaths:
    paths = PkiPaths.load(directory)
    if trust_domain is not None and trust_domain != paths.trust_domain:
        raise PkiError(
            f"the CA in {paths.directory} belongs to trust domain "
            f"{paths.trust_domain!r}, not {trust_domain!r}"
        )
    return paths


# --- the CA ------------------------------------------------------------------------------------


def _ensure_ca(paths: PkiPaths) -> _Ca:
    """Load the CA in `paths`, or create it if neither of its files exists."""
    td_file = paths.directory / TRUST_DOMAIN_FILE
    if td_file.exists():
        recorded = read_trust_domain(paths.directory)
        if recorded != paths.trust_domain:
            raise PkiError(
                f"the CA in {paths.directory} belongs to trust domain {recorded!r}, "
                f"not {paths.trust_domain!r}: pass trust_domain={recorded!r} or use "
                f"another directory"
            )
    if paths.ca.exists() or paths.ca_key.exists():
        ca = _load_ca(paths)
    else:
        ca = _new_ca(paths.trust_domain)
        # Key first: a crash in between leaves a lone key, which _load_ca reports.
        _write_file(paths.ca_key, _key_pem(ca.key), KEY_MODE, replace=False)
        _write_file(
            paths.ca, ca.cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, replace=False
        )
    if not td_file.exists():
        _write_file(td_file, f"{paths.trust_domain}\n".encode("ascii"), CERT_MODE)
    return ca


def _new_ca(trust_domain: str) -> _Ca:
    key = ec.generate_private_key(CURVE)
    name = _name("orka development CA", trust_domain)
    not_before = _now() - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CLOCK_SKEW + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, SIGNATURE_HASH)
    )
    return _Ca(cert, key)


def _load_ca(paths: PkiPaths) -> _Ca:
    for path in (paths.ca, paths.ca_key):
        if not path.exists():
            other = paths.ca_key if path == paths.ca else paths.ca
            raise PkiError(
                f"{path} is missing but {other} exists: restore it, or remove "
                f"{other} to create a new CA (every certificate must then be reissued)"
            )
    try:
        cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise PkiError(f"cannot load the CA in {paths.directory}: {error}") from None
    if not isinstance(key, CaKey):
        raise PkiError(f"{paths.ca_key} is a {type(key).__name__}: a CA key must be EC or RSA")
    if not _key_matches(cert, key):
        raise PkiError(f"{paths.ca_key} is not the key of {paths.ca}")
    return _Ca(cert, key)


# --- leaf certificates -------------------------------------------------------------------------


def _ensure_leaf(
    ca: _Ca,
    pair: CertPair,
    identity: Identity,
    sans: Iterable[x509.GeneralName],
    usages: tuple[x509.ObjectIdentifier, ...],
    days: int,
) -> None:
    sans = list(sans)
    if not _usable_leaf(ca, pair, [x509.UniformResourceIdentifier(identity.uri), *sans]):
        _issue_leaf(ca, pair, identity, sans, usages, days)


def _usable_leaf(ca: _Ca, pair: CertPair, names: list[x509.GeneralName]) -> bool:
    """True if `pair` holds an unexpired certificate from `ca` with exactly `names` as SANs,
    and its key. Anything else is reissued: a changed host name, a new CA, a lost key."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca.cert)
        found = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        isinstance(key, ec.EllipticCurvePrivateKey)
        and _key_matches(cert, key)
        and set(found) == set(names)
        and cert.not_valid_after_utc > _now()
    )


def _issue_leaf(
    ca: _Ca,
    pair: CertPair,
    identity: Identity,
    sans: Iterable[x509.GeneralName],
    usages: tuple[x509.ObjectIdentifier, ...],
    days: int,
) -> None:
    _check_days(days)
    key = ec.generate_private_key(CURVE)
    not_before = _now() - CLOCK_SKEW
    not_after = min(not_before + CLOCK_SKEW + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    try:
        ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        # ca.key is the key of ca.cert (checked on load), so this is the cert's public key.
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{identity.kind} {identity.name}".strip(), identity.trust_domain))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri), *sans]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority, critical=False)
        .sign(ca.key, SIGNATURE_HASH)
    )
    # Key first, so a reader never finds the new certificate next to the old key for long.
    _write_file(pair.key, _key_pem(key), KEY_MODE)
    _write_file(pair.cert, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _agent_sans(node_id: str) -> list[x509.GeneralName]:
    """DNS SAN for the node id when it is a host name, plus loopback IPs for local Agents."""
    sans: list[x509.GeneralName] = []
    if _valid_hostname(node_id) and not _is_ip(node_id):
        sans.append(x509.DNSName(node_id.lower()))
    sans.extend(x509.IPAddress(ip) for ip in _LOOPBACKS)
    return sans


def _scheduler_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """DNS/IP SANs for `hosts` and this machine's host name (skipped if it is not a DNS name)."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        san = _host_san(host)
        if san is None:
            raise PkiError(f"scheduler host {host!r} is neither an IP address nor a DNS name")
        sans.append(san)
    machine = _host_san(socket.gethostname())
    if machine is not None:
        sans.append(machine)
    return list(dict.fromkeys(sans))  # drop duplicates, keep order


def _host_san(host: str) -> x509.GeneralName | None:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    return x509.DNSName(host.lower()) if _valid_hostname(host) else None


def _valid_hostname(text: str) -> bool:
    """RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens."""
    if not text or len(text) > 253 or not text.isascii():
        return False
    return all(
        0 < len(label) <= 63
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in text.split(".")
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- small helpers -----------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, trust_domain: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, f"orka {trust_domain}"[:MAX_NAME_ATTRIBUTE]
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:MAX_NAME_ATTRIBUTE]),
        ]
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_matches(cert: x509.Certificate, key: CaKey) -> bool:
    return cert.public_key() == key.public_key()


def _key_pem(key: CaKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700; an existing directory is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise PkiError(f"{path} exists and is not a directory") from None
        return
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically, with `mode` from the first byte on.

    The content goes to a fresh temporary file in the same directory, created with `mode` and
    O_EXCL, then takes the final name: `replace=False` refuses to clobber an existing file.
    """
    tmp = path.with_name(f".{secrets.token_hex(8)}.tmp")  # short: `path.name` may be near NAME_MAX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have dropped bits of `mode`
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PkiError(
                    f"{path} appeared while it was being created: is another "
                    f"'certs init' running on {path.parent}?"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)
