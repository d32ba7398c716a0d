"""A simulated Controller: issues Schedule calls at a chosen concurrency and watches events.

Plain asyncio + grpclib, never trio (see `scheduler.sim.simulator`). Used by the benchmarks, the
simulator's command line (`python -m scheduler.sim.simulator controller ...`) and demos:

    controller = SimController(("127.0.0.1", 50051))            # or pki="DIR" for mTLS
    report = await controller.schedule_many(1000, concurrency=50, memory=64)
    async for arrived, event in controller.watch():            # time.time() of arrival
        ...
    controller.close()

Given several schedulers (`SimController("a:50051,b:50051")`, SPEC §4.1) every call goes to the
leader (`scheduler.follow`), for as long as it runs: a Schedule refused before acceptance by a
standby naming the leader, or by a refused connection, is sent again to the leader (after
acceptance its statuses keep arriving through WatchEvents); Stop and Destroy likewise; the
watch resumes on the new leader after its last event, so it loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from .._proto import controller_grpc, controller_pb2
from ..follow import (
    Channels,
    GaveUp,
    Leader,
    call,
    refusal,
    remaining,
    retry,
    send_request,
    watch_events,
)
from .signals import stop_on_signals

log = logging.getLogger("scheduler.simulator")

NODE_KINDS = ("JOINED", "STATUS", "LEFT", "LOST")
CODES = ("WAITING", "RUNNING", "TERMINATED")


@dataclass
class Placement:
    """The outcome of one Schedule call, as the Controller saw it."""

    instance_id: str
    node_id: str = ""
    first_status_s: float | None = None  # from the call's start to the first status
    first_code: str = ""
    statuses: int = 0
    error: str = ""  # "STATUS_NAME: message" if the call failed
    ended_ok: bool = False


@dataclass
class ScheduleReport:
    """What `schedule_many` measured."""

    requested: int
    concurrency: int
    seconds: float
    placed: int
    failed: int
    placements_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    nodes_used: int = 0


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class SimController:
    """A Controller's connections to the schedulers of a cluster, following the leader (mTLS
    with `pki` and a controller name). `scheduler`: (host, port), "a,b,c", or addresses."""

    def __init__(
        self,
        scheduler: Leader | str | tuple[str, int] | Sequence[str],
        *,
        pki: str | os.PathLike | None = None,
        name: str = "controller",
    ) -> None:
        ssl_context = None
        if pki is not None:
            from .. import pki as pki_module
            from .. import security

            paths = pki_module.PkiPaths.load(pki)
            pair = paths.controller(name)
            if not (pair.cert.exists() and pair.key.exists()):
                pair = pki_module.issue_controller(pki, name)
            ssl_context = security.client_ssl_context(paths.ca, pair.cert, pair.key)
        self.schedulers = Channels(scheduler, ssl_context)
        self.leader = self.schedulers.leader

    @property
    def scheduling(self) -> controller_grpc.SchedulingServiceStub:
        """SchedulingService at the leader as last known (calls through it do not follow)."""
        return self.schedulers.scheduling(self.leader.current)

    @property
    def cluster(self) -> controller_grpc.ClusterServiceStub:
        """ClusterService at the leader as last known (calls through it do not follow)."""
        return self.schedulers.cluster(self.leader.current)

    def close(self) -> None:
        self.schedulers.close()

    # -- scheduling ------------------------------------------------------------------------

    async def schedule(
        self,
        workload: controller_pb2.Workload,
        *,
        follow: bool = True,
        timeout: float | None = None,
    ) -> Placement:
        """Schedule one workload at the leader; with `follow`, read its statuses until the
        stream ends, else hang up after the first (the instance keeps running). Refused
        before acceptance by a scheduler that does not lead, it goes to the leader, within
        `timeout` (None: for as long as it takes)."""
        placement = Placement(workload.instance_id)
        request = controller_pb2.SchedulingRequest(workload=workload)
        started = time.perf_counter()
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

        async def attempt(address: str) -> None:
            stream = None
            try:
                async with self.schedulers.scheduling(address).Schedule.open(
                    timeout=remaining(deadline)
                ) as stream:
                    await send_request(stream, address)
                    await stream.send_message(request, end=True)
                    async for status in stream:
                        if placement.first_status_s is None:
                            placement.first_status_s = time.perf_counter() - started
                            placement.node_id = status.node_id
                            placement.first_code = (
                                CODES[status.status.code]
                                if status.status.code < len(CODES)
                                else str(status.status.code)
                            )
                            if not follow:
                                await stream.cancel()
                                return
                        placement.statuses += 1
                    await stream.recv_trailing_metadata()
                placement.ended_ok = True
            except (
                TimeoutError,
                GRPCError,
                StreamTerminatedError,
                StreamClosedError,
                OSError,
            ) as err:
                failure = refusal(err, stream, address, idempotent=False)
                if failure is not None and placement.first_status_s is None:
                    raise failure from err
                placement.error = error_text(err)

        try:
            await retry(self.leader, attempt, deadline=deadline, report=log.info)
        except GaveUp as err:
            placement.error = error_text(err.last.cause)
        return placement

    async def schedule_many(
        self,
        count: int,
        concurrency: int,
        *,
        prefix: str = "inst",
        memory: int | None = 64,
        cpu: int | None = 100,
        image: str = "sim/workload:1",
        follow: bool = True,
        timeout: float | None = 30.0,
        on_placement: Callable[[Placement], None] | None = None,
        duration: float | None = None,
    ) -> ScheduleReport:
        """Schedule `count` instances, `concurrency` calls in flight; measure placements/s.

        With `duration`, no call starts after that many seconds (count is then an upper bound).
        """
        next_number = 0
        results: list[Placement] = []
        run = f"{time.time_ns() % 10**9:09d}"  # instance ids unique across runs

        async def worker() -> None:
            nonlocal next_number
            while next_number < count and (stop_at is None or time.perf_counter() < stop_at):
                number = next_number
                next_number += 1
                workload = controller_pb2.Workload(
                    instance_id=f"{prefix}-{run}-{number}", image=image
                )
                if memory is not None:
                    workload.resource_limits.memory = memory
                if cpu is not None:
                    workload.resource_limits.cpu = cpu
                placement = await self.schedule(workload, follow=follow, timeout=timeout)
                results.append(placement)
                if on_placement is not None:
                    on_placement(placement)

        started = time.perf_counter()
        stop_at = started + duration if duration is not None else None
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        placed = [p for p in results if p.first_status_s is not None]
        errors: dict[str, int] = {}
        for p in results:
            if p.error:
                key = p.error.split(":", 1)[0]
                errors[key] = errors.get(key, 0) + 1
        latencies = [p.first_status_s * 1000 for p in placed]
        return ScheduleReport(
            requested=len(results),
            concurrency=concurrency,
            seconds=round(seconds, 3),
            placed=len(placed),
            failed=len(results) - len(placed),
            placements_per_s=round(len(placed) / seconds, 1) if seconds else 0.0,
            latency_ms={
                "p50": round(percentile(latencies, 0.5), 3),
                "p99": round(percentile(latencies, 0.99), 3),
                "max": round(max(latencies), 3) if latencies else float("nan"),
            },
            errors=errors,
            nodes_used=len({p.node_id for p in placed}),
        )

    async def stop(self, instance_id: str) -> None:
        """Signal STOP through the leader; GRPCError for its refusal (NOT_FOUND, ...)."""
        await self._instance_call("Stop", instance_id)

    async def destroy(self, instance_id: str) -> None:
        """Destroy through the leader; GRPCError for its refusal (NOT_FOUND, ...)."""
        await self._instance_call("Destroy", instance_id)

    async def _instance_call(self, method: str, instance_id: str) -> None:
        await call(
            self.leader,
            lambda address: getattr(self.schedulers.scheduling(address), method),
            controller_pb2.WorkloadInstance(instance_id=instance_id),
            idempotent=False,
            report=log.info,
        )

    # -- events ----------------------------------------------------------------------------

    async def watch(
        self, epoch: str = "", after_revision: int = 0
    ) -> AsyncIterator[tuple[float, controller_pb2.ClusterEvent]]:
        """Every ClusterEvent with the time.time() it arrived, until the caller stops; across
        failovers it resumes on the new leader after the last event (no loss, no Snapshot)."""
        async for event in watch_events(self.schedulers, epoch, after_revision, report=log.info):
            yield time.time(), event

    async def position(self) -> tuple[str, int, float]:
        """(epoch, current revision, time.time()): the revision of a fresh watch's snapshot."""
        events = watch_events(self.schedulers, report=log.info)
        try:
            event = await events.__anext__()
        finally:
            await events.aclose()
        return event.epoch, event.revision, time.time()

    async def list_nodes(self) -> list[controller_pb2.Node]:
        reply = await call(
            self.leader,
            lambda address: self.schedulers.cluster(address).ListNodes,
            controller_pb2.Empty(),
            idempotent=True,
            report=log.info,
        )
        return list(reply.nodes)


