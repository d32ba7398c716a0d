"""CPU per status message of two schedulers side by side: this checkout and another one.

On a machine shared with other work, figure 1's saturated throughput moves with whatever else
runs (bench/RESULTS.md); two versions measured minutes apart cannot be compared to a few µs.
Here both schedulers run at once, each fed by its own 1,000 raw-frame Agents at the same fixed
rate below saturation, and each one's CPU is read from /proc over the same windows: whatever
disturbs one disturbs the other.

    git archive main | tar -x -C /tmp/before
    python bench/ingest_ab.py --other /tmp/before [--agents 1000] [--rate 2] [--windows 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: its processes and /proc readings)

LIVENESS = {"node_timeout": 120.0, "status_rate": 1e6, "status_burst": 1_000_000}


async def main(args: argparse.Namespace) -> None:
    run.raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="orka-ab-"))
    other = Path(args.other).resolve()
    wrapper = workdir / "other.py"  # `python other.py serve ...` runs the other checkout
    wrapper.write_text(
        f"import sys\nsys.path.insert(0, {str(other)!r})\n"
        "from scheduler.cli import main\nmain(sys.argv[1:])\n"
    )
    names = ("this", "other")
    async with AsyncExitStack() as stack:
        schedulers, fleets = {}, {}
        for name in names:
            process = run.SchedulerProcess(workdir, name, liveness=LIVENESS, metrics=True)
            if name == "other":
                process.wrapper = str(wrapper)
            schedulers[name] = await stack.enter_async_context(process)
            fleets[name] = await stack.enter_async_context(
                run.AgentProcesses(
                    args.agents,
                    process.address,
                    rate=args.rate,
                    processes=1,
                    raw=True,
                    prefix=name,
                    log_file=workdir / f"{name}-agents.log",
                )
            )
        for name in names:
            stats = await run.wait_streaming(fleets[name], args.agents, 60)
            run.say(f"{name}: {stats['streaming']} streams up")
        await asyncio.sleep(args.warmup)
        results: dict[str, list[float]] = {name: [] for name in names}
        for window in range(args.windows):
            before = {
                name: await run.scrape_counter(schedulers[name].metrics_port, run.STATUS_COUNTER)
                for name in names
            }
            cpu = run.CpuWindow({name: schedulers[name].pid for name in names})
            await asyncio.sleep(args.window)
            shares = cpu.stop()
            for name in names:
                after = await run.scrape_counter(schedulers[name].metrics_port, run.STATUS_COUNTER)
                taken = (after[0] - before[name][0]) / (after[1] - before[name][1])
                us = shares[name] / taken * 1e6
                results[name].append(us)
                run.say(
                    f"window {window + 1} {name}: {taken:.0f} msgs/s, {shares[name]} cores,"
                    f" {us:.1f} µs/msg (others {shares['others']} cores)"
                )
        medians = {name: statistics.median(values) for name, values in results.items()}
        run.say(
            f"median µs per status: this {medians['this']:.1f}, other "
            f"{medians['other']:.1f} ({other}); this/other {medians['this'] / medians['other']:.3f}"
        )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="another checkout of orka-scheduler")
    parser.add_argument("--agents", type=int, default=1000, help="per scheduler")
    parser.add_argument("--rate", type=float, default=2.0, help="statuses/s per Agent")
    parser.add_argument("--warmup", type=float, default=5.0, help="s before the first window")
    parser.add_argument("--window", type=float, default=10.0, help="s per window")
    parser.add_argument("--windows", type=int, default=3)
    asyncio.run(main(parser.parse_args(argv)))


if __name__ == "__main__":
    cli()
