"""Bytes per added Agent by allocation site, in an in-process scheduler (figure 5's what-if).

    python bench/memory_trace.py                      # 200 Agents, then 200 more
    python bench/memory_trace.py --agents 300 --top 40 --frames 25 --keys caller
    python bench/memory_trace.py --bare      # the same for figure 5's bare grpclib server

The scheduler runs here under tracemalloc, plaintext (TLS and HTTP/2 are the stack's, measured
by figure 5's bare baseline); simulated Agents run in a child process
(`scheduler.sim.simulator agents`, 0.1 statuses/s as figure 5). A snapshot is taken once the
first group streams and once the second does; the difference, divided by the second group's
size, is printed by source line and by file. The statuses the event ring retains meanwhile
are counted apart: they grow with time, not with Agents. `--bare` measures the bare grpclib
asyncio server of figure 5 (`bench/baselines.py ingest`) the same way: the difference of the
two totals is the scheduler's own bytes per Agent (without TLS, the same in both).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import baselines  # noqa: E402  (never imports trio: `--bare` runs on plain asyncio)

SETTLE = 2.0  # s after the last stream attached, for joins' and first statuses' leftovers


def _agents(port: int, count: int, first: int, rate: float) -> subprocess.Popen:
    args = [sys.executable, "-m", "scheduler.sim.simulator", "agents", "--control"]
    args += ["--address", f"127.0.0.1:{port}", "--count", str(count), "--first", str(first)]
    args += ["--prefix", "trace", "--rate", repr(rate), "--insecure"]
    return subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


async def _streaming(scheduler, count: int) -> None:
    """Until `count` status streams are attached to their nodes."""
    import trio

    with trio.fail_after(120):
        while scheduler.bridge and len(scheduler.bridge._calls) < count:
            await trio.sleep(0.2)
    await trio.sleep(SETTLE)


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )


def _by_caller(snapshot: tracemalloc.Snapshot) -> dict[str, list[int]]:
    """Bytes and blocks by (the innermost frame in scheduler/, the allocating file)."""
    groups: dict[str, list[int]] = {}
    for trace in snapshot.traces:
        frames = list(trace.traceback)  # oldest first
        ours = next((f for f in reversed(frames) if "/scheduler/" in f.filename), None)
        where = f"{ours.filename.split('/scheduler/')[1]}:{ours.lineno}" if ours else "(none)"
        site = frames[-1].filename.rsplit("/", 2)
        entry = groups.setdefault(f"{where:28} <- {'/'.join(site[-2:])}", [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    return groups


def _report_by_caller(before, after, agents: int, top: int) -> None:
    old, new = _by_caller(before), _by_caller(after)
    diffs = sorted(
        (
            (size - old.get(key, [0, 0])[0], count - old.get(key, [0, 0])[1], key)
            for key, (size, count) in new.items()
        ),
        reverse=True,
    )
    total = sum(d[0] for d in diffs) - sum(v[0] for k, v in old.items() if k not in new)
    print(f"\n--- by our innermost frame: {total / agents:,.0f} bytes per Agent in all ---")
    for size, count, key in diffs[:top]:
        print(f"{size / agents:8,.0f} B {count / agents:6.2f} obj  {key}")


def _report(before, after, agents: int, top: int, key: str) -> None:
    if key == "caller":
        _report_by_caller(before, after, agents, top)
        return
    stats = after.compare_to(before, key)
    total = sum(s.size_diff for s in stats)
    print(f"\n--- by {key}: {total / agents:,.0f} bytes per Agent in all ---")
    for stat in stats[:top]:
        if abs(stat.size_diff) < agents * 16:
            continue
        if key == "traceback":
            label = "\n      ".join(f"{f.filename}:{f.lineno}" for f in stat.traceback)
        else:
            label = str(stat.traceback)
        print(f"{stat.size_diff / agents:8,.0f} B {stat.count_diff / agents:6.2f} obj  {label}")


async def main(args: argparse.Namespace) -> None:
    import trio

    from scheduler.app import serve
    from scheduler.config import Config

    config = Config().replace(
        server={"listen": "127.0.0.1:0", "data_dir": tempfile.mkdtemp(prefix="orka-trace-")},
        observability={"http_listen": ""},
        liveness={"node_timeout": 120.0},
    )
    shutdown = trio.Event()
    children = []
    async with trio.open_nursery() as nursery:
        scheduler = await nursery.start(
            lambda task_status: serve(
                config, ssl_context=None, shutdown=shutdown, task_status=task_status
            )
        )
        port = scheduler.port
        try:
            children.append(_agents(port, args.agents, 0, args.rate))
            await _streaming(scheduler, args.agents)
            events_before = len(scheduler.core.events)
            before = _snapshot()
            children.append(_agents(port, args.agents, args.agents, args.rate))
            await _streaming(scheduler, 2 * args.agents)
            after = _snapshot()
            events = len(scheduler.core.events) - events_before
        finally:
            _stop(children)
            shutdown.set()
    _print_reports(args, before, after)
    print(f"\nevents retained meanwhile: {events} ({events / args.agents:.2f} per Agent)")


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        child.kill()
        child.wait()


def _print_reports(args: argparse.Namespace, before, after) -> None:
    tracemalloc.stop()
    for key in args.keys.split(","):
        _report(before, after, args.agents, args.top, key)


async def bare(args: argparse.Namespace) -> None:
    """The same two snapshots around figure 5's bare grpclib server (plain asyncio)."""
    server = baselines.Server([baselines.IngestLifecycle(), baselines.IngestStatus()])
    await server.start("127.0.0.1", 0, backlog=baselines.BACKLOG, reuse_address=True)
    port = server._server.sockets[0].getsockname()[1]
    children = []

    async def streaming(count: int) -> None:
        async with asyncio.timeout(120):
            while baselines.Counters.messages < count:
                await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE)

    try:
        children.append(_agents(port, args.agents, 0, args.rate))
        await streaming(args.agents)
        before = _snapshot()
        children.append(_agents(port, args.agents, args.agents, args.rate))
        await streaming(2 * args.agents)
        after = _snapshot()
    finally:
        _stop(children)
        server.close()
    _print_reports(args, before, after)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="Agents per group (two groups)")
    parser.add_argument("--rate", type=float, default=0.1, help="statuses/s per Agent")
    parser.add_argument("--top", type=int, default=30, help="sites printed per grouping")
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    parser.add_argument("--keys", default="lineno,filename", help="lineno, filename, traceback")
    parser.add_argument("--bare", action="store_true", help="the bare grpclib server instead")
    args = parser.parse_args()
    tracemalloc.start(args.frames)
    if args.bare:
        asyncio.run(bare(args))
    else:
        import trio

        trio.run(main, args)


if __name__ == "__main__":
    cli()
