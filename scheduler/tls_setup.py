"""From configuration to TLS: the server context, the Agent-dialing context, the authorizer.

With no TLS paths configured, a development PKI is created in the data directory on first
start (and reused afterwards); the log says where the Agents' and Controllers' certificates are.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from . import pki, security
from .config import Config

log = logging.getLogger(__name__)

PKI_SUBDIR = "pki"  # inside data_dir: the generated development PKI


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_files(config: Config) -> TlsFiles:
    """The configured CA/cert/key, or the development PKI in the data directory (made once)."""
    tls = config.tls
    if tls.configured:
        return TlsFiles(Path(tls.ca), Path(tls.cert), Path(tls.key))
    directory = Path(config.server.data_dir) / PKI_SUBDIR
    fresh = not (directory / "ca.pem").exists()
    paths = pki.init_pki(directory, trust_domain=tls.trust_domain)
    log.warning("%s development PKI in %s (no [tls] paths configured): give Agents a "
                "certificate with `orka-scheduler certs issue agent NODE_ID --dir %s`; the "
                "Controller's is %s", "created a" if fresh else "using the", directory, directory,
                paths.controller("controller").cert)
    pair = paths.scheduler
    return TlsFiles(paths.ca, pair.cert, pair.key)


def server_tls(config: Config) -> tuple[ssl.SSLContext, security.Authorizer, ssl.SSLContext | None]:
    """(server context, per-call authorizer, context for dialing Agents or None for plaintext)."""
    files = tls_files(config)
    server = security.server_ssl_context(files.ca, files.cert, files.key)
    agent = None
    if config.tls.agent_plaintext:
        log.warning("dialing Agents WITHOUT TLS (tls.agent_plaintext = true): Agent identities "
                    "are not checked on those calls")
    else:
        agent = security.client_ssl_context(files.ca, files.cert, files.key)
    return server, security.Authorizer(config.tls.trust_domain), agent


async def reload_on_sighup(config: Config, server: ssl.SSLContext | None,
                           agent: ssl.SSLContext | None) -> None:
    """SIGHUP: load the certificate files again (rotation). Established connections and
    streams are untouched; new handshakes use the new certificate. A bad file is logged and the
    running material kept."""
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            if server is None:
                log.info("SIGHUP: running without TLS (--insecure): nothing to reload")
                continue
            try:
                files = tls_files(config)
                security.reload(server, files.ca, files.cert, files.key)
                if agent is not None:
                    security.reload(agent, files.ca, files.cert, files.key)
            except (security.TlsSetupError, pki.PkiError) as err:
                log.error("SIGHUP: certificates NOT reloaded, keeping the current ones: %s", err)
                continue
            log.info("SIGHUP: reloaded TLS certificates from %s", files.cert)
