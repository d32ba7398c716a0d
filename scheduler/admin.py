"""Admin commands for operators: `orka-scheduler nodes` and `orka-scheduler watch`.

They are Controller-identity clients of ClusterService, in plain asyncio + grpclib (their own
process: nothing here imports trio_asyncio, which would change asyncio's loop policy).

Which scheduler and which credentials: `--config FILE` (the scheduler's own configuration)
gives the address (its listen port on this host), the CA (`tls.ca`) and the development PKI
(`<data_dir>/pki`, whose Controller certificate is used when no `--cert/--key` are given);
without it, the defaults of `serve` apply. `--address`, `--ca`, `--cert`, `--key` override;
`--insecure` talks plaintext. Every failure is one line that says what happened: the
scheduler speaks TLS (or plaintext), its certificate is not trusted by the CA file used, it
refused our certificate, or it could not be reached at all.

`--address a,b,c` names several schedulers of one cluster (SPEC §4.1): the commands follow the
leader (`scheduler.follow`), one stderr line per switch, for up to `--timeout` seconds; they
give up at once when no scheduler answers at any address (nothing runs there).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from grpclib.exceptions import GRPCError, StreamTerminatedError

from ._proto import controller_pb2
from .config import Config, ConfigError
from .follow import Channels, GaveUp, call, host_port, split_addresses, watch_events
from .security import TlsSetupError, client_ssl_context
from .tls_setup import check_ca, check_pair, development_pki

DEFAULT_ADDRESS = "127.0.0.1:50051"  # the local scheduler's default port
WILDCARDS = ("", "0.0.0.0", "::")  # a listen host meaning "every interface": dial loopback
PROBE_TIMEOUT = 3.0  # s for the TLS probe that explains a lost connection
WATCH_TIMEOUT = 30.0  # s `watch` looks for a leader: a failover takes up to lease_ttl + 2 s
NODE_STATES = {v: k for k, v in controller_pb2.Node.State.items()}
EVENT_KINDS = {v: k for k, v in controller_pb2.NodeEvent.Kind.items()}
STATUS_CODES = {v: k for k, v in controller_pb2.Status.StatusCode.items()}
GIB = 1 << 30


class Refusal(Exception):
    """The command cannot run as asked; the message (one line) says why and what to do."""


class OutputClosed(Exception):
    """Whoever reads our output has stopped reading (`orka-scheduler watch | head`)."""


@dataclass(frozen=True)
class Target:
    """The schedulers to call (one, or several of which the leader is followed) and how: the
    TLS context (None: plaintext) with the CA and certificate files it was made from (named
    in error messages)."""

    addresses: tuple[str, ...]
    tls: ssl.SSLContext | None = None
    ca: Path | None = None
    cert: Path | None = None


def target(args) -> Target:
    """The scheduler and credentials the arguments (and `--config`) name."""
    try:
        config = Config.from_toml(args.config) if args.config else Config()
    except ConfigError as err:
        raise Refusal(f"bad configuration: {err.in_file(args.config)}") from None
    addresses = tuple(split_addresses(args.address or _local_address(config, args.config)))
    if args.insecure:
        return Target(addresses)
    ca, cert, key = _credentials(args, config)
    try:
        context = client_ssl_context(ca, cert, key)
    except TlsSetupError as err:
        raise Refusal(str(err)) from None
    return Target(addresses, context, ca, cert)


def _local_address(config: Config, path: str | None) -> str:
    """The scheduler of `config` on this host: its listen port on loopback (for a wildcard
    listen address) or on the address it listens on."""
    if path is None:
        return DEFAULT_ADDRESS
    server = config.server
    if server.port == 0:
        raise Refusal(
            f"{path}: server.listen has port 0 (a new port at every start): give "
            "--address HOST:PORT"
        )
    host = "127.0.0.1" if server.host in WILDCARDS else server.host
    return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"


def _credentials(args, config: Config) -> tuple[Path, Path, Path]:
    """(CA, certificate, key), checked: from --ca/--cert/--key, else the configuration."""
    tls, pki = config.tls, development_pki(config)
    if bool(args.cert) != bool(args.key):
        raise Refusal("give --cert and --key together")
    if args.ca and not args.cert:
        raise Refusal("--ca needs --cert and --key too (a Controller certificate from that CA)")
    if args.cert:
        cert, key = Path(args.cert), Path(args.key)
        names = ("--cert", "--key")
    elif tls.configured:
        raise Refusal(
            f"{args.config} names the scheduler's own certificate ([tls]), which may "
            "not call in: give --cert and --key of a Controller certificate from the "
            f"CA {tls.ca}"
        )
    else:
        cert, key = pki / "controllers" / "controller.pem", pki / "controllers" / "controller.key"
        names = ("development PKI", "development PKI")
        if not cert.exists():
            raise Refusal(
                f"no controller certificate at {cert}: pass --config with the "
                "scheduler's configuration, or --ca/--cert/--key, or --insecure for "
                "a plaintext scheduler"
            )
    if args.ca:
        ca, ca_name = Path(args.ca), "--ca"
    elif tls.configured:
        ca, ca_name = Path(tls.ca), "tls.ca"
    else:
        ca, ca_name = pki / "ca.pem", "development PKI"
    try:
        check_ca(ca, ca_name)
        check_pair(cert, key, *names)
    except ConfigError as err:
        raise Refusal(str(err)) from None
    return ca, cert, key


def emit(text: str) -> None:
    """Print one line (or table) now; a closed output raises OutputClosed."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed from None


