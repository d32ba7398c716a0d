"""Bare grpclib asyncio servers: what each benchmark figure of the scheduler is compared with.

They do the least a server can do for the same wire traffic, with the same stack (grpclib on a
plain asyncio loop, one process, one core), so a ratio says what the scheduler's own work
costs — not what Python, HTTP/2 or protobuf cost.

    python bench/baselines.py ingest --listen 127.0.0.1:PORT
        scheduler.agent services: JoinCluster/LeaveCluster answer Empty at once;
        UpdateNodeStatus only decodes and counts the messages.
    python bench/baselines.py relay --listen 127.0.0.1:PORT [--agent HOST:PORT]
        scheduler.controller.SchedulingService.Schedule: forwards the workload to one fixed
        Agent's node_agent.WorkloadService.Create and relays its statuses (the first status
        is the placement) until the Agent ends the stream; no decision, no state. The fixed
        Agent is --agent, or else the last one that called JoinCluster here (peer IP and
        declared port, as the scheduler dials it); the agent services are served as above.

`--node-timeout T` adds the plainest asyncio liveness check (a timer per node) to `ingest`;
`--pki DIR` serves mTLS with DIR's scheduler certificate, as the scheduler would;
`--tls-read-buffer BYTES` sets asyncio's per-connection TLS read buffer (default 256 KiB), as
the scheduler does (4 KiB).

Both print one line `{"event": "ready", "port": N}` on stdout once listening, then answer
each line `stats` on stdin with `{"event": "stats", "messages": N, "placements": N,
"time": T}` (T: time.time() when counted). EOF on stdin or SIGTERM stops them.

Never imports trio: it must run on a plain asyncio loop, like the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from grpclib.client import Channel  # noqa: E402
from grpclib.const import Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from grpclib.server import Server  # noqa: E402

from scheduler._proto import (  # noqa: E402
    agent_grpc,
    agent_pb2,
    controller_grpc,
    controller_pb2,
    node_agent_grpc,
    node_agent_pb2,
)
from scheduler.sim.simulator import raise_fd_limit  # noqa: E402

BACKLOG = 4096  # accept queue: thousands of agents connect at once


class Counters:
    messages = 0
    placements = 0


class IngestLifecycle(agent_grpc.LifecycleServiceBase):
    def __init__(self, on_join=None) -> None:
        self._on_join = on_join

    async def JoinCluster(self, stream) -> None:
        request = await stream.recv_message()
        if self._on_join is not None:
            self._on_join(stream.peer.addr()[0], request.port, request.id)
        await stream.send_message(agent_pb2.Empty())

    async def LeaveCluster(self, stream) -> None:
        await stream.recv_message()
        await stream.send_message(agent_pb2.Empty())


class IngestStatus(agent_grpc.StatusUpdateServiceBase):
    """Decodes (grpclib's codec) and counts; nothing else.

    With `node_timeout`, also the plainest liveness check asyncio offers: one timer per node,
    pushed back by each message; when it fires, one line {"event": "lost", "node": ID,
    "time": T, "deadline": D} on stdout (T, D: time.time()).
    """

    def __init__(self, node_timeout: float | None = None) -> None:
        self._timeout = node_timeout
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last: dict[str, float] = {}

    async def UpdateNodeStatus(self, stream) -> None:
        if self._timeout is None:
            async for _message in stream:
                Counters.messages += 1
        else:
            loop = asyncio.get_running_loop()
            async for message in stream:
                Counters.messages += 1
                node_id = message.id
                self._last[node_id] = time.time()
                timer = self._timers.get(node_id)
                if timer is not None:
                    timer.cancel()
                self._timers[node_id] = loop.call_later(self._timeout, self._lost, node_id)
        await stream.send_message(agent_pb2.Empty())

    def _lost(self, node_id: str) -> None:
        del self._timers[node_id]
        print(
            json.dumps(
                {
                    "event": "lost",
                    "node": node_id,
                    "time": time.time(),
                    "deadline": self._last[node_id] + self._timeout,
                }
            ),
            flush=True,
        )


def agent_workload(wire: controller_pb2.Workload) -> node_agent_pb2.Workload:
    """The Controller's workload as the Agent's Create takes it."""
    workload = node_agent_pb2.Workload(
        instance_id=wire.instance_id, type=wire.type, image=wire.image, environment=wire.environment
    )
    if wire.HasField("resource_limits"):  # same fields, another package: copy the bytes
        workload.resource_limits.ParseFromString(wire.resource_limits.SerializeToString())
    return workload


def controller_status(
    status: node_agent_pb2.WorkloadStatus, node_id: str
) -> controller_pb2.WorkloadStatus:
    """An Agent's status as the Controller gets it: fields 1-3 are node_agent's, node_id = 4."""
    out = controller_pb2.WorkloadStatus.FromString(status.SerializeToString())
    out.node_id = node_id
    return out


class Relay(controller_grpc.SchedulingServiceBase):
    """Schedule → the fixed Agent's Create → its statuses back, with the node id added."""

    def __init__(self, agent_host: str | None, agent_port: int, node_id: str) -> None:
        self._agent = None
        if agent_host is not None:
            self.use(agent_host, agent_port, node_id)

    def use(self, host: str, port: int, node_id: str) -> None:
        """Relay to the Agent at host:port from now on."""
        self._channel = Channel(host, port)
        self._agent = node_agent_grpc.WorkloadServiceStub(self._channel)
        self._node_id = node_id

    async def Schedule(self, stream) -> None:
        request = await stream.recv_message()
        if self._agent is None:
            raise GRPCError(Status.UNAVAILABLE, "no Agent has joined this relay yet")
        first = True
        async with self._agent.Create.open() as create:
            await create.send_message(agent_workload(request.workload), end=True)
            async for status in create:
                await stream.send_message(controller_status(status, self._node_id))
                if first:
                    Counters.placements += 1
                    first = False
        if first:
            raise GRPCError(Status.UNAVAILABLE, "the Agent ended the stream without a status")

    async def Stop(self, stream) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "baseline relay")

    async def Destroy(self, stream) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "baseline relay")


