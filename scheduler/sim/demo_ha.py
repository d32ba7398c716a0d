"""`orka-scheduler demo --ha`: two schedulers on one etcd, the leader killed, the takeover shown.

One etcd member (`scheduler.sim.local_etcd`), two schedulers A and B (`[store] backend = "etcd"`,
a 2 s lease, one PKI), simulated Agents and a simulated Controller given both addresses. The
demo places instances through the leader, watches the cluster's events, kills the leader with
SIGKILL and shows what follows: when the standby took over, the Agents rejoining it with their
instances, the Controller's watch resuming with no Snapshot, a Stop and a Destroy reaching
instances placed before the kill, and new placements through the new leader.

Plain asyncio, like `demo`: etcd, the schedulers and the Agents are child processes, stopped
by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import pki
from .._proto import controller_pb2
from ..admin import format_nodes
from ..follow import health
from . import local_etcd
from .demo import demo_config, progress, start_scheduler, stop
from .sim_controller import Placement, SimController
from .simulator import AgentProcesses

LEASE_TTL = 2.0  # s: short, so the takeover comes soon (the production default is 5 s)
NODE_TIMEOUT = 10.0  # s: Agents rejoin within ~2 s of a takeover (their backoff); none is LOST
HEALTH_POLL = 0.02  # s between /healthz probes while waiting for a leader
ELECT_TIMEOUT = LEASE_TTL + 10.0  # s for a leader to be elected (at start, after the kill)
REJOIN_TIMEOUT = 15.0  # s for every Agent to rejoin the new leader
SIGNAL_TIMEOUT = 10.0  # s for a Stop/Destroy to reach the Agent
PREFIX = "/orka-demo"  # etcd key prefix of the demo's cluster
JOINED, STATUS = controller_pb2.NodeEvent.JOINED, controller_pb2.NodeEvent.STATUS
TERMINATED = controller_pb2.Status.TERMINATED


@dataclass
class Member:
    """One scheduler of the demo."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    http_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def health(self) -> int | None:
        """The HTTP status of its /healthz (200 leader, 503 standby); None if no answer."""
        return await health(self.http_port)


@dataclass
class Watch:
    """The Controller's watch, recorded: every event with when it came and from which
    scheduler (the leader the watch followed)."""

    events: list[tuple[float, str, controller_pb2.ClusterEvent]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, controller: SimController) -> None:
        async for _arrived, event in controller.watch():
            self.events.append((time.monotonic(), controller.leader.current, event))
            self.changed.set()

    async def wait_for(self, condition, timeout: float) -> bool:
        """Until `condition()` holds (checked at each event); False after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    def since(self, moment: float) -> list[tuple[str, controller_pb2.ClusterEvent]]:
        return [(source, event) for at, source, event in self.events if at >= moment]


def clock(moment: float) -> str:
    """A time.monotonic() moment as wall-clock HH:MM:SS.mmm."""
    wall = time.time() - (time.monotonic() - moment)
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"


def ha_config(directory: Path, name: str, http_port: int, etcd: str, paths: pki.PkiPaths) -> str:
    """The demo's scheduler configuration on the etcd backend, TLS from the shared PKI."""
    return demo_config(directory, name, http_port, NODE_TIMEOUT) + (
        f'[tls]\nca = "{paths.ca}"\ncert = "{paths.scheduler.cert}"\n'
        f'key = "{paths.scheduler.key}"\n'
        f'[store]\nbackend = "etcd"\n'
        f'[etcd]\nendpoints = ["{etcd}"]\nprefix = "{PREFIX}"\nlease_ttl = {LEASE_TTL}\n'
    )


async def start_member(directory: Path, name: str, etcd: str, paths: pki.PkiPaths) -> Member:
    http_port = local_etcd.free_port()
    process, port = await start_scheduler(
        directory, name, ha_config(directory, name, http_port, etcd, paths)
    )
    return Member(name, process, port, http_port, directory / f"{name}.log")