def format_nodes(nodes) -> str:
    """A table of nodes: id, state, address, cpu, memory, instances, last seen."""
    header = ("NODE", "STATE", "ADDRESS", "CPU", "MEMORY FREE/TOTAL", "INSTANCES", "LAST SEEN")
    rows = [header]
    now = datetime.datetime.now(datetime.UTC).timestamp()
    for node in nodes:
        cpu = f"{node.cpu_load:.0f}%"
        if node.cpu_cores:
            cpu += f" of {node.cpu_cores}"
        memory = (
            f"{node.memory_free / GIB:.1f}/{node.memory_total / GIB:.1f} GiB"
            if node.memory_total
            else "-"
        )
        seen = f"{max(0.0, now - node.last_seen_unix):.0f}s ago" if node.last_seen_unix else "-"
        rows.append(
            (
                node.id,
                NODE_STATES.get(node.state, str(node.state)),
                node.address,
                cpu,
                memory,
                str(len(node.instance_ids)),
                seen,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)


def format_event(event) -> str:
    """One line per ClusterEvent."""
    kind = event.WhichOneof("event")
    prefix = f"{event.revision:>8}"
    if kind == "snapshot":
        return (
            f"{prefix} SNAPSHOT {len(event.snapshot.nodes)} nodes, "
            f"{len(event.snapshot.instances)} instances (epoch {event.epoch})"
        )
    if kind == "node":
        node = event.node.node
        extra = f" instances: {', '.join(node.instance_ids)}" if node.instance_ids else ""
        kind_name = EVENT_KINDS.get(event.node.kind, str(event.node.kind))
        return f"{prefix} {kind_name:<8} node {node.id} {node.address}{extra}"
    status = event.instance
    message = f" ({status.status.message})" if status.status.HasField("message") else ""
    return (
        f"{prefix} INSTANCE {status.instance_id} on {status.node_id}: "
        f"{STATUS_CODES.get(status.status.code, status.status.code)}{message}"
    )


async def _nodes(args, schedulers: Channels) -> int:
    deadline = asyncio.get_running_loop().time() + args.timeout
    reply = await call(
        schedulers.leader,
        lambda address: schedulers.cluster(address).ListNodes,
        controller_pb2.Empty(),
        idempotent=True,
        deadline=deadline,
        give_up=True,
        report=note,
    )
    emit(format_nodes(reply.nodes))
    return 0


async def _watch(args, schedulers: Channels) -> int:
    async for event in watch_events(
        schedulers, args.epoch, args.after, patience=args.timeout, give_up=True, report=note
    ):
        emit(format_event(event))
    return 0


def run(command, args) -> int:
    """Run an admin command; every failure becomes one readable line and exit code 1.

    A reader that stops reading (`watch | head`) ends the command quietly with 0: for a stream
    that never ends by itself, the reader leaving is a normal end, like Ctrl-C.
    """
    try:
        scheduler = target(args)
    except (Refusal, ConfigError) as err:
        return fail(str(err))
    schedulers: Channels | None = None

    async def main() -> int:
        nonlocal schedulers
        schedulers = Channels(scheduler.addresses, scheduler.tls)
        try:
            return await command(args, schedulers)
        finally:
            schedulers.close()

    def failed_at() -> str:
        """The address of a call that failed: errors other than NotServing do not move on."""
        return schedulers.leader.current if schedulers else scheduler.addresses[0]

    try:
        return asyncio.run(main())
    except OutputClosed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except KeyboardInterrupt:
        return 0
    except GaveUp as err:
        return fail(gave_up(err, scheduler, args.timeout))
    except TimeoutError:  # only `nodes` sets a deadline per call
        return fail(f"no answer from {failed_at()} within {args.timeout:g} s (--timeout)")
    except (GRPCError, StreamTerminatedError, OSError) as err:  # ssl.SSLError is an OSError
        return fail(describe(err, scheduler, failed_at()))


def fail(problem: str) -> int:
    print(f"orka-scheduler: {problem}", file=sys.stderr)
    return 1


def note(line: str) -> None:
    """A switch to another scheduler ("following leader at X"), on stderr: stdout is data."""
    print(f"orka-scheduler: {line}", file=sys.stderr, flush=True)


def gave_up(err: GaveUp, scheduler: Target, timeout: float) -> str:
    """One line for a search for the leader that ended with none."""
    last = describe(err.last.cause, scheduler, err.last.address)
    if err.timed_out:
        return f"no leader found within {timeout:g} s (--timeout); last: {last}"
    if len(scheduler.addresses) > 1:
        return f"no leader found at {', '.join(scheduler.addresses)}; last: {last}"
    if err.first is err.last:
        return last
    # One scheduler: why it stopped serving (shutting down), then why it is given up.
    return f"{describe(err.first.cause, scheduler, err.first.address)}; then {last}"


def describe(err: BaseException, scheduler: Target, address: str) -> str:
    """One line for how a call at `address` failed."""
    if isinstance(err, GRPCError):
        return f"{address}: {err.status.name}: {err.message}"
    return explain(err, scheduler, address)


def explain(err: BaseException, scheduler: Target, address: str) -> str:
    """One line for a failure to talk to the scheduler at `address`: what happened, and what
    to do."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"the scheduler at {address} answered, but its certificate is not signed by the "
            f"CA in {scheduler.ca} ({err.verify_message}): use the scheduler's CA (--config "
            "with the scheduler's configuration, or --ca)"
        )
    if isinstance(err, ssl.SSLError) and err.reason == "WRONG_VERSION_NUMBER":
        return (
            f"{address} answered in plaintext, not TLS: the scheduler runs with --insecure; "
            "add --insecure"
        )
    if isinstance(err, StreamTerminatedError):
        if scheduler.tls is None:
            if speaks_tls(*host_port(address)):
                return f"the scheduler at {address} speaks TLS: drop --insecure"
            return f"the scheduler at {address} closed the connection: {err}"
        return (
            f"the scheduler at {address} closed the connection after the TLS handshake: "
            f"it does not accept the certificate {scheduler.cert} (from another CA?)"
        )
    return f"cannot reach the scheduler at {address}: {err}"


def speaks_tls(host: str, port: int) -> bool:
    """Whether (host, port) completes a TLS handshake (its certificate is not checked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as raw,
            context.wrap_socket(raw),
        ):
            return True
    except (OSError, ValueError):
        return False


def cmd_nodes(args) -> int:
    return run(_nodes, args)


def cmd_watch(args) -> int:
    return run(_watch, args)


def add_commands(commands) -> None:
    """Register `nodes` and `watch` on the CLI's subparsers."""
    for name, func, text in (
        ("nodes", cmd_nodes, "list the nodes (ListNodes)"),
        ("watch", cmd_watch, "print cluster events as they come"),
    ):
        sub = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}, as a Controller. "
            "With no options: the scheduler of `serve` with no config, on this host, with the "
            "development PKI's Controller certificate.",
        )
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="the scheduler's configuration: its listen port, [tls] CA and "
            "data_dir (whose development PKI holds a Controller certificate)",
        )
        sub.add_argument(
            "--address",
            metavar="HOST:PORT[,HOST:PORT...]",
            help=f"the scheduler (default: the listen port of --config on this "
            f"host, else {DEFAULT_ADDRESS}); several, comma-separated: the "
            "schedulers of one cluster, whose leader is followed",
        )
        sub.add_argument(
            "--insecure", action="store_true", help="plaintext, for a scheduler run with --insecure"
        )
        sub.add_argument(
            "--ca",
            metavar="FILE",
            help="cluster CA (PEM; default: tls.ca or the development PKI's)",
        )
        sub.add_argument("--cert", metavar="FILE", help="a Controller certificate (PEM)")
        sub.add_argument("--key", metavar="FILE", help="its private key (PEM)")
        if name == "nodes":
            sub.add_argument(
                "--timeout",
                type=float,
                default=10.0,
                metavar="SECONDS",
                help="for the answer, following the leader (default 10)",
            )
        else:
            sub.add_argument(
                "--timeout",
                type=float,
                default=WATCH_TIMEOUT,
                metavar="SECONDS",
                help="to find the leader, at the start and after losing it "
                f"(default {WATCH_TIMEOUT:g})",
            )
            sub.add_argument("--epoch", default="", help="resume in this epoch ...")
            sub.add_argument(
                "--after",
                type=int,
                default=0,
                metavar="REVISION",
                help="... after this revision (default: a snapshot first)",
            )
        sub.set_defaults(func=func)