async def serve(
    kind: str,
    listen: str,
    agent: str | None,
    node_id: str,
    node_timeout: float | None = None,
    pki: str | None = None,
    tls_read_buffer: int | None = None,
) -> None:
    raise_fd_limit()
    if tls_read_buffer is not None:
        asyncio.sslproto.SSLProtocol.max_size = tls_read_buffer
    host, _, port = listen.rpartition(":")
    ssl_context = None
    if pki is not None:  # mTLS as the scheduler serves it: the scheduler's certificate
        from scheduler import pki as pki_module
        from scheduler import security

        paths = pki_module.PkiPaths.load(pki)
        ssl_context = security.server_ssl_context(
            paths.ca, paths.scheduler.cert, paths.scheduler.key
        )
    if kind == "ingest":
        handlers = [IngestLifecycle(), IngestStatus(node_timeout)]
    else:
        relay = Relay(None, 0, node_id)
        if agent is not None:
            agent_host, _, agent_port = agent.rpartition(":")
            relay.use(agent_host.strip("[]"), int(agent_port), node_id)
        handlers = [relay, IngestLifecycle(relay.use), IngestStatus()]
    server = Server(handlers)
    # host/port, not sock=: asyncio then sets TCP_NODELAY on accepted connections.
    await server.start(
        host.strip("[]"), int(port), backlog=BACKLOG, reuse_address=True, ssl=ssl_context
    )
    bound = server._server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": bound}), flush=True)

    await answer_until_stopped()
    server.close()
    await server.wait_closed()


async def answer_until_stopped() -> None:
    """Answer `stats` lines on stdin until EOF, SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control() -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.strip() == b"stats":
                print(
                    json.dumps(
                        {
                            "event": "stats",
                            "messages": Counters.messages,
                            "placements": Counters.placements,
                            "time": time.time(),
                        }
                    ),
                    flush=True,
                )
        stop.set()

    task = asyncio.ensure_future(control())
    await stop.wait()
    task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ingest", "relay"])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--agent", metavar="HOST:PORT", help="relay: the fixed Agent")
    parser.add_argument("--node-id", default="baseline-node", help="relay: node_id in statuses")
    parser.add_argument(
        "--node-timeout",
        type=float,
        default=None,
        help="ingest: report nodes silent this long (liveness baseline)",
    )
    parser.add_argument(
        "--pki",
        metavar="DIR",
        help="serve mTLS with the scheduler certificate of this PKI directory",
    )
    parser.add_argument(
        "--tls-read-buffer",
        type=int,
        metavar="BYTES",
        help="asyncio's TLS read buffer per connection (default 256 KiB)",
    )
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            args.kind,
            args.listen,
            args.agent,
            args.node_id,
            args.node_timeout,
            args.pki,
            args.tls_read_buffer,
        )
    )


if __name__ == "__main__":
    main()
