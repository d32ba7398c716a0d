"""Smoke tests of the simulator (scheduler.sim.simulator, scheduler.sim.sim_controller) against
a real scheduler process, over 127.0.0.1, in a few seconds.

The simulator is plain asyncio and must never share a process with trio_asyncio (which this
test process imports through the other tests). So each test starts the scheduler
(`python -m scheduler serve`) and runs a driver — this very file, `python
tests/sim/test_simulator.py SCENARIO ...` — in their own processes; the driver prints one JSON line
of what it saw and the test checks it.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

ROOT = Path(__file__).resolve().parents[2]
GUARD = 30  # s: no subprocess of these tests may run longer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scheduler_process(
    tmp_path: Path,
    *,
    node_timeout: float,
    pki: Path | None = None,
    state_directory: Path | None = None,
    port: int | None = None,
):
    """A scheduler on 127.0.0.1:PORT (`port`, or a free one); yields the port. Its data
    directory is `tmp_path`/data: a second one there after the first continues its state.
    Plaintext, unless `pki` (its [tls] files) or `state_directory` (the default data_dir,
    $STATE_DIRECTORY, where `serve` makes its development PKI for mutual TLS)."""
    port = port or free_port()
    config = tmp_path / "scheduler.toml"
    data_dir = [] if state_directory else [f'data_dir = "{tmp_path / "data"}"']
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        *data_dir,
        "shutdown_grace = 0.5",
        "[observability]",
        'http_listen = ""',
        "[liveness]",
        f"node_timeout = {node_timeout}",
        "[scheduling]",
        "attempt_timeout = 2.0",
    ]
    if pki is not None:
        lines += [
            "[tls]",
            f'ca = "{pki / "ca.pem"}"',
            f'cert = "{pki / "scheduler.pem"}"',
            f'key = "{pki / "scheduler.key"}"',
        ]
    config.write_text("\n".join(lines) + "\n")
    args = [sys.executable, "-m", "scheduler", "serve", "--config", str(config)]
    if pki is None and state_directory is None:
        args.append("--insecure")
    env = {**os.environ, "STATE_DIRECTORY": str(state_directory or tmp_path / "state")}
    log = open(tmp_path / "scheduler.log", "ab")
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


def start_simulator(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`python -m scheduler.sim.simulator ARGS`, running, its stderr (the log) piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler.sim.simulator", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_simulator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m scheduler.sim.simulator ARGS` to its end, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler.sim.simulator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=GUARD,
    )


class StderrLines:
    """A subprocess's stderr lines as they arrive (a thread reads them)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._arriving: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(
            target=lambda: [self._arriving.put(line) for line in process.stderr], daemon=True
        )
        self._reader.start()

    def until(self, text: str) -> list[str]:
        """The lines so far, once one holds `text` (within GUARD seconds)."""
        deadline = time.monotonic() + GUARD
        while not any(text in line for line in self.lines):
            try:
                self.lines.append(self._arriving.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} line:\n" + "".join(self.lines)) from None
        return self.lines

    def rest(self) -> list[str]:
        """Every line, once the process has ended its output."""
        self._reader.join(GUARD)
        while not self._arriving.empty():
            self.lines.append(self._arriving.get())
        return self.lines


