"""A bench baseline hosted as the scheduler hosts grpclib: inside `trio.run`, by trio-asyncio.

`bench/baselines.py ingest|relay` run grpclib on a plain asyncio loop and do the least a server
can do (decode and count; forward to one Agent). This runs those very servers unchanged on the
loop the scheduler uses
(`scheduler.grpc_bridge.open_loop`: trio-asyncio, with the bridge's batching of ready
callbacks), or with `--stock` on trio-asyncio's own `open_loop`. The difference to the plain
asyncio baseline is what the decided stack costs before the scheduler does any work of its own;
the difference to the scheduler is the scheduler's own work (handing each call to a trio
task, validating, deciding, recording).

`relay --bridged` goes one step further: the relay's Schedule is a trio handler served through
the scheduler's `grpc_bridge.Bridge`, and it calls the Agent through the bridge's
`ClientChannel.server_stream`, exactly as the scheduler does (reading the Agent's statuses in
the handler, with no decision and no state). Its difference to the plain relay on the same
loop is what the bridge's per-call machinery costs a placement: the Schedule call's crossing
into a trio task and its reply queue, the Create call's asyncio reader task and hand-over.

    python bench/stack_baseline.py ingest|relay [--stock | --bridged] [--listen HOST:PORT] ...

Same protocol on stdin/stdout as bench/baselines.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # run from a checkout: scheduler, bench

import trio  # noqa: E402
import trio_asyncio  # noqa: E402
from grpclib.const import Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402

from bench import baselines  # noqa: E402
from scheduler._proto import controller_grpc, node_agent_grpc  # noqa: E402
from scheduler.grpc_bridge import Bridge, Call, ClientChannel, open_loop  # noqa: E402

BRIDGED_GRACE = 1.0  # s given to calls in flight when the bridged relay stops


class BridgedRelay:
    """The baseline relay's Schedule as a trio handler behind the scheduler's bridge."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._channel: ClientChannel | None = None
        self._stub = None

    def use(self, host: str, port: int, node_id: str) -> None:
        """Relay to the Agent at host:port from now on (called when an Agent joins)."""
        self._channel = ClientChannel(host, port, None)
        self._stub = self._channel.stub(node_agent_grpc.WorkloadServiceStub)
        self._node_id = node_id

    async def schedule(self, call: Call) -> None:
        if self._channel is None:
            raise GRPCError(Status.UNAVAILABLE, "no Agent has joined this relay yet")
        stream = self._channel.server_stream(
            self._stub.Create, baselines.agent_workload(call.request.workload)
        )
        first = True
        try:
            while True:
                try:
                    status = await stream.receive()
                except trio.EndOfChannel:
                    break
                await call.send(baselines.controller_status(status, self._node_id))
                if first:
                    baselines.Counters.placements += 1
                    first = False
        finally:
            stream.cancel()
        if first:
            raise GRPCError(Status.UNAVAILABLE, "the Agent ended the stream without a status")

    @staticmethod
    async def unimplemented(call: Call) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "baseline relay")


async def serve_bridged(listen: str, node_id: str) -> None:
    relay = BridgedRelay(node_id)
    bridge = Bridge()
    servables = [
        bridge.servable(
            controller_grpc.SchedulingServiceBase,
            {
                "Schedule": relay.schedule,
                "Stop": relay.unimplemented,
                "Destroy": relay.unimplemented,
            },
        ),
        baselines.IngestLifecycle(relay.use),
        baselines.IngestStatus(),
    ]
    host, _, port = listen.rpartition(":")
    shutdown = trio.Event()
    async with open_loop(), trio.open_nursery() as nursery:
        bound = await nursery.start(
            functools.partial(
                bridge.serve,
                servables,
                host.strip("[]"),
                int(port),
                None,
                shutdown=shutdown,
                grace=BRIDGED_GRACE,
            )
        )
        print(json.dumps({"event": "ready", "port": bound}), flush=True)
        await trio_asyncio.aio_as_trio(baselines.answer_until_stopped)()
        shutdown.set()


async def main(args: argparse.Namespace) -> None:
    if args.bridged:
        await serve_bridged(args.listen, args.node_id)
        return
    serve = functools.partial(
        baselines.serve, args.kind, args.listen, None, args.node_id, args.node_timeout, args.pki
    )
    async with trio_asyncio.open_loop() if args.stock else open_loop():
        await trio_asyncio.aio_as_trio(serve)()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ingest", "relay"])
    loops = parser.add_mutually_exclusive_group()
    loops.add_argument(
        "--stock",
        action="store_true",
        help="trio-asyncio's own open_loop, without the bridge's batching",
    )
    loops.add_argument(
        "--bridged",
        action="store_true",
        help="relay: Schedule as a trio handler through the scheduler's bridge",
    )
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--node-id", default="baseline-node", help="relay: node_id in statuses")
    parser.add_argument("--node-timeout", type=float, default=None)
    parser.add_argument("--pki", metavar="DIR")
    args = parser.parse_args(argv)
    if args.bridged and args.kind != "relay":
        parser.error("--bridged is for the relay")
    trio.run(main, args)


if __name__ == "__main__":
    cli()
