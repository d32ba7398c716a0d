"""Soak test of orka-scheduler (issue #7): N minutes of churn, then the Controller's view
must equal the truth, and the scheduler's RSS must not grow.

    python bench/soak.py --minutes 10                 # mTLS with a generated PKI, 60 agents
    python bench/soak.py --minutes 0.2 --agents 8 --insecure

Everything runs on 127.0.0.1: the scheduler (`python -m scheduler serve`, its RSS read from
/proc every 10 s), simulated Agents in child processes (`scheduler.sim.simulator`, one
`AgentProcesses` per group) and a simulated Controller here, on plain asyncio.

Churn: a stable core group (instances run until signalled) plus churning groups that join
(new processes, fresh node ids), leave gracefully (LeaveCluster) or die (SIGKILL of their
process); their instances end by themselves after a short lifetime. Instances are scheduled
(follow=False) and a random sample of the placed ones destroyed. A watcher follows
WatchEvents the whole time, resuming with (epoch, last revision) whenever its stream breaks
(and it is broken on purpose now and then), and builds its view: node id -> state, instance
id -> (latest code, node).

At the end (churn stopped, then a settle period longer than node_timeout and the lifetime):
every node the simulator still runs must be READY in the view, every node that left LEFT,
every killed one LOST; every instance a live Agent holds must be non-TERMINATED in the view
on that node, and every instance RUNNING/WAITING on a READY node in the view must be held by
that node's Agent. Mismatches are printed (first 20); the exit status is 1 if there are any.
The last line of output is one JSON object with the figures.

RSS: the scheduler keeps, by design, its last `[events] retained` events (100,000 by default)
and its last 10,000 terminated instances; RSS grows until those are full, so in a short run the
slope measures filling them, not a leak. `--events-retained 5000` fills the log within a
minute; `--departed-retained 100 --finished-retained 1000` fill the other two bounds within a few
minutes (at the default 10,000 the departed nodes alone take hours to fill), leaving the second
half's slope to leaks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: scheduler, bench

from grpclib.exceptions import GRPCError, StreamTerminatedError  # noqa: E402
from h2.exceptions import StreamClosedError  # noqa: E402

from bench.run import SchedulerProcess, rss_kib, slope  # noqa: E402
from scheduler._proto import controller_pb2  # noqa: E402
from scheduler.config import DEFAULT_DEPARTED_RETAINED  # noqa: E402
from scheduler.sim.sim_controller import Placement, SimController  # noqa: E402
from scheduler.sim.simulator import AgentProcesses, Behaviour, node_ids, raise_fd_limit  # noqa: E402

NODE_TIMEOUT = 3.0  # s: the scheduler's liveness timeout
REPORT_RATE = 1.0  # statuses per second per Agent
LIFETIME = 4.0  # s an instance on a churning Agent runs before it ends by itself
# MiB per instance: large enough that no node holds ~100 instances. Each running instance
# keeps one HTTP/2 stream (its Create call) open on the scheduler's connection to the Agent,
# and at the stream limit further Create / Signal calls to that Agent wait (see the report).
MEMORY_MIB = 1024
STATES = ("READY", "LEFT", "LOST")
CODES = ("WAITING", "RUNNING", "TERMINATED")
KIND_STATE = {0: "READY", 1: "READY", 2: "LEFT", 3: "LOST"}  # NodeEvent.Kind -> Node.State

_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f} s] {text}", flush=True)


# --- the Controller's view ------------------------------------------------------------------


@dataclass
class View:
    """What the Controller knows from WatchEvents alone."""

    nodes: dict[str, str] = field(default_factory=dict)  # node id -> READY / LEFT / LOST
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (code, node)
    epoch: str = ""
    revision: int = 0
    events: int = 0
    snapshots: int = 0
    resumes: int = 0  # reconnections with (epoch, revision)
    resumed_by_snapshot: int = 0  # ... answered with a fresh Snapshot instead of a replay
    breaks: int = 0  # streams that ended or failed (not counting our own cuts)
    anomalies: list[str] = field(default_factory=list)  # protocol oddities (not view mismatches)

    def apply(self, event: controller_pb2.ClusterEvent, *, first: bool) -> None:
        self.events += 1
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            self.snapshots += 1
            if first and self.epoch:
                self.resumed_by_snapshot += 1
            self.nodes = {n.id: STATES[n.state] for n in event.snapshot.nodes}
            self.instances = {
                s.instance_id: (CODES[s.status.code], s.node_id) for s in event.snapshot.instances
            }
        else:
            if event.epoch == self.epoch and event.revision <= self.revision:
                self.anomaly(f"revision went back: {event.revision} after {self.revision} ({kind})")
            if kind == "node":
                node = event.node.node
                state = KIND_STATE[event.node.kind]
                if event.node.kind != 1 and STATES[node.state] != state:
                    self.anomaly(
                        f"node event kind {event.node.kind} for {node.id} carries "
                        f"state {STATES[node.state]}"
                    )
                if event.node.kind == 1 and self.nodes.get(node.id) in ("LEFT", "LOST"):
                    self.anomaly(f"STATUS of {node.id} after it was {self.nodes[node.id]}")
                self.nodes[node.id] = state
            elif kind == "instance":
                status = event.instance
                node = status.node_id or self.instances.get(status.instance_id, ("", ""))[1]
                self.instances[status.instance_id] = (CODES[status.status.code], node)
        self.epoch, self.revision = event.epoch, event.revision

    def anomaly(self, text: str) -> None:
        if len(self.anomalies) < 1000:
            self.anomalies.append(text)


async def watch_forever(
    controller: SimController, view: View, cut_every: float, ready: asyncio.Event
) -> None:
    """Follow WatchEvents; resume with (epoch, revision) after every break; cut the stream
    on purpose every `cut_every` s (0: never) to exercise resuming."""
    rng = random.Random(7)
    while True:
        first = True
        cut_at = time.monotonic() + rng.uniform(0.5, 1.5) * cut_every if cut_every else None
        if view.epoch:
            view.resumes += 1
        try:
            async with contextlib.aclosing(controller.watch(view.epoch, view.revision)) as events:
                async for _arrived, event in events:
                    view.apply(event, first=first)
                    first = False
                    ready.set()
                    if cut_at is not None and time.monotonic() > cut_at:
                        break  # closing the generator cancels the stream
                else:
                    view.breaks += 1
        except (TimeoutError, GRPCError, StreamTerminatedError, OSError) as err:
            view.breaks += 1
            say(
                f"watch broke: {type(err).__name__}: {err}; resuming after "
                f"{view.epoch}/{view.revision}"
            )
            await asyncio.sleep(0.2)


# --- the simulated fleet --------------------------------------------------------------------


@dataclass
class Group:
    name: str
    fleet: AgentProcesses
    nodes: list[str]
    core: bool = False


class Fleet:
    """The groups of simulated Agents and what happened to each node (the truth)."""

    def __init__(self, address: str, pki: Path | None, log_file: Path) -> None:
        self.address = address
        self.pki = pki
        self.log_file = log_file
        self.live: dict[str, Group] = {}
        self.left: set[str] = set()
        self.killed: set[str] = set()
        self.joins = self.leaves = self.kills = 0  # groups' nodes
        self._number = 0

    async def start_group(self, count: int, *, core: bool = False) -> Group:
        name = "core" if core else f"churn{self._number:03d}"
        self._number += 1
        behaviour = Behaviour(lifetime=None if core else LIFETIME)
        fleet = AgentProcesses(
            count,
            self.address,
            rate=REPORT_RATE,
            processes=1,
            prefix=name,
            pki=self.pki,
            behaviour=behaviour,
            log_file=self.log_file,
        )
        await fleet.start()
        group = Group(name, fleet, node_ids(count, name), core)
        self.live[name] = group
        self.joins += count
        return group

    async def leave(self, group: Group) -> None:
        del self.live[group.name]
        answers = await group.fleet.broadcast("leave")
        acknowledged = sum(a.get("left", 0) for a in answers)
        if acknowledged != len(group.nodes):
            say(f"{group.name}: only {acknowledged} of {len(group.nodes)} leaves acknowledged")
        await group.fleet.close()
        self.left.update(group.nodes)
        self.leaves += len(group.nodes)

    async def kill(self, group: Group) -> None:
        del self.live[group.name]
        for pid in group.fleet.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await group.fleet.close()
        self.killed.update(group.nodes)
        self.kills += len(group.nodes)

    def running_nodes(self) -> dict[str, Group]:
        return {node: group for group in self.live.values() for node in group.nodes}

    async def held(self) -> dict[str, list[str]]:
        held: dict[str, list[str]] = {}
        for group in list(self.live.values()):
            held.update(await group.fleet.held())
        return held

    async def close(self) -> None:
        await asyncio.gather(*(g.fleet.close() for g in self.live.values()), return_exceptions=True)


async def churn(
    fleet: Fleet, stop_at: float, churn_agents: int, rng: random.Random, period: float
) -> None:
    """Every ~`period` s: a new group joins, or one leaves, or one is killed."""
    while time.monotonic() < stop_at:
        await asyncio.sleep(rng.uniform(0.5, 1.5) * period)
        if time.monotonic() >= stop_at:
            return
        churning = [g for g in fleet.live.values() if not g.core]
        present = sum(len(g.nodes) for g in churning)
        draw = rng.random()
        if churning and (present >= churn_agents or draw < 0.5):
            group = rng.choice(churning)
            if rng.random() < 0.5:
                say(f"churn: {group.name} ({len(group.nodes)} nodes) leaves")
                await fleet.leave(group)
            else:
                say(f"churn: {group.name} ({len(group.nodes)} nodes) killed")
                await fleet.kill(group)
        else:
            size = max(1, min(churn_agents - present, rng.randint(1, max(1, churn_agents // 3))))
            group = await fleet.start_group(size)
            say(f"churn: {group.name} ({size} nodes) joined")


# --- the Controller's work --------------------------------------------------------------------


@dataclass
class Work:
    placements: int = 0
    schedule_errors: dict[str, int] = field(default_factory=dict)
    destroys: int = 0
    destroy_errors: dict[str, int] = field(default_factory=dict)
    placed: dict[str, str] = field(default_factory=dict)  # instance id -> node (maybe live)


async def place(controller: SimController, workload: controller_pb2.Workload) -> Placement:
    """`SimController.schedule(follow=False)`, but hanging up on a stream that already ended is
    no failure: there `stream.cancel()` raises h2's StreamClosedError (the scheduler may end a
    Controller's stream right after the first status, e.g. when the node leaves), which
    `SimController.schedule` does not catch."""
    placement = Placement(workload.instance_id)
    started = time.perf_counter()
    try:
        async with controller.scheduling.Schedule.open(timeout=10.0) as stream:
            await stream.send_message(controller_pb2.SchedulingRequest(workload=workload), end=True)
            status = await stream.recv_message()
            if status is not None:
                placement.first_status_s = time.perf_counter() - started
                placement.node_id = status.node_id
                placement.first_code = CODES[status.status.code]
            with contextlib.suppress(StreamClosedError):
                await stream.cancel()
    except GRPCError as err:
        placement.error = f"{err.status.name}: {err.message}"
    except (TimeoutError, StreamTerminatedError, StreamClosedError, OSError) as err:
        placement.error = placement.error or f"{type(err).__name__}: {err}"
    return placement


async def schedule_loop(
    controller: SimController,
    work: Work,
    stop_at: float,
    concurrency: int,
    pause: float,
    memory: int,
) -> None:
    run = f"{time.time_ns() % 10**9:09d}"
    number = 0

    async def worker() -> None:
        nonlocal number
        while time.monotonic() < stop_at:
            instance_id = f"soak-{run}-{number}"
            number += 1
            workload = controller_pb2.Workload(instance_id=instance_id, image="sim/soak:1")
            workload.resource_limits.memory = memory
            workload.resource_limits.cpu = 50
            placement = await place(controller, workload)
            if placement.first_status_s is not None:
                work.placements += 1
                work.placed[instance_id] = placement.node_id
            else:
                key = placement.error.split(":", 1)[0] or "no status"
                work.schedule_errors[key] = work.schedule_errors.get(key, 0) + 1
            await asyncio.sleep(pause)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def destroy_loop(
    controller: SimController,
    work: Work,
    view: View,
    stop_at: float,
    rng: random.Random,
    period: float,
) -> None:
    """Every ~`period` s, destroy a random sample of the instances placed and still running."""
    while time.monotonic() < stop_at:
        await asyncio.sleep(period)
        live = [
            i
            for i, (code, node) in view.instances.items()
            if code != "TERMINATED" and i in work.placed and view.nodes.get(node) == "READY"
        ]
        gate = asyncio.Semaphore(8)

        async def destroy(instance_id: str, gate: asyncio.Semaphore = gate) -> None:
            async with gate:
                try:
                    await controller.scheduling.Destroy(
                        controller_pb2.WorkloadInstance(instance_id=instance_id), timeout=5.0
                    )
                    work.destroys += 1
                    work.placed.pop(instance_id, None)
                except GRPCError as err:
                    key = err.status.name
                    work.destroy_errors[key] = work.destroy_errors.get(key, 0) + 1
                except (TimeoutError, StreamTerminatedError, OSError) as err:
                    key = type(err).__name__
                    work.destroy_errors[key] = work.destroy_errors.get(key, 0) + 1

        await asyncio.gather(*(destroy(i) for i in rng.sample(live, k=len(live) // 3)))


async def rss_loop(pid: int, samples: list[tuple[float, int]], every: float) -> None:
    while True:
        samples.append((time.monotonic(), rss_kib(pid)))
        await asyncio.sleep(every)


# --- the check ----------------------------------------------------------------------------------


def compare(
    view: View, fleet: Fleet, held: dict[str, list[str]], departed_retained: int
) -> list[str]:
    """What differs between the view and the truth. A departed node may be missing from a view
    rebuilt from a snapshot once the scheduler keeps `departed_retained` of them (it forgets
    the others by design)."""
    mismatches: list[str] = []
    running = fleet.running_nodes()
    forgetting = sum(state != "READY" for state in view.nodes.values()) >= departed_retained
    for node in sorted(running):
        if view.nodes.get(node) != "READY":
            mismatches.append(f"node {node}: simulator runs it, view says {view.nodes.get(node)}")
    for departed, state in ((fleet.left, "LEFT"), (fleet.killed, "LOST")):
        for node in sorted(departed):
            seen = view.nodes.get(node)
            if seen != state and not (seen is None and forgetting):
                mismatches.append(f"node {node}: it was {state}, view says {seen}")
    known = set(running) | fleet.left | fleet.killed
    for node in sorted(set(view.nodes) - known):
        mismatches.append(f"node {node}: in the view ({view.nodes[node]}), never simulated")
    for node in sorted(running):
        if node not in held:
            mismatches.append(f"node {node}: its Agent did not answer 'instances'")
    for node, instances in sorted(held.items()):
        for instance_id in instances:
            code, where = view.instances.get(instance_id, (None, None))
            if code is None or code == "TERMINATED" or where != node:
                mismatches.append(
                    f"instance {instance_id}: held by {node}, view says {code} on {where!r}"
                )
    for instance_id, (code, node) in sorted(view.instances.items()):
        if (
            code in ("RUNNING", "WAITING")
            and view.nodes.get(node) == "READY"
            and instance_id not in held.get(node, ())
        ):
            mismatches.append(
                f"instance {instance_id}: view says {code} on READY {node}, "
                f"its Agent does not hold it"
            )
    return mismatches


# --- the run --------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    seconds = args.minutes * 60
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="orka-soak-"))
    pki = None
    if not args.insecure:
        from scheduler import pki as pki_module

        pki = workdir / "pki"
        pki_module.init_pki(pki)
    say(
        f"soak: {args.minutes} min, {args.agents} agents, "
        f"{'plaintext' if pki is None else 'mTLS'}, logs in {workdir}"
    )
    SchedulerProcess.wrapper = args.wrap
    scheduler = SchedulerProcess(
        workdir,
        "scheduler",
        pki=pki,
        liveness={
            "node_timeout": NODE_TIMEOUT,
            **({"departed_retained": args.departed_retained} if args.departed_retained else {}),
        },
        scheduling={
            "attempt_timeout": 2.0,
            **({"finished_retained": args.finished_retained} if args.finished_retained else {}),
        },
    )
    if args.events_retained:
        with scheduler.config.open("a") as config:
            config.write(f"[events]\nretained = {args.events_retained}\n")
    await scheduler.start()
    fleet = Fleet(scheduler.address, pki, workdir / "agents.log")
    controller = SimController(("127.0.0.1", scheduler.port), pki=pki)
    view, work = View(), Work()
    rss: list[tuple[float, int]] = []
    tasks: list[asyncio.Task] = []
    try:
        core = max(1, args.agents // 2)
        churn_agents = max(1, args.agents - core)
        await fleet.start_group(core, core=True)
        say(
            f"core group up: {core} nodes; scheduler pid {scheduler.pid}, "
            f"RSS {rss_kib(scheduler.pid)} KiB"
        )
        ready = asyncio.Event()
        rss_every = 10.0 if seconds >= 120 else max(1.0, seconds / 12)
        tasks.append(asyncio.ensure_future(rss_loop(scheduler.pid, rss, rss_every)))
        tasks.append(
            asyncio.ensure_future(
                watch_forever(controller, view, min(60.0, max(2.0, seconds / 4)), ready)
            )
        )
        await asyncio.wait_for(ready.wait(), 30)
        started = time.monotonic()
        stop_at = started + seconds
        period = min(5.0, max(0.7, seconds / 20))
        workers = [
            asyncio.ensure_future(churn(fleet, stop_at, churn_agents, rng, period)),
            asyncio.ensure_future(
                schedule_loop(controller, work, stop_at, args.concurrency, args.pause, args.memory)
            ),
            asyncio.ensure_future(
                destroy_loop(controller, work, view, stop_at, rng, min(5.0, period))
            ),
        ]

        async def progress() -> None:
            while True:
                await asyncio.sleep(30 if seconds >= 120 else max(2.0, seconds / 3))
                say(
                    f"progress: {len(fleet.running_nodes())} nodes live, {work.placements} "
                    f"placed, {work.destroys} destroyed, {view.events} events, RSS "
                    f"{rss[-1][1] if rss else 0} KiB"
                )

        tasks.append(asyncio.ensure_future(progress()))
        await asyncio.gather(*workers)
        churn_seconds = time.monotonic() - started
        settle = max(NODE_TIMEOUT, LIFETIME) + 3.0
        say(f"churn stopped after {churn_seconds:.1f} s; settling {settle:.0f} s")
        await asyncio.sleep(settle)
        held = await fleet.held()
        await asyncio.sleep(1.5)  # events in flight when we asked
        held_again = await fleet.held()
        if held != held_again:
            say("warning: the Agents' instances changed during the check")
        departed_retained = args.departed_retained or DEFAULT_DEPARTED_RETAINED
        mismatches = compare(view, fleet, held, departed_retained)
        # The same check against a fresh Snapshot: the view must equal what a new watcher sees.
        fresh = View()
        async with contextlib.aclosing(controller.watch()) as events:
            async for _arrived, event in events:
                fresh.apply(event, first=True)
                break
        # It keeps the `departed_retained` most recently departed nodes and forgets the others:
        # with that many in the snapshot, a LEFT/LOST node of the view may be absent from it.
        departed_kept = sum(state != "READY" for state in fresh.nodes.values())
        bound_full = departed_kept >= departed_retained

        def forgotten(node_id: str) -> bool:
            return bound_full and node_id not in fresh.nodes and view.nodes[node_id] != "READY"

        snapshot_diff = [
            f"node {n}: view {view.nodes.get(n)}, snapshot {fresh.nodes.get(n)}"
            for n in sorted(set(view.nodes) | set(fresh.nodes))
            if view.nodes.get(n) != fresh.nodes.get(n) and not forgotten(n)
        ]

        # The scheduler forgets finished instances (docs/DECISIONS.md): destroyed ones at once,
        # terminated ones and those of nodes that left or were lost beyond the newest
        # `finished_retained`.
        # A snapshot may omit those; the view keeps them TERMINATED or on a LEFT/LOST node.
        def finished(instance_id: str) -> bool:
            code, node_id = view.instances[instance_id]
            return code == "TERMINATED" or view.nodes.get(node_id) in ("LEFT", "LOST")

        snapshot_diff += [
            f"instance {i}: view {view.instances.get(i)}, snapshot {fresh.instances.get(i)}"
            for i in sorted(set(view.instances) | set(fresh.instances))
            if view.instances.get(i) != fresh.instances.get(i)
            and not (i not in fresh.instances and finished(i))
        ]
        say(
            f"fresh snapshot: {len(fresh.nodes)} nodes, {len(fresh.instances)} instances "
            f"({sum(c == 'TERMINATED' for c, _n in fresh.instances.values())} TERMINATED)"
        )
        if snapshot_diff:
            say(
                f"{len(snapshot_diff)} differences between the view and a fresh snapshot "
                f"(first 20):"
            )
            for line in snapshot_diff[:20]:
                say(f"  {line}")
        mismatches += [f"snapshot: {line}" for line in snapshot_diff]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        controller.close()
        await fleet.close()
        end_rss = rss_kib(scheduler.pid)
        await scheduler.stop()

    half = started + churn_seconds / 2
    second_half = [(t, kib) for t, kib in rss if half <= t <= started + churn_seconds + 1]
    points = second_half if len(second_half) >= 3 else rss
    slope_per_min = slope([(t / 60, kib) for t, kib in points]) if len(points) >= 2 else 0.0
    held_count = sum(len(v) for v in held.values())
    say(
        f"view: {len(view.nodes)} nodes ({sum(s == 'READY' for s in view.nodes.values())} "
        f"READY), {len(view.instances)} instances; Agents hold {held_count}; "
        f"{view.snapshots} snapshots, {view.resumes} resumes ({view.resumed_by_snapshot} "
        f"answered by a snapshot), {view.breaks} breaks"
    )
    say(
        f"work: {work.placements} placed, schedule errors {work.schedule_errors}; "
        f"{work.destroys} destroyed, destroy errors {work.destroy_errors}"
    )
    say(f"RSS samples (KiB): {[kib for _t, kib in rss]}")
    if view.anomalies:
        say(f"{len(view.anomalies)} protocol anomalies (first 10): {view.anomalies[:10]}")
    if mismatches:
        say(f"{len(mismatches)} MISMATCHES (first 20):")
        for line in mismatches[:20]:
            say(f"  {line}")
    else:
        say("view equals the truth: 0 mismatches")
    return {
        "minutes": args.minutes,
        "mismatches": len(mismatches),
        "rss_start_kib": rss[0][1] if rss else 0,
        "rss_end_kib": end_rss,
        "rss_slope_kib_per_min": round(slope_per_min, 1),
        "placements": work.placements,
        "destroys": work.destroys,
        "joins": fleet.joins,
        "leaves": fleet.leaves,
        "kills": fleet.kills,
        "events": view.events,
    }


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument(
        "--agents", type=int, default=60, help="simulated Agents: half a stable core, half churning"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC (default: mTLS with a generated PKI)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="Schedule calls in flight")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="s each scheduling worker waits between calls"
    )
    parser.add_argument(
        "--memory",
        type=int,
        default=MEMORY_MIB,
        help="MiB per instance (small values let a node reach 100 instances)",
    )
    parser.add_argument(
        "--events-retained",
        type=int,
        default=0,
        metavar="N",
        help="the scheduler's [events] retained (default: its own, 100000); "
        "a small log saturates early, so the RSS slope shows leaks only",
    )
    parser.add_argument(
        "--departed-retained",
        type=int,
        default=0,
        metavar="N",
        help="the scheduler's [liveness] departed_retained (default: its own, 10000; the churn "
        "departs ~25 nodes a minute, so a 25-minute soak never fills that)",
    )
    parser.add_argument(
        "--finished-retained",
        type=int,
        default=0,
        metavar="N",
        help="the scheduler's [scheduling] finished_retained (default: its own, 10000; full "
        "after ~6 minutes of this churn)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--wrap",
        metavar="SCRIPT",
        help="run the scheduler as `python SCRIPT serve ...` (e.g. bench/memwatch.py, which "
        "records where its memory is)",
    )
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args))
    print(json.dumps(result), flush=True)
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(cli())
