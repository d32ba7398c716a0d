"""Smoke tests of the simulator (scheduler.simulator, scheduler.sim_controller) against a real
scheduler process, over 127.0.0.1, in a few seconds.

The simulator is plain asyncio and must never share a process with trio_asyncio (which this
test process imports through the other tests). So each test starts the scheduler
(`python -m scheduler serve`) and runs a driver — this very file, `python
tests/test_simulator.py SCENARIO ...` — in their own processes; the driver prints one JSON line
of what it saw and the test checks it.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARD = 30  # s: no subprocess of these tests may run longer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scheduler_process(tmp_path: Path, *, node_timeout: float, pki: Path | None = None,
                      state_directory: Path | None = None):
    """A scheduler on 127.0.0.1:PORT; yields the port. Plaintext, unless `pki` (its [tls]
    files) or `state_directory` (the default data_dir, $STATE_DIRECTORY, where `serve` makes
    its development PKI for mutual TLS)."""
    port = free_port()
    config = tmp_path / "scheduler.toml"
    data_dir = [] if state_directory else [f'data_dir = "{tmp_path / "data"}"']
    lines = ["[server]", f'listen = "127.0.0.1:{port}"', *data_dir,
             "shutdown_grace = 0.5", "[observability]", 'http_listen = ""',
             "[liveness]", f"node_timeout = {node_timeout}",
             "[scheduling]", "attempt_timeout = 2.0"]
    if pki is not None:
        lines += ["[tls]", f'ca = "{pki / "ca.pem"}"', f'cert = "{pki / "scheduler.pem"}"',
                  f'key = "{pki / "scheduler.key"}"']
    config.write_text("\n".join(lines) + "\n")
    args = [sys.executable, "-m", "scheduler", "serve", "--config", str(config)]
    if pki is None and state_directory is None:
        args.append("--insecure")
    env = {**os.environ, "STATE_DIRECTORY": str(state_directory or tmp_path / "state")}
    log = open(tmp_path / "scheduler.log", "wb")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + GUARD
        while True:
            assert proc.poll() is None, (tmp_path / "scheduler.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the scheduler did not listen"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def drive(*args: str) -> dict:
    """Run this file as a driver process; return the JSON line it printed last."""
    result = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=GUARD)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- tests ----------------------------------------------------------------------------------

def test_simulator_never_imports_trio():
    code = ("import sys, scheduler.simulator, scheduler.sim_controller; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'trio_asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=GUARD)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fleet_reports_is_placed_on_and_is_lost(tmp_path):
    """grpclib and raw-frame Agents join and report; a Controller places instances on them
    (some refused, the scheduler tries the next node); silent Agents are declared LOST."""
    with scheduler_process(tmp_path, node_timeout=1.0) as port:
        seen = drive("plain", str(port))
    assert seen["nodes_ready"] == 12, seen
    assert seen["nodes_with_metrics"] == 12, seen
    assert seen["placed"] == 10 and seen["failed"] == 0, seen
    assert seen["refused"] >= 1, seen  # the refusing Agents were asked and said no
    assert seen["lost"] == 12, seen
    assert seen["lost_notices"] == 12 and seen["rejoins"] == 0, seen
    assert max(seen["lateness_ms"]) < 1000, seen


def test_agents_over_mtls_present_their_own_certificates(tmp_path):
    """Each Agent joins with its own certificate and serves Create with it: the scheduler
    checks the certificate of the server it dials names the node."""
    from scheduler import pki

    directory = tmp_path / "pki"
    pki.init_pki(directory, agents=[f"tls-{n:05d}" for n in range(3)])
    with scheduler_process(tmp_path, node_timeout=5.0, pki=directory) as port:
        seen = drive("tls", str(port), str(directory))
    assert seen["nodes_ready"] == 3, seen
    assert seen["placed"] == 4 and seen["failed"] == 0, seen
    assert len(seen["nodes_used"]) >= 1 and all(n.startswith("tls-") for n in seen["nodes_used"])


def test_cli_with_pki_finds_the_pki_of_a_scheduler_served_with_defaults(tmp_path):
    """The README's commands: `serve` makes its development PKI in the default data_dir;
    `simulator agents --pki` and `simulator controller --pki` (no DIR) find it, join over
    mTLS and place instances; progress is logged at INFO and shown by default."""
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(state)}
    with scheduler_process(tmp_path, node_timeout=5.0, state_directory=state) as port:
        address = f"127.0.0.1:{port}"
        agents = subprocess.Popen(
            [sys.executable, "-m", "scheduler.simulator", "agents", "--scheduler", address,
             "--count", "3", "--pki", "--stats-every", "0.3"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            arriving: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(
                target=lambda: [arriving.put(line) for line in agents.stderr], daemon=True)
            reader.start()
            lines: list[str] = []
            deadline = time.monotonic() + GUARD
            while not any("streaming 3/3" in line for line in lines):
                try:
                    lines.append(arriving.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    raise AssertionError("no 'streaming 3/3' line:\n" + "".join(lines)) from None
            placed = subprocess.run(
                [sys.executable, "-m", "scheduler.simulator", "controller", "--scheduler",
                 address, "--pki", "--count", "5"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=GUARD)
            agents.send_signal(signal.SIGINT)
            agents.wait(GUARD)
            reader.join(GUARD)  # it ends at the end of the output
            while not arriving.empty():
                lines.append(arriving.get())
        finally:
            if agents.poll() is None:
                agents.kill()
                agents.wait()
    assert placed.returncode == 0, placed.stderr
    report = json.loads(placed.stdout.splitlines()[-1])["schedule"]
    assert (report["placed"], report["failed"]) == (5, 0), report
    assert agents.returncode == 0, "".join(lines)
    assert " INFO    3 agents up in " in lines[0], lines[0]
    assert any(" INFO    streaming 3/3, " in line for line in lines), "".join(lines)
    assert " INFO    leaving: 3 of 3 acknowledged" in lines[-1], "".join(lines)
    assert not any("WARNING" in line for line in lines), "".join(lines)


def test_cli_with_pki_and_no_pki_there_says_so_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(tmp_path / "none")}
    result = subprocess.run([sys.executable, "-m", "scheduler.simulator", "agents", "--pki"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=GUARD)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"simulator: {tmp_path / 'none' / 'pki' / 'trust_domain'} "
                                    "is missing"), result.stderr


# --- the driver (runs in its own process, plain asyncio) ---------------------------------------

async def _plain(port: int) -> dict:
    from scheduler.sim_controller import SimController
    from scheduler.simulator import AgentGroup, Behaviour, node_ids

    scheduler = ("127.0.0.1", port)
    refusing = AgentGroup(node_ids(2, "refuse"), scheduler, rate=5,
                          behaviour=Behaviour(refuse=1.0))
    # Half the Creates refused, at random: some placements take several attempts.
    accepting = AgentGroup(node_ids(6, "accept"), scheduler, rate=5,
                           behaviour=Behaviour(refuse=0.5, lifetime=0.0))
    raw = AgentGroup(node_ids(4, "raw"), scheduler, rate=5, raw=True,
                     behaviour=Behaviour(refuse=0.5, lifetime=0.0))
    groups = (refusing, accepting, raw)
    controller = SimController(scheduler)
    try:
        for group in groups:
            await group.start()
        await asyncio.sleep(0.5)
        nodes = await controller.list_nodes()
        report = await controller.schedule_many(10, 3, memory=None, cpu=None, timeout=10)
        lost: dict[str, float] = {}
        snapshot = asyncio.Event()

        async def watch() -> None:
            async for arrived, event in controller.watch():
                if event.WhichOneof("event") == "snapshot":
                    snapshot.set()
                elif event.WhichOneof("event") == "node" and event.node.kind == 3:
                    node = event.node.node
                    lost.setdefault(node.id, (arrived - node.last_seen_unix - 1.0) * 1000)

        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(snapshot.wait(), 5)
        for group in groups:
            group.set_silent(True)
        deadline = time.monotonic() + 5
        while len(lost) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the Agents hear that their streams ended
        watcher.cancel()
        stats = [group.stats() for group in groups]
        return {
            "nodes_ready": sum(1 for n in nodes if n.state == 0),
            "nodes_with_metrics": sum(1 for n in nodes if n.memory_total > 0),
            "placed": report.placed, "failed": report.failed, "errors": report.errors,
            "refused": sum(s["refused"] for s in stats), "lost": len(lost),
            "lateness_ms": sorted(lost.values()),
            "lost_notices": sum(s["lost_notices"] for s in stats),
            "rejoins": sum(s["rejoins"] for s in stats),
        }
    finally:
        controller.close()
        for group in groups:
            await group.close()


async def _tls(port: int, directory: str) -> dict:
    from scheduler.sim_controller import SimController
    from scheduler.simulator import AgentGroup, AgentTls, Behaviour, node_ids

    scheduler = ("127.0.0.1", port)
    group = AgentGroup(node_ids(3, "tls"), scheduler, rate=2, tls=AgentTls(Path(directory)),
                       behaviour=Behaviour(lifetime=0.0))
    controller = SimController(scheduler, pki=directory)
    try:
        await group.start()
        await asyncio.sleep(0.3)
        nodes = await controller.list_nodes()
        placements = []
        report = await controller.schedule_many(4, 2, timeout=10, on_placement=placements.append)
        return {"nodes_ready": sum(1 for n in nodes if n.state == 0), "placed": report.placed,
                "failed": report.failed, "errors": report.errors,
                "nodes_used": sorted({p.node_id for p in placements if p.node_id})}
    finally:
        controller.close()
        await group.close()


if __name__ == "__main__":
    scenario, *rest = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    outcome = asyncio.run(_plain(int(rest[0])) if scenario == "plain"
                          else _tls(int(rest[0]), rest[1]))
    print(json.dumps(outcome))
