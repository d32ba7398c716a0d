"""`orka-scheduler demo`: a scheduler, simulated Agents and a simulated Controller in one command.

What a newcomer sees in a minute: the scheduler starts with mutual TLS and its generated PKI,
Agents join, 200 instances are placed (a progress bar), a few Agents are killed and become LOST,
then the nodes table and a summary. Everything runs on 127.0.0.1 in a temporary directory.

This process is plain asyncio: the scheduler and the simulated Agents run as child processes
(the scheduler's trio-asyncio must not share a process with plain-asyncio clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .._proto import controller_pb2
from ..admin import format_nodes
from .sim_controller import SimController
from .simulator import IMPORT_ROOT, AgentProcesses

READY_TIMEOUT = 30.0  # s for the scheduler to start listening
LOST_WAIT = 10.0  # s beyond node_timeout to see the killed Agents LOST
NODE_TIMEOUT = 3.0  # s: short, so the demo shows LOST quickly
BAR_WIDTH = 40


def progress(done: int, total: int, failed: int) -> None:
    """Redraw the progress bar in place on a terminal; elsewhere print it only when complete."""
    if not sys.stdout.isatty() and done < total:
        return
    filled = BAR_WIDTH * done // max(total, 1)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    extra = f", {failed} failed" if failed else ""
    sys.stdout.write(f"\r  placing [{bar}] {done}/{total}{extra}")
    sys.stdout.flush()


def demo_config(
    directory: Path, name: str, http_port: int | None = None, node_timeout: float = NODE_TIMEOUT
) -> str:
    """The demo's scheduler configuration: loopback, short timeouts, its own data directory."""
    http = f"127.0.0.1:{http_port}" if http_port else ""
    return (
        '[server]\nlisten = "127.0.0.1:0"\n'
        f'data_dir = "{directory / (name + "-data")}"\nshutdown_grace = 2.0\n'
        f"[liveness]\nnode_timeout = {node_timeout}\nstatus_rate = 50.0\nstatus_burst = 50\n"
        f'[scheduling]\nattempt_timeout = 2.0\n[observability]\nhttp_listen = "{http}"\n'
    )


async def start_scheduler(
    directory: Path, name: str = "scheduler", config: str | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    """`orka-scheduler serve` with `config` (default: `demo_config`), its log in
    `<directory>/<name>.log`; return the process and its port once it listens."""
    path = directory / f"{name}.toml"
    path.write_text(config if config is not None else demo_config(directory, name))
    log_path = directory / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (the child holds it)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scheduler",
        "serve",
        "--config",
        str(path),
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        cwd=IMPORT_ROOT,
    )
    log.close()
    pattern = re.compile(rb"listening on \S+ port (\d+)")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(log_path.read_bytes())
        if match:
            return process, int(match.group(1))
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(
        "the scheduler did not start; its log: " + log_path.read_text(errors="replace")[-2000:]
    )


async def run(agents: int, instances: int, kill: int, keep: bool) -> int:
    directory = Path(tempfile.mkdtemp(prefix="orka-demo-"))
    print(f"orka-scheduler demo in {directory}")
    scheduler, port = await start_scheduler(directory)
    address = f"127.0.0.1:{port}"
    pki = directory / "scheduler-data" / "pki"
    print(f"  scheduler listening on {address} (mutual TLS, development PKI in {pki})")
    survivors = AgentProcesses(agents - kill, address, rate=1.0, pki=pki, prefix="node")
    doomed = AgentProcesses(kill, address, rate=1.0, pki=pki, prefix="doomed") if kill else None
    controller = SimController(("127.0.0.1", port), pki=pki)
    try:
        await survivors.start()
        if doomed is not None:
            await doomed.start()
        await asyncio.sleep(1.5)  # every Agent has joined and reported
        print(f"  {agents} simulated Agents joined")

        done = failed = 0

        def placed(placement) -> None:
            nonlocal done, failed
            done += 1
            failed += placement.first_status_s is None
            progress(done, instances, failed)

        report = await controller.schedule_many(
            instances, concurrency=10, follow=False, memory=64, cpu=50, on_placement=placed
        )
        print(
            f"\n  placed {report.placed}/{report.requested} instances on {report.nodes_used} "
            f"nodes in {report.seconds:.2f} s ({report.placements_per_s:.0f}/s, "
            f"p50 {report.latency_ms['p50']:.1f} ms, p99 {report.latency_ms['p99']:.1f} ms)"
        )

        lost: list[str] = []
        if doomed is not None:
            epoch, revision, _ = await controller.position()
            for pid in doomed.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            print(
                f"  killed {kill} Agent(s); waiting for the scheduler to declare them LOST "
                f"(node_timeout {NODE_TIMEOUT:g} s) ..."
            )
            lost = await wait_for_lost(controller, epoch, revision, kill)
            for line in lost:
                print(f"    {line}")

        nodes = await controller.list_nodes()
        print()
        print(format_nodes(nodes))
        print()
        ready = sum(node.state == controller_pb2.Node.READY for node in nodes)
        kept = "kept" if keep else "deleted at exit; --keep keeps it"
        print(
            f"summary: {ready} nodes READY, {len(lost)} LOST, {report.placed} instances "
            f"placed, {report.failed} not placed; scheduler log: {directory / 'scheduler.log'} "
            f"({kept})"
        )
        return 0 if report.placed and len(lost) == kill else 1
    finally:
        controller.close()
        # The scheduler first: its shutdown ends the instances' relays quietly. Agents stopped
        # first would break every relay, each a WARNING ("relay ended ... Connection lost").
        await stop(scheduler)
        if doomed is not None:
            await doomed.close()
        await survivors.close()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


async def stop(scheduler: asyncio.subprocess.Process) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within 10 s."""
    if scheduler.returncode is None:
        scheduler.send_signal(signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(scheduler.wait(), 10)
    if scheduler.returncode is None:
        scheduler.kill()
        await scheduler.wait()


async def wait_for_lost(
    controller: SimController, epoch: str, revision: int, count: int
) -> list[str]:
    """Lines describing the next `count` LOST events after (epoch, revision)."""
    lines: list[str] = []

    async def collect() -> None:
        async for _arrived, event in controller.watch(epoch, revision):
            if (
                event.WhichOneof("event") == "node"
                and event.node.kind == controller_pb2.NodeEvent.LOST
            ):
                node = event.node.node
                ids = list(node.instance_ids)
                shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
                lines.append(
                    f"LOST {node.id}: {len(ids)} instance(s) for the Controller to "
                    f"re-place" + (f" ({shown})" if ids else "")
                )
                if len(lines) == count:
                    return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(collect(), NODE_TIMEOUT + LOST_WAIT)
    return lines


def main(agents: int, instances: int, kill: int, keep: bool) -> int:
    """The single-scheduler demo (`orka-scheduler demo`); its exit status."""
    try:
        return asyncio.run(run(agents, instances, kill, keep))
    except KeyboardInterrupt:
        return 130