def error_text(err: BaseException) -> str:
    """How a call failed, as `Placement.error` keeps it: "STATUS: message" for a gRPC status."""
    if isinstance(err, GRPCError):
        return f"{err.status.name}: {err.message}"
    return f"{type(err).__name__}: {err}"


def describe(event: controller_pb2.ClusterEvent) -> dict[str, Any]:
    """A ClusterEvent as a small JSON-able dict (for logs and the command line)."""
    kind = event.WhichOneof("event")
    out: dict[str, Any] = {"revision": event.revision}
    if kind == "snapshot":
        out.update(
            kind="SNAPSHOT",
            nodes=len(event.snapshot.nodes),
            instances=len(event.snapshot.instances),
        )
    elif kind == "node":
        node = event.node.node
        out.update(
            kind=NODE_KINDS[event.node.kind],
            node=node.id,
            last_seen_unix=node.last_seen_unix,
            instances=list(node.instance_ids),
        )
    elif kind == "instance":
        status = event.instance
        out.update(
            kind="INSTANCE",
            instance=status.instance_id,
            node=status.node_id,
            code=CODES[status.status.code] if status.status.code < len(CODES) else "?",
        )
    return out


# --- command line -----------------------------------------------------------------------------


def add_controller_command(
    commands: Any, connection: Callable[[argparse.ArgumentParser], None]
) -> None:
    sub = commands.add_parser("controller", help="schedule instances and/or watch events")
    connection(sub)
    sub.add_argument("--count", type=int, default=0, help="instances to schedule (0: none)")
    sub.add_argument(
        "--concurrency", type=int, default=10, help="Schedule calls in flight (default 10)"
    )
    sub.add_argument("--memory", type=int, default=64, help="MiB requested per instance")
    sub.add_argument("--cpu", type=int, default=100, help="millicores requested per instance")
    sub.add_argument("--prefix", default="inst", help="instance ids are PREFIX-<run>-<n>")
    sub.add_argument(
        "--follow",
        action="store_true",
        help="read each instance's statuses until it terminates "
        "(default: hang up after the first; the instance keeps running)",
    )
    sub.add_argument("--timeout", type=float, default=30.0, help="seconds per Schedule call")
    sub.add_argument(
        "--watch",
        action="store_true",
        help="print WatchEvents as JSON lines (STATUS events only with --statuses)",
    )
    sub.add_argument("--statuses", action="store_true", help="with --watch: print STATUS too")
    sub.add_argument("--name", default="controller", help="controller certificate name (mTLS)")
    sub.set_defaults(func=_controller_main)


