"""CPU per status message of the scheduler's synchronous core alone, and where it goes.

What the bridge's reader calls for each decoded NodeStatus (`api.agent._StatusStream.take`:
validation, the caller's node, the rate limit, `Cluster.report` with its table row, hooks and
STATUS event), with no sockets: the part of figure 1's gap to the bare server on the
scheduler's stack that is the scheduler's own work (bench/RESULTS.md, issue 15 point 1).

    python bench/status_core.py [--nodes 1000] [--rounds 20] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import trio  # noqa: E402

from scheduler._proto import agent_pb2  # noqa: E402
from scheduler.api.agent import _StatusStream  # noqa: E402
from scheduler.app import serve  # noqa: E402
from scheduler.config import Config  # noqa: E402


def status(node_id: str) -> agent_pb2.NodeStatus:
    """What the bench's Agents send: memory and CPU, no instances."""
    message = agent_pb2.NodeStatus(id=node_id)
    message.memory.total, message.memory.free = 8 << 30, 4 << 30
    message.cpu_load.load, message.cpu_load.cores = 10.0, 4
    return message


async def main(args: argparse.Namespace) -> None:
    config = Config().replace(
        server={"listen": "127.0.0.1:0", "data_dir": tempfile.mkdtemp(prefix="orka-core-")},
        liveness={"node_timeout": 120.0, "status_rate": 1e6, "status_burst": 1_000_000},
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        scheduler = await nursery.start(
            lambda task_status: serve(
                config, ssl_context=None, authorize=None, shutdown=shutdown, task_status=task_status
            )
        )
        cluster = scheduler.cluster
        streams = []
        for i in range(args.nodes):
            cluster.join(f"node-{i}", "127.0.0.1", 7000)
            streams.append((_StatusStream(cluster, None), status(f"node-{i}")))
        profile = cProfile.Profile() if args.profile else None
        started = time.process_time()
        if profile is not None:
            profile.enable()
        for _ in range(args.rounds):
            for stream, message in streams:
                stream.take(message)
        if profile is not None:
            profile.disable()
        took = time.process_time() - started
        print(
            f"{took / (args.nodes * args.rounds) * 1e6:.1f} µs of CPU per status "
            f"({args.nodes} nodes x {args.rounds} rounds)"
        )
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        shutdown.set()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions too")
    trio.run(main, parser.parse_args(argv))


if __name__ == "__main__":
    cli()