def drive(*args: str) -> dict:
    """Run this file as a driver process; return the JSON line it printed last."""
    result = subprocess.run(
        [sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True, timeout=GUARD
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- tests ----------------------------------------------------------------------------------


def test_simulator_never_imports_trio():
    code = (
        "import sys, scheduler.sim.simulator, scheduler.sim.sim_controller; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'trio_asyncio')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=GUARD
    )
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
        agents = start_simulator(
            env, "agents", "--scheduler", address, "--count", "3", "--pki", "--stats-every", "0.3"
        )
        try:
            output = StderrLines(agents)
            output.until("streaming 3/3")
            placed = run_simulator(
                env, "controller", "--scheduler", address, "--pki", "--count", "5"
            )
            agents.send_signal(signal.SIGINT)
            agents.wait(GUARD)
            lines = output.rest()
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


def test_agents_and_controller_follow_the_leader_across_a_failover(tmp_path):
    """Agents and a Controller given a dead address and a standby follow the standby to FIRST;
    a fresh Controller's Schedule and Stop go to the standby first, then to the leader it
    names. FIRST stops; while the standby names no leader everyone keeps asking (but a
    Schedule it refuses is not sent again: it may be a leader's own answer); SECOND (the
    same data directory, another port) starts and the standby names it: the Agents rejoin it
    keeping their instances, the watch resumes there losing nothing, and a Stop reaches an
    instance placed by FIRST."""
    seen = drive("failover", str(tmp_path))
    first, second, dead, standby = seen["first"], seen["second"], seen["dead"], seen["standby"]
    lines = seen["lines"]
    assert any(line.startswith(f"{dead} unavailable, trying {standby}") for line in lines), lines
    assert any(line.startswith(f"following leader at {first}") for line in lines), lines
    assert any(line.startswith(f"following leader at {second}") for line in lines), lines
    assert seen["nodes_before"] == 3 and seen["placed"] == 3, seen
    # The fresh Controllers asked the standby once each (then they knew the leader), and a
    # lone one during the election once: a standby naming no leader is not asked again.
    assert (seen["standby_calls"]["Schedule"], seen["standby_calls"]["Stop"]) == (2, 1), seen
    assert seen["unanswered"] == [
        "UNAVAILABLE: standby: not the leader; leader at (none yet)",
        1,
    ], seen["unanswered"]
    assert seen["standby_calls"]["JoinCluster"] >= 1 and seen["standby_calls"]["ListNodes"] >= 1

    events = seen["events"]
    assert [e["kind"] for e in events].count("SNAPSHOT") == 1 and events[0]["kind"] == "SNAPSHOT"
    assert len(seen["epochs"]) == 1, seen["epochs"]
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(set(revisions)), revisions
    before = [e for e in events if e["revision"] <= seen["last_revision_before"]]
    after = [e for e in events if e["revision"] > seen["last_revision_before"]]
    assert sorted(e["instance"] for e in before if e["kind"] == "INSTANCE") == [
        "ha-0",
        "ha-1",
        "ha-2",
    ], before
    assert sorted(e["node"] for e in after if e["kind"] == "JOINED") == [
        "ha-00000",
        "ha-00001",
        "ha-00002",
    ], after
    assert [(e["instance"], e["code"]) for e in after if e["kind"] == "INSTANCE"] == [
        ("ha-0", "TERMINATED")
    ], after

    held_before, held_after = seen["held_before"], seen["held_after"]
    assert sorted(i for held in held_before.values() for i in held) == ["ha-0", "ha-1", "ha-2"]
    assert held_after == {
        node: [i for i in held if i != "ha-0"] for node, held in held_before.items()
    }, (held_before, held_after)
    for node, (state, instances) in seen["nodes_after"].items():
        assert state == 0, seen["nodes_after"]  # READY on SECOND
        assert [i for i in instances if i != "ha-0"] == held_after[node], seen["nodes_after"]


def test_cli_agents_and_controller_take_several_addresses(tmp_path):
    """`--address DEAD,LEADER` for `agents`, and the old `--scheduler` name (with a list) for
    `controller`: both go past the dead address, say so, and do their work."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dead = f"127.0.0.1:{free_port()}"
    with scheduler_process(tmp_path, node_timeout=5.0) as port:
        addresses = f"{dead},127.0.0.1:{port}"
        agents = start_simulator(
            env,
            "agents",
            "--address",
            addresses,
            "--count",
            "2",
            "--insecure",
            "--stats-every",
            "0.3",
        )
        try:
            lines = StderrLines(agents).until("streaming 2/2")
            placed = run_simulator(
                env, "controller", "--scheduler", addresses, "--insecure", "--count", "3"
            )
        finally:
            agents.send_signal(signal.SIGINT)
            agents.wait(GUARD)
    assert placed.returncode == 0, placed.stderr
    report = json.loads(placed.stdout.splitlines()[-1])["schedule"]
    assert (report["placed"], report["failed"]) == (3, 0), report
    switch = f" INFO    {dead} unavailable, trying 127.0.0.1:{port}"
    assert any(switch in line for line in lines), "".join(lines)
    assert switch in placed.stderr, placed.stderr


def test_cli_with_pki_and_no_pki_there_says_so_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(tmp_path / "none")}
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.sim.simulator", "agents", "--pki"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        f"simulator: {tmp_path / 'none' / 'pki' / 'trust_domain'} is missing"
    ), result.stderr


# --- the driver (runs in its own process, plain asyncio) ---------------------------------------


async def _plain(port: int) -> dict:
    from scheduler.sim.sim_controller import SimController
    from scheduler.sim.simulator import AgentGroup, Behaviour, node_ids

    scheduler = ("127.0.0.1", port)
    refusing = AgentGroup(node_ids(2, "refuse"), scheduler, rate=5, behaviour=Behaviour(refuse=1.0))
    # Half the Creates refused, at random: some placements take several attempts.
    accepting = AgentGroup(
        node_ids(6, "accept"), scheduler, rate=5, behaviour=Behaviour(refuse=0.5, lifetime=0.0)
    )
    raw = AgentGroup(
        node_ids(4, "raw"),
        scheduler,
        rate=5,
        raw=True,
        behaviour=Behaviour(refuse=0.5, lifetime=0.0),
    )
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
            "placed": report.placed,
            "failed": report.failed,
            "errors": report.errors,
            "refused": sum(s["refused"] for s in stats),
            "lost": len(lost),
            "lateness_ms": sorted(lost.values()),
            "lost_notices": sum(s["lost_notices"] for s in stats),
            "rejoins": sum(s["rejoins"] for s in stats),
        }
    finally:
        controller.close()
        for group in groups:
            await group.close()


async def _tls(port: int, directory: str) -> dict:
    from scheduler.sim.sim_controller import SimController
    from scheduler.sim.simulator import AgentGroup, AgentTls, Behaviour, node_ids

    scheduler = ("127.0.0.1", port)
    group = AgentGroup(
        node_ids(3, "tls"),
        scheduler,
        rate=2,
        tls=AgentTls(Path(directory)),
        behaviour=Behaviour(lifetime=0.0),
    )
    controller = SimController(scheduler, pki=directory)
    try:
        await group.start()
        await asyncio.sleep(0.3)
        nodes = await controller.list_nodes()
        placements = []
        report = await controller.schedule_many(4, 2, timeout=10, on_placement=placements.append)
        return {
            "nodes_ready": sum(1 for n in nodes if n.state == 0),
            "placed": report.placed,
            "failed": report.failed,
            "errors": report.errors,
            "nodes_used": sorted({p.node_id for p in placements if p.node_id}),
        }
    finally:
        controller.close()
        await group.close()


async def _failover(tmp: Path) -> dict:
    from scheduler._proto import controller_pb2
    from scheduler.sim.sim_controller import SimController, describe
    from scheduler.sim.simulator import AgentGroup, node_ids
    from tests.standby import FakeStandby

    lines: list[str] = []
    recorder = logging.Handler(logging.INFO)
    recorder.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("scheduler").addHandler(recorder)
    logging.getLogger("scheduler").setLevel(logging.INFO)

    first_port, second_port = free_port(), free_port()
    first, second = f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"
    dead = f"127.0.0.1:{free_port()}"
    standby = FakeStandby(leader=first)
    await standby.start()
    addresses = [dead, standby.address]
    running = scheduler_process(tmp, node_timeout=10.0, port=first_port)
    await asyncio.to_thread(running.__enter__)
    group = AgentGroup(node_ids(3, "ha"), addresses, rate=5)
    controller = SimController(addresses)
    events: list[controller_pb2.ClusterEvent] = []

    async def watch() -> None:
        async for _arrived, event in controller.watch():
            events.append(event)

    async def until(predicate) -> None:
        deadline = time.monotonic() + GUARD / 2
        while not predicate():
            assert time.monotonic() < deadline, [describe(e) for e in events]
            await asyncio.sleep(0.05)

    def seen(kind: str, revision: int = -1) -> list[dict]:
        return [d for d in map(describe, events) if d["kind"] == kind and d["revision"] > revision]

    watcher = None
    try:
        await group.start()
        nodes_before = await controller.list_nodes()
        watcher = asyncio.ensure_future(watch())
        await until(lambda: seen("SNAPSHOT"))
        fresh = SimController(standby.address)  # its first call: a Schedule at the standby
        placements = []
        for number in range(3):
            workload = controller_pb2.Workload(instance_id=f"ha-{number}", image="sim/ha:1")
            workload.resource_limits.memory = 64
            placements.append(await fresh.schedule(workload, follow=False, timeout=10))
        fresh.close()
        await until(lambda: len(seen("INSTANCE")) == 3)
        held_before = group.held()
        last_before = events[-1].revision

        await asyncio.to_thread(running.__exit__, None, None, None)  # FIRST stops
        standby.leader = ""  # the election is under way
        await asyncio.sleep(0.5)  # everyone keeps asking meanwhile
        # A Schedule refused naming no leader is an answer, not retried: it could be the
        # leader's own UNAVAILABLE (every node refused), and the Controller decides.
        asked = standby.calls["Schedule"]
        lone = SimController(standby.address)
        unplaced = await lone.schedule(
            controller_pb2.Workload(instance_id="ha-x", image="x"), timeout=10
        )
        lone.close()
        unanswered = (unplaced.error, standby.calls["Schedule"] - asked)
        running = scheduler_process(tmp, node_timeout=10.0, port=second_port)
        await asyncio.to_thread(running.__enter__)
        standby.leader = second
        await until(lambda: len(seen("JOINED", last_before)) == 3)
        stopper = SimController(standby.address)
        await stopper.stop("ha-0")
        stopper.close()
        await until(lambda: seen("INSTANCE", last_before))
        await until(lambda: all("ha-0" not in held for held in group.held().values()))
        nodes_after = await controller.list_nodes()
        return {
            "first": first,
            "second": second,
            "dead": dead,
            "standby": standby.address,
            "lines": lines,
            "standby_calls": dict(standby.calls),
            "unanswered": unanswered,
            "nodes_before": sum(1 for n in nodes_before if n.state == 0),
            "placed": sum(1 for p in placements if p.first_status_s is not None),
            "events": [describe(e) for e in events if describe(e)["kind"] != "STATUS"],
            "epochs": sorted({e.epoch for e in events}),
            "last_revision_before": last_before,
            "held_before": held_before,
            "held_after": group.held(),
            "nodes_after": {n.id: (n.state, sorted(n.instance_ids)) for n in nodes_after},
        }
    finally:
        if watcher is not None:
            watcher.cancel()
        controller.close()
        await group.close()
        await asyncio.to_thread(running.__exit__, None, None, None)
        await standby.stop()


if __name__ == "__main__":
    scenario, *rest = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    if scenario == "plain":
        outcome = asyncio.run(_plain(int(rest[0])))
    elif scenario == "tls":
        outcome = asyncio.run(_tls(int(rest[0]), rest[1]))
    else:
        outcome = asyncio.run(_failover(Path(rest[0])))
    print(json.dumps(outcome))