def _controller_main(args: argparse.Namespace) -> int:
    return asyncio.run(_controller(args))


async def _controller(args: argparse.Namespace) -> int:
    controller = SimController(
        args.address, pki=Path(args.pki) if args.pki else None, name=args.name
    )
    stop = stop_on_signals()

    async def watch() -> None:
        async for _arrived, event in controller.watch():
            line = describe(event)
            if line.get("kind") != "STATUS" or args.statuses:
                print(json.dumps(line), flush=True)

    watcher = asyncio.ensure_future(watch()) if args.watch else None
    try:
        if args.count:
            report = await controller.schedule_many(
                args.count,
                args.concurrency,
                prefix=args.prefix,
                memory=args.memory or None,
                cpu=args.cpu or None,
                follow=args.follow,
                timeout=args.timeout,
            )
            print(json.dumps({"schedule": report.__dict__}), flush=True)
        if watcher is not None:
            done, _ = await asyncio.wait(
                (watcher, asyncio.ensure_future(stop.wait())), return_when=asyncio.FIRST_COMPLETED
            )
            if watcher in done:
                watcher.result()  # a failed watch is reported
    except GRPCError as err:
        print(f"controller: {err.status.name}: {err.message}", file=sys.stderr)
        return 1
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        controller.close()
    return 0
