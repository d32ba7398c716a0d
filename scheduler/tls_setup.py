"""From configuration to TLS: the server context, the Agent-dialing context, the authorizer.

With no TLS paths configured, a development PKI is created in the data directory on first
start (and reused afterwards); the log says where the Agents' and Controllers' certificates are.
Configured files are checked before use (`configured_files`, also run by `check-config`), so a
missing file, a key that is not the certificate's or an expired certificate is reported with
its key and path instead of as an OpenSSL error.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from . import pki, security
from .config import Config, ConfigError

log = logging.getLogger(__name__)

PKI_SUBDIR = "pki"  # inside data_dir: the generated development PKI
TLS_KEYS = ("tls.ca", "tls.cert", "tls.key")  # how the configuration names the three files
ETCD_KEYS = ("etcd.ca", "etcd.cert", "etcd.key")  # TLS to etcd (store.backend = "etcd")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def development_pki(config: Config) -> Path:
    """Where `serve` keeps the development PKI it generates: `<data_dir>/pki`."""
    return Path(config.server.data_dir) / PKI_SUBDIR


def configured_files(config: Config) -> TlsFiles | None:
    """The [tls] files, checked (see `check_ca`, `check_pair`); None when none are configured
    (the development PKI). Raises ConfigError naming the key and the path at fault."""
    tls = config.tls
    if not tls.configured:
        return None
    files = TlsFiles(Path(tls.ca), Path(tls.cert), Path(tls.key))
    check_ca(files.ca, TLS_KEYS[0])
    check_pair(files.cert, files.key, TLS_KEYS[1], TLS_KEYS[2])
    return files


def etcd_files(config: Config) -> tuple[Path, pki.CertPair | None] | None:
    """The [etcd] TLS files, checked like [tls]'s: (CA of etcd's certificates, our client
    certificate and key if set); None when etcd is spoken to in plaintext."""
    etcd = config.etcd
    if config.store.backend != "etcd" or not etcd.ca:
        return None
    check_ca(Path(etcd.ca), ETCD_KEYS[0])
    if not etcd.cert:
        return Path(etcd.ca), None
    check_pair(Path(etcd.cert), Path(etcd.key), ETCD_KEYS[1], ETCD_KEYS[2])
    return Path(etcd.ca), pki.CertPair(Path(etcd.cert), Path(etcd.key))


def etcd_tls(config: Config) -> ssl.SSLContext | None:
    """The context for TLS to etcd (None: plaintext): etcd's certificates checked against
    `etcd.ca` (and their host names), our client certificate if set, ALPN h2 (etcd's gRPC
    server expects it). Raises ConfigError naming the key and path at fault."""
    files = etcd_files(config)
    if files is None:
        return None
    ca, pair = files
    context = ssl.create_default_context(cafile=ca)
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    context.set_alpn_protocols(["h2"])
    return context


def reload_etcd_tls(config: Config, context: ssl.SSLContext) -> Path:
    """Load the [etcd] files again into `context` (SIGHUP); the path of what was loaded.
    New connections to etcd use them; a connection already open keeps its handshake. Files
    that do not check out raise ConfigError and leave `context` as it was."""
    files = etcd_files(config)
    assert files is not None, "an etcd TLS context exists only when etcd.ca is set"
    ca, pair = files
    for target in (ssl.create_default_context(), context):  # a scratch context first
        target.load_verify_locations(cafile=ca)
        if pair is not None:
            target.load_cert_chain(pair.cert, pair.key)
    return pair.cert if pair is not None else ca


def check_ca(path: Path, name: str) -> None:
    """`path` holds at least one PEM certificate; else ConfigError(`name`, what is wrong)."""
    data = _read(path, name)  # outside the try: ConfigError is a ValueError
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(name, f"{path} holds no PEM certificate") from None


def check_pair(
    cert_path: Path, key_path: Path, cert_name: str, key_name: str, now: dt.datetime | None = None
) -> None:
    """A PEM certificate valid at `now`, and its unencrypted private key; else ConfigError
    naming the key (`cert_name` or `key_name`) and the path at fault."""
    cert_pem, key_pem = _read(cert_path, cert_name), _read(key_path, key_name)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(cert_name, f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # encrypted: the scheduler runs unattended, nobody can type a passphrase
        raise ConfigError(
            key_name,
            f"{key_path} is encrypted: give an unencrypted key "
            "(readable by the scheduler's user only)",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(key_name, f"{key_path} holds no PEM private key") from None
    if cert.public_key() != key.public_key():
        raise ConfigError(
            key_name, f"{key_path} is not the private key of {cert_name} ({cert_path})"
        )
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            cert_name, f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            cert_name,
            f"{cert_path} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this "
            "machine's clock right?)",
        )


def _read(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, f"{path}: no such file") from None
    except OSError as err:
        raise ConfigError(name, f"{path}: cannot read: {err.strerror or err}") from None


def tls_files(config: Config) -> TlsFiles:
    """The configured CA/cert/key (checked), or the development PKI in the data directory
    (made once)."""
    files = configured_files(config)
    if files is not None:
        return files
    tls = config.tls
    directory = development_pki(config)
    fresh = not (directory / "ca.pem").exists()
    paths = pki.init_pki(directory, trust_domain=tls.trust_domain)
    log.warning(
        "%s development PKI in %s (no [tls] paths configured): give Agents a "
        "certificate with `orka-scheduler certs issue agent NODE_ID --dir %s`; the "
        "Controller's is %s",
        "created a" if fresh else "using the",
        directory,
        directory,
        paths.controller("controller").cert,
    )
    pair = paths.scheduler
    return TlsFiles(paths.ca, pair.cert, pair.key)


def server_tls(config: Config) -> tuple[ssl.SSLContext, security.Authorizer, ssl.SSLContext | None]:
    """(server context, per-call authorizer, context for dialing Agents or None for plaintext)."""
    files = tls_files(config)
    server = security.server_ssl_context(files.ca, files.cert, files.key)
    agent = None
    if config.tls.agent_plaintext:
        log.warning(
            "dialing Agents WITHOUT TLS (tls.agent_plaintext = true): Agent identities "
            "are not checked on those calls"
        )
    else:
        agent = security.client_ssl_context(files.ca, files.cert, files.key)
    return server, security.Authorizer(config.tls.trust_domain), agent


async def reload_on_sighup(
    config: Config,
    server: ssl.SSLContext | None,
    agent: ssl.SSLContext | None,
    etcd: ssl.SSLContext | None = None,
) -> None:
    """SIGHUP: load the certificate files again (rotation): [tls]'s for gRPC, [etcd]'s for
    etcd. Established connections and streams are untouched; new handshakes use the new
    certificates. A bad file is logged and the running material kept."""
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            if server is None and etcd is None:
                log.info("SIGHUP: running without TLS (--insecure): nothing to reload")
            if server is not None:
                _reload_grpc(config, server, agent)
            if etcd is not None:
                try:
                    loaded = reload_etcd_tls(config, etcd)
                except (ConfigError, ssl.SSLError, OSError) as err:
                    log.error(
                        "SIGHUP: etcd certificates NOT reloaded, keeping the current ones: %s", err
                    )
                else:
                    log.info(
                        "SIGHUP: reloaded etcd TLS certificates from %s (used by new "
                        "connections to etcd)",
                        loaded,
                    )


def _reload_grpc(config: Config, server: ssl.SSLContext, agent: ssl.SSLContext | None) -> None:
    try:
        files = tls_files(config)
        security.reload(server, files.ca, files.cert, files.key)
        if agent is not None:
            security.reload(agent, files.ca, files.cert, files.key)
    except (ConfigError, security.TlsSetupError, pki.PkiError) as err:
        log.error("SIGHUP: certificates NOT reloaded, keeping the current ones: %s", err)
        return
    log.info("SIGHUP: reloaded TLS certificates from %s", files.cert)
