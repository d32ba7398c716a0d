"""A bench baseline hosted as the scheduler hosts grpclib: inside `trio.run`, by trio-asyncio.

`bench/baselines.py ingest|relay` run grpclib on a plain asyncio loop and do the least a server
can do (decode and count; forward to one Agent). This runs those very servers unchanged on the
loop the scheduler uses
(`scheduler.grpc_bridge.open_loop`: trio-asyncio, with the bridge's batching of ready
callbacks), or with `--stock` on trio-asyncio's own `open_loop`. The difference to the plain
asyncio baseline is what the decided stack costs before the scheduler does any work of its own;
the difference to the scheduler is the scheduler's own work (handing each call to a trio
task, validating, deciding, recording).

    python bench/stack_baseline.py ingest|relay [--stock] [--listen HOST:PORT] ...

Same protocol on stdin/stdout as bench/baselines.py.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout: scheduler, bench

import trio  # noqa: E402
import trio_asyncio  # noqa: E402

from bench import baselines  # noqa: E402
from scheduler.grpc_bridge import open_loop  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    serve = functools.partial(baselines.serve, args.kind, args.listen, None, "baseline-node",
                              args.node_timeout, args.pki)
    async with (trio_asyncio.open_loop() if args.stock else open_loop()):
        await trio_asyncio.aio_as_trio(serve)()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ingest", "relay"])
    parser.add_argument("--stock", action="store_true",
                        help="trio-asyncio's own open_loop, without the bridge's batching")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--node-timeout", type=float, default=None)
    parser.add_argument("--pki", metavar="DIR")
    trio.run(main, parser.parse_args(argv))


if __name__ == "__main__":
    cli()
