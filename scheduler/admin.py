"""Admin commands for operators: `orka-scheduler nodes` and `orka-scheduler watch`.

They are Controller-identity clients of ClusterService, in plain asyncio + grpclib (their own
process: nothing here imports trio_asyncio, which would change asyncio's loop policy).
Credentials: `--insecure`, or `--ca/--cert/--key` of a Controller certificate; with none given,
the development PKI in the data directory (what `serve` generated) is used.
"""
from __future__ import annotations

import asyncio
import datetime
import ssl
import sys
from pathlib import Path

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from ._proto import controller_grpc, controller_pb2
from .config import Config, ConfigError, parse_host_port

DEFAULT_ADDRESS = "127.0.0.1:50051"  # the local scheduler's default port
NODE_STATES = {v: k for k, v in controller_pb2.Node.State.items()}
EVENT_KINDS = {v: k for k, v in controller_pb2.NodeEvent.Kind.items()}
STATUS_CODES = {v: k for k, v in controller_pb2.Status.StatusCode.items()}
GIB = 1 << 30


def client_context(args) -> ssl.SSLContext | None:
    """The TLS context from the arguments, or None for --insecure."""
    if args.insecure:
        return None
    from .security import client_ssl_context

    if args.ca and args.cert and args.key:
        return client_ssl_context(args.ca, args.cert, args.key)
    if args.ca or args.cert or args.key:
        raise SystemExit("orka-scheduler: give all of --ca, --cert and --key, or none")
    try:
        config = Config.from_toml(args.config) if args.config else Config()
    except ConfigError as err:
        raise SystemExit(f"orka-scheduler: bad configuration: {err}") from None
    pki = Path(config.server.data_dir) / "pki"
    cert, key = pki / "controllers" / "controller.pem", pki / "controllers" / "controller.key"
    if not cert.exists():
        raise SystemExit(f"orka-scheduler: no controller certificate at {cert}; pass --ca/--cert/"
                         "--key, or --insecure for a plaintext scheduler")
    return client_ssl_context(pki / "ca.pem", cert, key)


def _channel(args) -> Channel:
    host, port = parse_host_port(args.address, "--address")
    return Channel(host, port, ssl=client_context(args))


def format_nodes(nodes) -> str:
    """A table of nodes: id, state, address, cpu, memory, instances, last seen."""
    header = ("NODE", "STATE", "ADDRESS", "CPU", "MEMORY FREE/TOTAL", "INSTANCES", "LAST SEEN")
    rows = [header]
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    for node in nodes:
        cpu = f"{node.cpu_load:.0f}% of {node.cpu_cores}" if node.cpu_cores else f"{node.cpu_load:.0f}%"
        memory = (f"{node.memory_free / GIB:.1f}/{node.memory_total / GIB:.1f} GiB"
                  if node.memory_total else "-")
        seen = f"{max(0.0, now - node.last_seen_unix):.0f}s ago" if node.last_seen_unix else "-"
        rows.append((node.id, NODE_STATES.get(node.state, str(node.state)), node.address, cpu,
                     memory, str(len(node.instance_ids)), seen))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def format_event(event) -> str:
    """One line per ClusterEvent."""
    kind = event.WhichOneof("event")
    prefix = f"{event.revision:>8}"
    if kind == "snapshot":
        return (f"{prefix} SNAPSHOT {len(event.snapshot.nodes)} nodes, "
                f"{len(event.snapshot.instances)} instances (epoch {event.epoch})")
    if kind == "node":
        node = event.node.node
        extra = f" instances: {', '.join(node.instance_ids)}" if node.instance_ids else ""
        return f"{prefix} {EVENT_KINDS.get(event.node.kind, str(event.node.kind)):<8} node {node.id} {node.address}{extra}"
    status = event.instance
    message = f" ({status.status.message})" if status.status.HasField("message") else ""
    return (f"{prefix} INSTANCE {status.instance_id} on {status.node_id}: "
            f"{STATUS_CODES.get(status.status.code, status.status.code)}{message}")


async def _nodes(args) -> int:
    channel = _channel(args)
    try:
        reply = await controller_grpc.ClusterServiceStub(channel).ListNodes(
            controller_pb2.Empty(), timeout=args.timeout)
    finally:
        channel.close()
    print(format_nodes(reply.nodes))
    return 0


async def _watch(args) -> int:
    channel = _channel(args)
    try:
        async with controller_grpc.ClusterServiceStub(channel).WatchEvents.open() as stream:
            await stream.send_message(controller_pb2.WatchRequest(
                epoch=args.epoch, after_revision=args.after), end=True)
            async for event in stream:
                print(format_event(event), flush=True)
    finally:
        channel.close()
    return 0


def run(command, args) -> int:
    """Run an admin command; connection problems become one readable line and exit code 1."""
    try:
        return asyncio.run(command(args))
    except GRPCError as err:
        print(f"orka-scheduler: {args.address}: {err.status.name}: {err.message}", file=sys.stderr)
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as err:
        print(f"orka-scheduler: cannot reach the scheduler at {args.address}: {err}",
              file=sys.stderr)
    except ConfigError as err:
        print(f"orka-scheduler: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 0
    return 1


def cmd_nodes(args) -> int:
    return run(_nodes, args)


def cmd_watch(args) -> int:
    return run(_watch, args)


def add_commands(commands) -> None:
    """Register `nodes` and `watch` on the CLI's subparsers."""
    for name, func, text in (("nodes", cmd_nodes, "list the nodes (ListNodes)"),
                             ("watch", cmd_watch, "print cluster events as they come")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--address", default=DEFAULT_ADDRESS, metavar="HOST:PORT",
                         help=f"the scheduler (default {DEFAULT_ADDRESS})")
        sub.add_argument("--insecure", action="store_true", help="plaintext scheduler")
        sub.add_argument("--ca", help="cluster CA (PEM)")
        sub.add_argument("--cert", help="a Controller certificate (PEM)")
        sub.add_argument("--key", help="its private key (PEM)")
        sub.add_argument("--config", metavar="FILE",
                         help="scheduler config, to find its development PKI")
        if name == "nodes":
            sub.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        else:
            sub.add_argument("--epoch", default="", help="resume in this epoch ...")
            sub.add_argument("--after", type=int, default=0, metavar="REVISION",
                             help="... after this revision (default: snapshot first)")
        sub.set_defaults(func=func)