async def wait_for_leader(members: list[Member], timeout: float) -> Member | None:
    """The member whose /healthz answers 200 first, probed every HEALTH_POLL s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in members:
            if await member.health() == 200:
                return member
        await asyncio.sleep(HEALTH_POLL)
    return None


async def wait_until_gone(fleet: AgentProcesses, node_id: str, instance_id: str) -> bool:
    """Until the Agent of `node_id` no longer runs `instance_id`; False after SIGNAL_TIMEOUT."""
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while time.monotonic() < deadline:
        if instance_id not in (await fleet.held()).get(node_id, []):
            return True
        await asyncio.sleep(0.1)
    return False


async def run(agents: int, instances: int, keep: bool) -> int:
    binary = local_etcd.etcd_binary()
    if binary is None:
        print(f"orka-scheduler demo --ha: {local_etcd.MISSING}", file=sys.stderr)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="orka-demo-ha-"))
    print(f"orka-scheduler demo --ha in {directory}")
    etcd = local_etcd.EtcdMember(directory / "etcd")
    members: list[Member] = []
    fleet = controller = watcher = None
    try:
        etcd.start()
        await asyncio.to_thread(etcd.wait_ready)
        print(
            f"  etcd {local_etcd.version(binary) or '(version unknown)'} at {etcd.endpoint} "
            f"(PID {etcd.pid}, {binary})"
        )
        paths = pki.init_pki(directory / "pki")
        for name in ("A", "B"):
            members.append(await start_member(directory, name, etcd.endpoint, paths))
        addresses = [member.address for member in members]
        print(
            f"  schedulers A at {addresses[0]} and B at {addresses[1]}: state in etcd under "
            f"{PREFIX}, lease_ttl {LEASE_TTL:g} s, mutual TLS with one PKI ({paths.directory})"
        )
        leader = await wait_for_leader(members, ELECT_TIMEOUT)
        if leader is None:
            print("  no scheduler became leader; see the logs", file=sys.stderr)
            return 1
        standby = next(member for member in members if member is not leader)
        print(
            f"  {leader.name} leads (/healthz 200); {standby.name} stands by (/healthz 503, "
            f"answers every call UNAVAILABLE naming {leader.name}'s address)"
        )

        fleet = AgentProcesses(agents, addresses, rate=1.0, pki=paths.directory, prefix="node")
        await fleet.start()
        controller = SimController(addresses, pki=paths.directory)
        watch = Watch()
        watcher = asyncio.ensure_future(watch.run(controller))
        await asyncio.sleep(1.0)  # every Agent has reported once
        print(
            f"  {agents} simulated Agents joined {leader.name}; the simulated Controller "
            "watches the cluster's events (both given both addresses)"
        )

        placed: list[Placement] = []

        def on_placement(placement: Placement) -> None:
            if placement.first_status_s is not None:
                placed.append(placement)
            progress(len(placed), instances, 0)

        report = await controller.schedule_many(
            instances, concurrency=10, follow=False, memory=64, cpu=50, on_placement=on_placement
        )
        print(
            f"\n  placed {report.placed}/{report.requested} instances on {report.nodes_used} "
            f"nodes through {leader.name}"
        )
        if not placed:
            return 1
        await asyncio.sleep(0.5)  # the last statuses reach the watch
        last_before = watch.events[-1][2].revision

        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await leader.process.wait()
        print(f"  {clock(killed)} kill -9 {leader.name} (the leader, PID {leader.process.pid})")
        successor = await wait_for_leader([standby], ELECT_TIMEOUT)
        took_over = time.monotonic()
        if successor is None:
            print(f"  {standby.name} did not take over within {ELECT_TIMEOUT:g} s", file=sys.stderr)
            return 1
        takeover = took_over - killed
        print(
            f"  {clock(took_over)} {standby.name} leads: {takeover:.2f} s after the kill "
            f"(lease_ttl {LEASE_TTL:g} s: etcd let the dead leader's lease expire)"
        )

        def rejoined() -> dict[str, list[str]]:
            return {
                event.node.node.id: list(event.node.node.instance_ids)
                for _, event in watch.since(killed)
                if event.WhichOneof("event") == "node" and event.node.kind == JOINED
            }

        def reported() -> set[str]:  # a rejoined node is placeable once it reports again
            return {
                event.node.node.id
                for _, event in watch.since(killed)
                if event.WhichOneof("event") == "node" and event.node.kind == STATUS
            }

        await watch.wait_for(
            lambda: len(rejoined()) >= agents and len(reported()) >= agents, REJOIN_TIMEOUT
        )
        joins = rejoined()
        kept = {instance for ids in joins.values() for instance in ids}
        held = {instance for ids in (await fleet.held()).values() for instance in ids}
        before = {placement.instance_id for placement in placed}
        print(
            f"  {len(joins)}/{agents} Agents rejoined {standby.name} "
            f"(by {time.monotonic() - took_over:.1f} s after the takeover), each keeping its "
            f"instances: {len(before & kept)}/{len(before)} of those placed through "
            f"{leader.name}, all still running on their Agents ({len(before & held)})"
        )

        resumed = watch.since(killed)
        snapshots = sum(event.WhichOneof("event") == "snapshot" for _, event in resumed)
        from_successor = [event for source, event in resumed if source == standby.address]
        first = from_successor[0].revision if from_successor else None
        print(
            f"  the Controller's watch followed to {standby.name} and resumed after revision "
            f"{last_before} (the last it had from {leader.name}): {len(from_successor)} "
            f"events since, the first at revision {first}, "
            f"{'no' if not snapshots else snapshots} Snapshot"
        )

        stopped, destroyed = placed[0], placed[-1]
        await controller.stop(stopped.instance_id)
        stop_reached = await wait_until_gone(fleet, stopped.node_id, stopped.instance_id)
        await controller.destroy(destroyed.instance_id)
        destroy_reached = await wait_until_gone(fleet, destroyed.node_id, destroyed.instance_id)
        for verb, placement, reached in (
            ("Stop", stopped, stop_reached),
            ("Destroy", destroyed, destroy_reached),
        ):
            print(
                f"  {verb} {placement.instance_id} (placed on {placement.node_id} through "
                f"{leader.name} before the kill) through {standby.name}: "
                + ("its Agent stopped it" if reached else "NOT reached its Agent")
            )

        more = max(1, instances // 10)
        after = await controller.schedule_many(
            more, concurrency=5, follow=False, memory=64, cpu=50, prefix="after"
        )
        print(f"  placed {after.placed}/{more} new instances through {standby.name}")

        nodes = await controller.list_nodes()
        print()
        print(format_nodes(nodes))
        print()
        old, new = leader.name, standby.name
        checks = [
            (
                f"{old} led. Killed with SIGKILL it could not resign, so etcd let its lease "
                f"expire and {new}, its standby, led {takeover:.2f} s after the kill "
                f"(lease_ttl {LEASE_TTL:g} s).",
                takeover <= LEASE_TTL + 2,
            ),
            (
                f"Nothing acknowledged was lost: {new} knew {len(before & kept)}/{len(before)} "
                f"instances placed through {old} (from etcd), and {len(joins)}/{agents} Agents "
                f"rejoined {new} keeping them running.",
                len(joins) == agents and before <= kept and before <= held,
            ),
            (
                f"The Controller's watch moved to {new} by itself and resumed after its last "
                f"event: {'no' if not snapshots else snapshots} Snapshot.",
                bool(from_successor) and not snapshots,
            ),
            (
                f"Stop and Destroy through {new} reached instances placed through {old}; {new} "
                f"placed {after.placed}/{more} more.",
                stop_reached and destroy_reached and after.placed == more,
            ),
        ]
        print("summary:")
        for line, passed in checks:
            print(f"  - {line}" + ("" if passed else "  <-- NOT AS EXPECTED"))
        ok = all(passed for _, passed in checks)
        kept_line = "kept" if keep else "deleted at exit; --keep keeps them"
        print(f"logs: {members[0].log}, {members[1].log} ({kept_line})")
        return 0 if ok else 1
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        if controller is not None:
            controller.close()
        for member in members:  # the schedulers first: a planned shutdown ends relays quietly
            await stop(member.process)
        if fleet is not None:
            await fleet.close()
        etcd.stop()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(agents: int, instances: int, keep: bool) -> int:
    try:
        return asyncio.run(run(agents, instances, keep))
    except KeyboardInterrupt:
        return 130
