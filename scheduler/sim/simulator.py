"""Simulated Agents for tests, benchmarks and demos: many per process, plain asyncio + grpclib.

A simulated Agent does what a real one does on the wire: it joins (`JoinCluster` with its own
node id and the port of its own `node_agent.WorkloadService`), streams `NodeStatus` at a chosen
rate over its own connection, rejoins after its stream fails, and serves `Create` / `Signal`:
it accepts at once (RUNNING, then TERMINATED after `lifetime` or on a signal), or refuses or
hangs a chosen fraction of the requests. Its reports list its instances and subtract their
memory from its free memory, as a real node's would.

**One grpclib server per simulated Agent.** The scheduler dials an Agent at (peer IP of its
JoinCluster call, declared port) and a `Create` names the instance, not the node: a server
shared by several Agents could not tell which node is meant, and under mTLS the scheduler
checks that the server's certificate names the node it dialed. So each Agent has its own
listening port (port 0: the kernel picks) and, under mTLS, presents its own certificate as a
client and as a server. A listening socket costs one fd and a few KiB; spread large fleets
over several processes (`processes=`), each up to `MAX_AGENTS_PER_PROCESS`.

**Several schedulers** (`--address a,b,c`, SPEC §4.1): an Agent joins the leader, following
a standby's `orka-leader` answer or trying the next address (`scheduler.follow`), for as long
as it runs. When its leader goes away it rejoins the next one and keeps its instances: its
WorkloadService stays up, and its reports list them to the new leader. The Agents of one
group share what they learnt of the leader, so a switch is made, and logged, once per group.

This module never imports trio or trio_asyncio: importing trio_asyncio replaces asyncio's loop
policy for the whole process (see STYLE.md). Run it in its own process:

    python -m scheduler.sim.simulator agents --address 127.0.0.1:50051 --count 1000 --insecure
    python -m scheduler.sim.simulator agents --address 127.0.0.1:50051 --count 500 --pki DIR \\
        --refuse 0.1 --hang 0.05 --lifetime 30 --processes 2
    python -m scheduler.sim.simulator controller --address 10.0.0.1:50051,10.0.0.2:50051 \\
        --insecure --count 1000 --concurrency 50 --watch

Python API: `SimAgent`, `AgentGroup` (many in this process), `AgentProcesses` (groups in
child processes, driven by JSON lines); the simulated Controller is in `sim_controller`.

`raw=True` (`--raw`) makes a group a cheap load generator for ingest benchmarks: Agents still
join and serve with grpclib, but write their status streams as pre-encoded HTTP/2 frames
paced by one timer for the whole group (see `_RawStatusStream`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import resource
import signal
import ssl
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from .._proto import agent_grpc, agent_pb2, node_agent_grpc, node_agent_pb2
from ..config import ConfigError
from ..follow import (
    Backoff,
    Leader,
    NotServing,
    call_once,
    host_port,
    join_host_port,
    split_addresses,
)
from .signals import stop_on_signals

log = logging.getLogger("scheduler.simulator")

# The directory holding the `scheduler` package: child processes (`python -m scheduler...`)
# start there so that they import this very copy.
IMPORT_ROOT = Path(__file__).resolve().parents[2]

GIB = 1 << 30
MIB = 1 << 20
MAX_AGENTS_PER_PROCESS = 4000  # two fds each (listener + connection); keeps far below RLIMIT_NOFILE
JOIN_CONCURRENCY = 64  # joins in flight per process: a real fleet's restart storm is gentler
REJOIN_BACKOFF = (0.2, 2.0)  # s: first and largest wait before (re)joining after a failure:
# gentler than follow.FIRST_RETRY, as a fleet rejoins at once after a scheduler goes away
CONNECT_TIMEOUT = 10.0  # s for JoinCluster / LeaveCluster
BURST_YIELD = 16  # at rate 0 (flat out), yield to other Agents after this many messages
RUNNING, TERMINATED = 1, 2  # node_agent.StatusCode


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def node_ids(count: int, prefix: str = "sim", first: int = 0) -> list[str]:
    """The node ids of a fleet: `<prefix>-00000`, `<prefix>-00001`, ..."""
    return [f"{prefix}-{number:05d}" for number in range(first, first + count)]


# --- what an Agent does ---------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a simulated Agent answers `Create`. Fractions are of Create calls, drawn at random."""

    refuse: float = 0.0  # answered RESOURCE_EXHAUSTED at once
    hang: float = 0.0  # never answered (until the scheduler gives up and cancels)
    lifetime: float | None = (
        None  # s an accepted instance runs before TERMINATED; None: until signalled
    )
    old: bool = False  # report like an old Agent: no cores, no disk, no instances

    def __post_init__(self) -> None:
        if not (0 <= self.refuse <= 1 and 0 <= self.hang <= 1 and self.refuse + self.hang <= 1):
            raise ValueError("refuse and hang are fractions whose sum is at most 1")
        if self.lifetime is not None and self.lifetime < 0:
            raise ValueError("lifetime must be >= 0")


@dataclass
class Counters:
    """What a group of Agents did; summed over processes by `AgentProcesses.stats()`."""

    agents: int = 0
    joined: int = 0  # Agents whose JoinCluster succeeded at least once
    streaming: int = 0  # Agents with a status stream open now
    sent: int = 0  # NodeStatus messages written
    joins: int = 0
    rejoins: int = 0
    stream_errors: int = 0
    join_errors: int = 0
    creates: int = 0
    accepted: int = 0
    refused: int = 0
    hung: int = 0
    signals: int = 0
    terminated: int = 0
    lost_notices: int = 0  # status streams the scheduler ended saying the node was lost
    leader_switches: int = 0  # times the group's view of the leader moved (one log line each)

    def add(self, other: dict[str, int]) -> None:
        for key, value in other.items():
            if hasattr(self, key):
                setattr(self, key, getattr(self, key) + value)


@dataclass(frozen=True)
class AgentTls:
    """Where a simulated Agent's certificate lives: a PKI directory made by `scheduler.pki`."""

    directory: Path

    def contexts(self, node_id: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(client context for calling the scheduler, server context for WorkloadService).

        Issues the Agent's certificate from the directory's CA if it has none yet.
        """
        from .. import pki, security  # no trio in either

        paths = pki.PkiPaths.load(self.directory)
        pair = paths.agent(node_id)
        if not (pair.cert.exists() and pair.key.exists()):
            pair = pki.issue_agent(self.directory, node_id)
        client = security.client_ssl_context(paths.ca, pair.cert, pair.key)
        server = security.server_ssl_context(paths.ca, pair.cert, pair.key)
        return client, server


def node_metrics(node_id: str) -> dict[str, Any]:
    """Stable, varied resources for a node: the same id always reports the same machine."""
    rng = random.Random(hashlib.blake2b(node_id.encode(), digest_size=8).digest())
    memory_total = rng.choice((8, 16, 32, 64)) * GIB
    disk_total = rng.choice((100, 250, 500)) * GIB
    return {
        "memory_total": memory_total,
        "memory_free": int(memory_total * rng.uniform(0.3, 0.9)),
        "cores": rng.choice((2, 4, 8, 16)),
        "load": rng.uniform(5, 60),
        "disk_total": disk_total,
        "disk_free": int(disk_total * rng.uniform(0.3, 0.9)),
    }


@dataclass(eq=False)
class _Instance:
    instance_id: str
    memory_mib: int
    code: int = RUNNING
    done: asyncio.Event = field(default_factory=asyncio.Event)  # signalled: end it
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # TERMINATED
    why: str = ""
    life: asyncio.Task | None = None


class _WorkloadService(node_agent_grpc.WorkloadServiceBase):
    def __init__(self, agent: SimAgent) -> None:
        self._agent = agent

    async def Create(self, stream) -> None:
        await self._agent._create(stream)

    async def Signal(self, stream) -> None:
        await self._agent._signal(stream)


class SimAgent:
    """One simulated Agent: its own node id, WorkloadService port, channel and certificate.

    `start()` listens, `join()` joins, `run()` streams statuses (rejoining after failures,
    at the leader) until `close()`. `rate` (messages per second; 0 = as fast as flow control
    allows) and `silent` (keep the stream open, send nothing: a hung node) may change at any
    time. `scheduler`: (host, port), "a,b,c", or a `Leader` shared with other Agents.
    """

    def __init__(
        self,
        node_id: str,
        scheduler: Leader | str | tuple[str, int] | Sequence[str],
        *,
        rate: float = 1.0,
        behaviour: Behaviour = Behaviour(),
        tls: AgentTls | None = None,
        bind_host: str = "127.0.0.1",
        counters: Counters | None = None,
        seed: int | None = None,
        pacer: _Pacer | None = None,
    ) -> None:
        """`pacer`: write the status stream as raw HTTP/2 frames, paced by this group pacer
        (see `_RawStatusStream`); its rate then applies, not `rate`."""
        self.node_id = node_id
        self.leader = Leader.of(scheduler)
        self.address = ""  # the scheduler our channel goes to
        self.behaviour = behaviour
        self.bind_host = bind_host
        self.counters = counters or Counters()
        self.port = 0
        self.joined = False
        self.last_sent = 0.0  # time.time() of the last status written
        self.lost_at = 0.0  # time.time() when the scheduler ended our stream saying "lost"
        self.instances: dict[str, _Instance] = {}
        self._rate = rate
        self._silent = False
        self._waiter: asyncio.Future | None = None  # the sender's nap, cut short by changes
        self._tls = tls
        self._rng = random.Random(seed if seed is not None else node_id)
        self._metrics = node_metrics(node_id)
        self._message: agent_pb2.NodeStatus | None = None  # rebuilt when instances change
        self._server: Server | None = None
        self._channel: Channel | None = None
        self._closed = False
        self._left = False
        self._pacer = pacer
        self._client_ssl: ssl.SSLContext | None = None

    # -- control ---------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = value
        self._poke()

    @property
    def silent(self) -> bool:
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._silent = value
        self._poke()

    def _poke(self) -> None:
        """Wake the sender (and a lost, silent Agent) after a change of rate or silence."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _nap(self, delay: float | None) -> None:
        """Sleep `delay` s (None: forever), or less if rate or silence change meanwhile."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(delay, _resolve, waiter) if delay is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def start(self) -> None:
        """Listen for the scheduler's WorkloadService calls (port chosen by the kernel)."""
        client_ssl = server_ssl = None
        if self._tls is not None:
            client_ssl, server_ssl = self._tls.contexts(self.node_id)
        self._server = Server([_WorkloadService(self)])
        await self._server.start(self.bind_host, 0, ssl=server_ssl, reuse_address=True)
        self.port = self._server._server.sockets[0].getsockname()[1]
        self._client_ssl = client_ssl
        self._connect(self.leader.current)

    def _connect(self, address: str) -> None:
        """Point our channel at the scheduler at `address` (a new connection if it moved)."""
        if address == self.address:
            return
        if self._channel is not None:
            self._channel.close()
        host, port = host_port(address)
        self.address = address
        self._channel = Channel(host, port, ssl=self._client_ssl)
        self._lifecycle = agent_grpc.LifecycleServiceStub(self._channel)
        self._status = agent_grpc.StatusUpdateServiceStub(self._channel)

    async def join(self) -> None:
        """JoinCluster once, at the leader as this Agent knows it. NotServing when that
        scheduler did not serve it (a standby, one going away or hung, a connection refused or
        broken); GRPCError for any other refusal."""
        address = self.leader.current
        self._connect(address)
        request = agent_pb2.ConnectionRequest(id=self.node_id, port=self.port)
        try:
            await call_once(
                self._lifecycle.JoinCluster,
                request,
                address,
                idempotent=True,
                timeout=CONNECT_TIMEOUT,
            )
        except TimeoutError as err:  # a hung leader (SIGSTOPped) may have been replaced
            raise NotServing(address, None, err) from err
        self.leader.served(address)
        self.counters.joins += 1
        if not self.joined:
            self.joined = True
            self.counters.joined += 1

    async def leave(self) -> None:
        """LeaveCluster; the Agent then stays away (no rejoin) until closed."""
        self._left = True
        self.silent = True
        await self._lifecycle.LeaveCluster(
            agent_pb2.DisconnectionNotice(id=self.node_id), timeout=CONNECT_TIMEOUT
        )

    async def run(self, first_status: asyncio.Event | None = None, joined: bool = False) -> None:
        """Join (unless `joined`), stream statuses, rejoin after failures, until closed.

        `first_status` is set once the first status was written (or joining failed: refused,
        or no scheduler served nor named a leader), so a caller can wait for a whole fleet to
        be up.
        """
        backoff = Backoff(*REJOIN_BACKOFF, rng=self._rng)
        while not self._closed:
            if not joined:
                try:
                    await self.join()
                except (NotServing, GRPCError, OSError, StreamTerminatedError) as err:
                    self.counters.join_errors += 1
                    log.debug("%s: join failed: %s", self.node_id, err)
                    if isinstance(err, NotServing):
                        self._follow(err)
                    if first_status is not None and not self._joining_elsewhere(err):
                        first_status.set()
                    await asyncio.sleep(backoff.next())
                    continue
            joined = False  # the next round (after a failure) joins again
            began = time.time()
            outcome = await self._stream(first_status)
            if self.last_sent >= began:  # the stream worked for a while: start backing off anew
                backoff.reset()
            if self._closed or self._left:
                return
            if outcome == "closed":
                return
            if outcome == "lost" and self._silent:
                # A silent node that was declared lost stays away until told to speak again.
                while self._silent and not self._closed:
                    await self._nap(None)
            self.counters.rejoins += 1
            await asyncio.sleep(backoff.next())

    def _joining_elsewhere(self, err: BaseException) -> bool:
        """Whether a failed join goes on at once elsewhere, as part of joining: at the
        leader a standby named, or past an unreachable address to the rest of the list."""
        return isinstance(err, NotServing) and (
            bool(err.hint) or err.hint is None and not self.leader.exhausted
        )

    def _follow(self, failure: NotServing) -> None:
        """Move the (shared) leader past a scheduler that did not serve; log a switch once."""
        line = self.leader.failed(failure.address, failure.hint)
        if line is not None:
            self.counters.leader_switches += 1
            log.info("%s (%s)", line, self.node_id)

    async def close(self) -> None:
        self._closed = True
        self._poke()
        for instance in self.instances.values():
            instance.done.set()
        if self._channel is not None:
            self._channel.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # -- status stream -----------------------------------------------------------------------

    def status_message(self) -> agent_pb2.NodeStatus:
        """This node's current NodeStatus (cached until its instances change)."""
        message = self._message
        if message is None:
            m = self._metrics
            message = agent_pb2.NodeStatus(id=self.node_id)
            used = sum(i.memory_mib for i in self.instances.values() if i.code != TERMINATED) * MIB
            message.memory.total = m["memory_total"]
            message.memory.free = max(0, m["memory_free"] - used)
            message.cpu_load.load = m["load"]
            if not self.behaviour.old:
                message.cpu_load.cores = m["cores"]
                message.disk.total, message.disk.free = m["disk_total"], m["disk_free"]
                for instance in self.instances.values():
                    message.instances.add(instance_id=instance.instance_id, code=instance.code)
            self._message = message
        return message

    async def _stream(self, first_status: asyncio.Event | None) -> str:
        """One status stream: "closed", "lost" (the scheduler declared us lost) or "failed"."""
        if self._pacer is not None:
            return await self._raw_stream(first_status)
        counters = self.counters
        result = None
        try:
            async with self._status.UpdateNodeStatus.open() as stream:
                await stream.send_request()
                counters.streaming += 1
                outcome = asyncio.ensure_future(self._outcome(stream))
                sender = asyncio.ensure_future(self._send(stream, first_status))
                try:
                    await asyncio.wait((outcome, sender), return_when=asyncio.FIRST_COMPLETED)
                finally:  # also on cancellation: the subtasks never outlive the stream
                    counters.streaming -= 1
                    sender.cancel()
                    if not outcome.done():
                        outcome.cancel()
                if outcome.done() and not outcome.cancelled():
                    result = outcome.result()
                else:  # writing failed (connection lost, reset, ...)
                    result = "failed"
                    if not sender.cancelled() and sender.exception() is not None:
                        counters.stream_errors += 1
                        log.debug("%s: status stream failed: %r", self.node_id, sender.exception())
                # End our side at once: the context manager would wait for the server.
                with contextlib.suppress(Exception):
                    await stream.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # connection refused or reset, TLS failure, ...
            if result is None:
                counters.stream_errors += 1
                log.debug("%s: status stream failed: %r", self.node_id, err)
                result = "failed"
        finally:
            if first_status is not None:
                first_status.set()
        if result == "lost":
            self.lost_at = time.time()
            counters.lost_notices += 1
        return result

    async def _raw_stream(self, first_status: asyncio.Event | None) -> str:
        assert self._pacer is not None
        counters = self.counters
        host, port = host_port(self.address)
        authority = join_host_port(host, port)
        stream = None
        try:
            loop = asyncio.get_running_loop()
            _, stream = await loop.create_connection(
                lambda: _RawStatusStream(self, authority, "https" if self._client_ssl else "http"),
                host,
                port,
                ssl=self._client_ssl,
                server_hostname=host if self._client_ssl is not None else None,
            )
            counters.streaming += 1
            try:
                if stream.send(1):
                    counters.sent += 1
                    self.last_sent = time.time()
                if first_status is not None:
                    first_status.set()
                self._pacer.add(stream)
                outcome = await stream.ended
            finally:
                counters.streaming -= 1
                self._pacer.discard(stream)
        except asyncio.CancelledError:
            if stream is not None:
                stream._end("closed")
            raise
        except Exception as err:
            counters.stream_errors += 1
            log.debug("%s: raw status stream failed: %r", self.node_id, err)
            return "failed"
        finally:
            if first_status is not None:
                first_status.set()
        if outcome == "lost":
            self.lost_at = time.time()
            counters.lost_notices += 1
        else:
            counters.stream_errors += 1
        return outcome

    async def _outcome(self, stream) -> str:
        try:
            await stream.recv_message()
            await stream.recv_trailing_metadata()
        except GRPCError as err:
            return self._ended(err)
        except (StreamTerminatedError, OSError) as err:
            # The server may end the call (trailers) and reset the stream (RST_STREAM) at
            # once; grpclib then reports the reset even though the status arrived.
            try:
                stream._maybe_raise()
            except GRPCError as status:
                return self._ended(status)
            except Exception:
                pass
            self.counters.stream_errors += 1
            log.debug("%s: status stream terminated: %r", self.node_id, err)
            return "failed"
        return "failed"  # the scheduler ended our stream OK: it should not; start over

    def _ended(self, err: GRPCError) -> str:
        self.counters.stream_errors += 1
        if err.status is Status.ABORTED and "lost" in (err.message or ""):
            return "lost"
        log.debug("%s: status stream ended: %s %s", self.node_id, err.status.name, err.message)
        return "failed"

    async def _send(self, stream, first_status: asyncio.Event | None) -> None:
        """Write statuses: the first at once, then every 1/rate s from a random phase."""
        counters = self.counters
        loop = asyncio.get_running_loop()
        rng = self._rng
        burst = 0
        due = loop.time()
        first = True
        while True:
            if self._silent:
                await self._nap(None)
                due, first = loop.time(), True
                continue
            rate = self._rate
            if rate > 0:
                delay = due - loop.time()
                if delay > 0:
                    await self._nap(delay)
                    if self._silent or self._rate != rate:
                        # A new rate starts at a random phase, so the fleet stays spread out.
                        due = loop.time() + (
                            rng.uniform(0, 1 / self._rate) if self._rate > 0 else 0
                        )
                        continue
            message = self.status_message()
            if rate > 0:
                message.cpu_load.load = min(
                    100.0, max(0.0, self._metrics["load"] + rng.uniform(-2, 2))
                )
            await stream.send_message(message)
            self.last_sent = time.time()
            counters.sent += 1
            if first_status is not None:
                first_status.set()
                first_status = None
            if rate > 0:
                if first:  # then a random phase: joins in a burst must not report in a burst
                    due = loop.time() + rng.uniform(0, 1 / rate)
                    first = False
                else:
                    due = max(due + 1 / rate, loop.time() - 1 / rate)  # no catch-up bursts
            else:
                burst += 1
                if burst >= BURST_YIELD:
                    burst = 0
                    await asyncio.sleep(0)

    # -- WorkloadService ---------------------------------------------------------------------

    async def _create(self, stream) -> None:
        request: node_agent_pb2.Workload = await stream.recv_message()
        counters = self.counters
        counters.creates += 1
        draw = self._rng.random()
        behaviour = self.behaviour
        if draw < behaviour.refuse:
            counters.refused += 1
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"simulated refusal by {self.node_id}")
        if draw < behaviour.refuse + behaviour.hang:
            counters.hung += 1
            await asyncio.Event().wait()  # until the scheduler cancels the call
        memory = request.resource_limits.memory if request.HasField("resource_limits") else 0
        instance = _Instance(request.instance_id, max(0, memory))
        self.instances[instance.instance_id] = instance
        self._message = None
        counters.accepted += 1
        # The instance is the Agent's, not the call's: if the scheduler hangs up (it went
        # away, another one leads now) it runs on, and the Agent's reports list it.
        instance.life = asyncio.ensure_future(self._live(instance))
        await stream.send_message(_workload_status(instance.instance_id, RUNNING, memory))
        await instance.ended.wait()
        await stream.send_message(
            _workload_status(instance.instance_id, TERMINATED, 0, instance.why or "completed")
        )

    async def _live(self, instance: _Instance) -> None:
        """Run an instance until it is signalled or its lifetime is over; then TERMINATED."""
        lifetime = self.behaviour.lifetime
        if lifetime is None:
            await instance.done.wait()
        elif lifetime > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(instance.done.wait(), lifetime)
        instance.code = TERMINATED
        self._message = None
        self.counters.terminated += 1
        instance.ended.set()
        # Reported once more as TERMINATED by the next status, then forgotten.
        asyncio.get_running_loop().call_later(
            1.0 / self._rate + 0.5 if self._rate > 0 else 0.5, self._forget, instance
        )

    def _forget(self, instance: _Instance) -> None:
        if self.instances.get(instance.instance_id) is instance:
            del self.instances[instance.instance_id]
            self._message = None

    async def _signal(self, stream) -> None:
        request: node_agent_pb2.WorkloadSignal = await stream.recv_message()
        self.counters.signals += 1
        instance = self.instances.get(request.instance_id)
        if instance is None or instance.code == TERMINATED:
            raise GRPCError(
                Status.NOT_FOUND, f"no instance {request.instance_id} on {self.node_id}"
            )
        instance.why = "killed" if request.signal == 1 else "stopped"
        instance.done.set()
        await stream.send_message(node_agent_pb2.Empty())


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _workload_status(instance_id: str, code: int, memory: int, message: str | None = None):
    status = node_agent_pb2.WorkloadStatus(instance_id=instance_id)
    status.status.code = code
    if message is not None:
        status.status.message = message
    status.resource_usage.memory = memory
    return status


# --- a lean status stream: HTTP/2 frames written directly ------------------------------------
#
# grpclib's client spends ~15 µs of Python per streamed message (h2's state machine and frame
# objects): as much as a bare grpclib server spends receiving it, so a grpclib load generator
# cannot outrun the server it measures. With `raw=True` an Agent still joins and serves with
# grpclib, but writes its status stream as pre-encoded HTTP/2 DATA frames on its own
# connection (TLS too), paced for the whole group by one `_Pacer`. The server sees exactly
# the bytes grpclib would send: one DATA frame per message, the same protobuf encoding.

STATUS_PATH = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_INITIAL_WINDOW = 65535  # RFC 7540 §6.9.2, until the server's SETTINGS say otherwise
_OUR_WINDOW = (1 << 31) - 1  # we receive almost nothing: never make the server wait on us
PACER_TICK = 0.005  # s between the pacer's rounds


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


class _RawStatusStream(asyncio.Protocol):
    """One UpdateNodeStatus call (stream 1 of its own connection) written as raw frames."""

    def __init__(self, agent: SimAgent, authority: str, scheme: str) -> None:
        import hpack

        self.agent = agent
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.credit = 0.0
        self._authority, self._scheme = authority, scheme
        self._decoder = hpack.Decoder()
        self._encoder = hpack.Encoder()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._stream_window = _INITIAL_WINDOW
        self._connection_window = _INITIAL_WINDOW
        self._initial_window = _INITIAL_WINDOW
        self._trailers: dict[str, str] = {}
        self._frame_bytes = b""
        self._frame_message: agent_pb2.NodeStatus | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        settings = (
            (0x2).to_bytes(2, "big")
            + (0).to_bytes(4, "big")  # ENABLE_PUSH = 0
            + (0x4).to_bytes(2, "big")
            + _OUR_WINDOW.to_bytes(4, "big")
        )
        headers = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", self._scheme),
                (":path", STATUS_PATH),
                (":authority", self._authority),
                ("te", "trailers"),
                ("content-type", "application/grpc+proto"),
                ("user-agent", "orka-simulator"),
            ]
        )
        self._transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, (_OUR_WINDOW - _INITIAL_WINDOW).to_bytes(4, "big"))
            + _frame(_HEADERS, _END_HEADERS, 1, headers)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("failed")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[0:3], "big")
            if len(buffer) < 9 + length:
                return
            kind, flags = buffer[3], buffer[4]
            stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[9 : 9 + length])
            del buffer[: 9 + length]
            self._frame_received(kind, flags, stream_id, payload)

    # -- frames from the server --------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        assert self._transport is not None
        if kind == _SETTINGS and not flags & _ACK:
            for offset in range(0, len(payload) - 5, 6):
                key = int.from_bytes(payload[offset : offset + 2], "big")
                value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
                if key == 0x4:  # INITIAL_WINDOW_SIZE applies to open streams too
                    self._stream_window += value - self._initial_window
                    self._initial_window = value
            self._transport.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._connection_window += increment
            elif stream_id == 1:
                self._stream_window += increment
        elif kind == _PING and not flags & _ACK:
            self._transport.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _HEADERS and stream_id == 1:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            for name, value in self._decoder.decode(payload):
                self._trailers[name] = value
            if flags & _END_STREAM:
                self._stream_ended()
        elif kind == _DATA and stream_id == 1 and flags & _END_STREAM:
            self._stream_ended()
        elif kind == _RST_STREAM and stream_id == 1 or kind == _GOAWAY:
            self._end("failed")

    def _stream_ended(self) -> None:
        from urllib.parse import unquote

        status = self._trailers.get("grpc-status", "")
        message = unquote(self._trailers.get("grpc-message", ""))
        if status == str(Status.ABORTED.value) and "lost" in message:
            self._end("lost")
        else:
            log.debug("%s: raw status stream ended: %s %s", self.agent.node_id, status, message)
            self._end("failed")

    def _end(self, outcome: str) -> None:
        if not self.ended.done():
            self.ended.set_result(outcome)
        if self._transport is not None:
            self._transport.close()

    # -- writing -------------------------------------------------------------------------------

    def send(self, count: int) -> int:
        """Write up to `count` statuses as far as flow control allows; return how many."""
        if self._paused or self.ended.done() or self._transport is None:
            return 0
        message = self.agent.status_message()
        if message is not self._frame_message:
            body = message.SerializeToString()
            data = b"\x00" + len(body).to_bytes(4, "big") + body
            self._frame_bytes = _frame(_DATA, 0, 1, data)
            self._frame_message = message
        size = len(self._frame_bytes) - 9
        count = min(count, self._stream_window // size, self._connection_window // size)
        if count <= 0:
            return 0
        self._transport.write(self._frame_bytes * count)
        self._stream_window -= size * count
        self._connection_window -= size * count
        return count


class _Pacer:
    """Writes the raw status streams of a group: `rate` messages per second per stream, in
    rounds every PACER_TICK, each round's budget handed out round-robin (cost ∝ messages)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.streams: list[_RawStatusStream] = []
        self._next = 0
        self._task: asyncio.Task | None = None

    def add(self, stream: _RawStatusStream) -> None:
        self.streams.append(stream)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def discard(self, stream: _RawStatusStream) -> None:
        with contextlib.suppress(ValueError):
            self.streams.remove(stream)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        budget = 0.0
        while True:
            await asyncio.sleep(PACER_TICK)
            now = loop.time()
            streams = self.streams
            budget = min(
                budget + self.rate * len(streams) * (now - last), self.rate * len(streams) * 0.1 + 1
            )  # at most 100 ms of catch-up
            last = now
            count = int(budget)
            if not streams or not count:
                continue
            budget -= count
            per, extra = divmod(count, len(streams))
            wall = time.time()
            for offset in range(len(streams) if per else extra):
                index = (self._next + offset) % len(streams)
                stream = streams[index]
                agent = stream.agent
                if agent.silent:
                    continue
                sent = stream.send(per + (1 if offset < extra else 0))
                if sent:
                    agent.counters.sent += sent
                    agent.last_sent = wall
            self._next = (self._next + extra) % len(streams)


# --- many Agents in this process -------------------------------------------------------------


class AgentGroup:
    """Simulated Agents in this process, sharing one `Counters`.

    group = AgentGroup(node_ids(100), ("127.0.0.1", 50051), rate=2)
    await group.start()        # listening, joined, first status sent
    ...
    await group.close()
    """

    def __init__(
        self,
        ids: Iterable[str],
        scheduler: Leader | str | tuple[str, int] | Sequence[str],
        *,
        rate: float = 1.0,
        behaviour: Behaviour = Behaviour(),
        old_fraction: float = 0.0,
        tls: AgentTls | None = None,
        bind_host: str = "127.0.0.1",
        raw: bool = False,
    ) -> None:
        """`scheduler`: (host, port), "a,b,c" or addresses; the Agents share one `Leader`.
        `raw`: status streams as raw HTTP/2 frames paced by one group pacer (a cheap load
        generator for ingest benchmarks; `rate` must then be > 0)."""
        if raw and rate <= 0:
            raise ValueError("raw status streams need a rate > 0")
        self.counters = Counters()
        self._pacer = _Pacer(rate) if raw else None
        ids = list(ids)
        old = set(ids[: round(len(ids) * old_fraction)])
        self.leader = Leader.of(scheduler)
        self.agents = [
            SimAgent(
                node_id,
                self.leader,
                rate=rate,
                tls=tls,
                bind_host=bind_host,
                counters=self.counters,
                pacer=self._pacer,
                behaviour=Behaviour(
                    behaviour.refuse, behaviour.hang, behaviour.lifetime, old=node_id in old
                ),
            )
            for node_id in ids
        ]
        self.counters.agents = len(self.agents)
        self._tasks: list[asyncio.Task] = []

    async def start(self, join_concurrency: int = JOIN_CONCURRENCY) -> float:
        """Listen, join and send a first status with every Agent; return the seconds it took.

        Agents that fail to join keep retrying in the background (see `counters`).
        """
        started = time.monotonic()
        for agent in self.agents:
            await agent.start()
        gate = asyncio.Semaphore(join_concurrency)

        async def bring_up(agent: SimAgent) -> None:
            async with gate:
                first = asyncio.Event()
                self._tasks.append(asyncio.ensure_future(agent.run(first)))
                await first.wait()

        await asyncio.gather(*(bring_up(agent) for agent in self.agents))
        return time.monotonic() - started

    def set_rate(self, rate: float) -> None:
        if self._pacer is not None:
            if rate <= 0:
                raise ValueError("raw status streams need a rate > 0")
            self._pacer.rate = rate
        for agent in self.agents:
            agent.rate = rate

    def set_silent(self, silent: bool) -> dict[str, float]:
        """Silence (or wake) every Agent; return each node's last status time (time.time())."""
        for agent in self.agents:
            agent.silent = silent
        return {agent.node_id: agent.last_sent for agent in self.agents}

    async def leave(self) -> int:
        """LeaveCluster for every Agent; return how many the scheduler acknowledged."""
        results = await asyncio.gather(
            *(agent.leave() for agent in self.agents), return_exceptions=True
        )
        return sum(1 for result in results if not isinstance(result, BaseException))

    def stats(self) -> dict[str, Any]:
        return asdict(self.counters)

    def held(self) -> dict[str, list[str]]:
        """Node id → the instances its Agent runs now (accepted, not TERMINATED)."""
        return {
            agent.node_id: sorted(
                i.instance_id for i in agent.instances.values() if i.code != TERMINATED
            )
            for agent in self.agents
        }

    async def close(self) -> None:
        if self._pacer is not None:
            self._pacer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(agent.close() for agent in self.agents), return_exceptions=True)


# --- groups in child processes, driven by JSON lines -----------------------------------------
#
# A child runs `python -m scheduler.sim.simulator agents ... --control`: it prints
# {"event": "ready", ...} once its Agents are up, then answers one JSON line per command read
# on stdin: {"cmd": "stats"}, {"cmd": "rate", "value": R}, {"cmd": "silent"},
# {"cmd": "speak"}, {"cmd": "leave"}, {"cmd": "lost"}, {"cmd": "instances"} (node id → the
# instances each Agent holds now, not TERMINATED), {"cmd": "quit"}. Every answer is one JSON
# line whose "event" is the command's name.


async def _serve_control(group: AgentGroup, up_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")
        sys.stdout.flush()

    answer("ready", seconds=round(up_seconds, 3), **group.stats())
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            command = json.loads(line)
            name = command["cmd"]
        except (ValueError, KeyError, TypeError):
            answer("error", message=f"bad command {line[:200]!r}")
            continue
        if name == "stats":
            answer("stats", time=time.time(), **group.stats())
        elif name == "rate":
            group.set_rate(float(command["value"]))
            answer("rate", time=time.time())
        elif name == "silent":
            last = group.set_silent(True)
            answer("silent", time=time.time(), last_sent=last)
        elif name == "speak":
            group.set_silent(False)
            answer("speak", time=time.time())
        elif name == "leave":
            answer("leave", left=await group.leave(), time=time.time())
        elif name == "lost":
            answer("lost", lost_at={a.node_id: a.lost_at for a in group.agents if a.lost_at})
        elif name == "instances":
            answer("instances", time=time.time(), held=group.held())
        elif name == "quit":
            answer("quit")
            return
        else:
            answer("error", message=f"unknown command {name!r}")


class AgentProcesses:
    """Simulated Agents spread over child processes (`python -m scheduler.sim.simulator agents`).

    For benchmarks and demos: the fleet's CPU and file descriptors are not the caller's.

        async with AgentProcesses(5000, "127.0.0.1:50051", rate=1, processes=2) as fleet:
            await fleet.stats()
            await fleet.broadcast("silent")
    """

    def __init__(
        self,
        count: int,
        scheduler: str | Sequence[str],
        *,
        rate: float = 1.0,
        processes: int = 0,
        prefix: str = "sim",
        first: int = 0,
        pki: str | os.PathLike | None = None,
        behaviour: Behaviour = Behaviour(),
        old_fraction: float = 0.0,
        bind_host: str = "127.0.0.1",
        raw: bool = False,
        log_file: str | os.PathLike | None = None,
        python: str = sys.executable,
    ) -> None:
        self.count = count
        self.processes = processes or max(1, math.ceil(count / MAX_AGENTS_PER_PROCESS))
        self._children: list[asyncio.subprocess.Process] = []
        self._args = []
        if not isinstance(scheduler, str):
            scheduler = ",".join(scheduler)
        per, extra = divmod(count, self.processes)
        start = first
        for index in range(self.processes):
            share = per + (1 if index < extra else 0)
            args = [
                python,
                "-m",
                "scheduler.sim.simulator",
                "agents",
                "--control",
                "--address",
                scheduler,
                "--count",
                str(share),
                "--first",
                str(start),
                "--prefix",
                prefix,
                "--rate",
                repr(rate),
                "--bind",
                bind_host,
                "--refuse",
                repr(behaviour.refuse),
                "--hang",
                repr(behaviour.hang),
                "--old",
                repr(old_fraction),
            ]
            if behaviour.lifetime is not None:
                args += ["--lifetime", repr(behaviour.lifetime)]
            if raw:
                args.append("--raw")
            args += ["--pki", os.fspath(pki)] if pki is not None else ["--insecure"]
            self._args.append(args)
            start += share
        self._log_file = log_file
        self.ready: list[dict] = []

    async def __aenter__(self) -> AgentProcesses:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> list[dict]:
        """Start every child; return their "ready" answers once all Agents are up."""
        cwd = IMPORT_ROOT
        stderr = open(self._log_file, "ab") if self._log_file else asyncio.subprocess.DEVNULL
        try:
            for args in self._args:
                # Own session: a Ctrl-C meant for the caller does not reach the children; the
                # caller ends them (close()), and they exit by themselves when stdin closes.
                self._children.append(
                    await asyncio.create_subprocess_exec(
                        *args,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=stderr,
                        cwd=cwd,
                        limit=64 << 20,
                        start_new_session=True,
                    )
                )
        finally:
            if self._log_file:
                stderr.close()
        self.ready = await asyncio.gather(*(self._read(child) for child in self._children))
        return self.ready

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    async def _read(self, child: asyncio.subprocess.Process) -> dict:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if not line:
            code = await child.wait()
            raise RuntimeError(f"simulator process {child.pid} exited ({code}) before answering")
        return json.loads(line)

    async def broadcast(self, cmd: str, **fields: Any) -> list[dict]:
        """Send one command to every child still running; return their answers.

        A child that has exited is dropped (and logged): its Agents are gone.
        """
        line = (json.dumps({"cmd": cmd, **fields}) + "\n").encode()
        alive = []
        for child in self._children:
            assert child.stdin is not None
            if child.returncode is None and not child.stdin.is_closing():
                child.stdin.write(line)
                alive.append(child)
        answers = await asyncio.gather(*(self._answer(child) for child in alive))
        return [answer for answer in answers if answer is not None]

    async def _answer(self, child: asyncio.subprocess.Process) -> dict | None:
        try:
            await child.stdin.drain()  # type: ignore[union-attr]
            return await self._read(child)
        except (RuntimeError, ConnectionError) as err:
            log.warning("simulator process %d is gone: %s", child.pid, err)
            return None

    async def stats(self) -> dict[str, Any]:
        """Counters summed over every child, with "time" the latest child's clock."""
        total = Counters()
        answers = await self.broadcast("stats")
        for answer in answers:
            total.add({k: v for k, v in answer.items() if isinstance(v, int) and k != "pid"})
        return {
            **asdict(total),
            "time": max((a["time"] for a in answers), default=time.time()),
            "processes": len(answers),
        }

    async def held(self) -> dict[str, list[str]]:
        """Node id → the instances its Agent holds now (not TERMINATED), over every child."""
        held: dict[str, list[str]] = {}
        for answer in await self.broadcast("instances"):
            held.update(answer["held"])
        return held

    async def silence(self) -> dict[str, float]:
        """Every Agent goes silent (streams stay open); node id → its last status time."""
        last: dict[str, float] = {}
        for answer in await self.broadcast("silent"):
            last.update(answer["last_sent"])
        return last

    async def close(self) -> None:
        for child in self._children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        self._children.clear()


# --- command line -----------------------------------------------------------------------------


def _agents_main(args: argparse.Namespace) -> int:
    behaviour = Behaviour(args.refuse, args.hang, args.lifetime)
    processes = args.processes or (
        math.ceil(args.count / MAX_AGENTS_PER_PROCESS)
        if args.count > MAX_AGENTS_PER_PROCESS and not args.control
        else 1
    )
    if processes > 1:
        return asyncio.run(_agents_in_processes(args, behaviour, processes))
    return asyncio.run(_agents_here(args, behaviour))


async def _agents_here(args: argparse.Namespace, behaviour: Behaviour) -> int:
    raise_fd_limit()
    tls = AgentTls(Path(args.pki)) if args.pki else None
    group = AgentGroup(
        node_ids(args.count, args.prefix, args.first),
        args.address,
        rate=args.rate,
        behaviour=behaviour,
        old_fraction=args.old,
        tls=tls,
        bind_host=args.bind,
        raw=args.raw,
    )
    stop = stop_on_signals()
    try:
        up = asyncio.ensure_future(group.start())
        await asyncio.wait(
            (up, asyncio.ensure_future(stop.wait())), return_when=asyncio.FIRST_COMPLETED
        )
        if not up.done():
            up.cancel()
            return 1
        seconds = up.result()
        if args.control:
            control = asyncio.ensure_future(_serve_control(group, seconds))
            await asyncio.wait(
                (control, asyncio.ensure_future(stop.wait())), return_when=asyncio.FIRST_COMPLETED
            )
            control.cancel()
        else:
            log.info(
                "%d agents up in %.1f s (%d joined); Ctrl-C leaves the cluster",
                args.count,
                seconds,
                group.counters.joined,
            )
            await _report_until(stop, group.stats, args.stats_every)
            log.info("leaving: %d of %d acknowledged", await group.leave(), args.count)
    finally:
        await group.close()
    return 0


async def _agents_in_processes(
    args: argparse.Namespace, behaviour: Behaviour, processes: int
) -> int:
    fleet = AgentProcesses(
        args.count,
        args.address,
        rate=args.rate,
        processes=processes,
        prefix=args.prefix,
        first=args.first,
        pki=args.pki,
        behaviour=behaviour,
        old_fraction=args.old,
        bind_host=args.bind,
        raw=args.raw,
    )
    stop = stop_on_signals()
    async with fleet:
        log.info("%d agents up in %d processes", args.count, processes)
        await _report_until(stop, fleet.stats, args.stats_every)
        answers = await fleet.broadcast("leave")
        log.info("leaving: %d of %d acknowledged", sum(a["left"] for a in answers), args.count)
    return 0


async def _report_until(stop: asyncio.Event, stats, every: float) -> None:
    previous = None
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        now = stats()
        now = await now if asyncio.iscoroutine(now) else now
        if now.get("processes") == 0:
            log.warning("every simulator process is gone")
            return
        sent = now["sent"] - (previous["sent"] if previous else 0)
        log.info(
            "streaming %d/%d, %.0f statuses/s, creates %d (accepted %d, refused %d, "
            "hung %d), rejoins %d",
            now["streaming"],
            now["agents"],
            sent / every,
            now["creates"],
            now["accepted"],
            now["refused"],
            now["hung"],
            now["rejoins"],
        )
        previous = now


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m scheduler.sim.simulator",
        description="Simulated Orka Agents and Controller.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    from ..config import Config
    from ..tls_setup import development_pki

    pki_default = development_pki(Config())  # where `orka-scheduler serve` (no config) makes it

    def connection(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--address",
            "--scheduler",
            dest="address",
            type=_addresses,
            default=["127.0.0.1:50051"],
            metavar="HOST:PORT[,HOST:PORT...]",
            help="the scheduler (default 127.0.0.1:50051); several, "
            "comma-separated: the schedulers of one cluster, whose leader "
            "is followed",
        )
        mode = sub.add_mutually_exclusive_group(required=True)
        mode.add_argument("--insecure", action="store_true", help="plaintext gRPC")
        mode.add_argument(
            "--pki",
            metavar="DIR",
            nargs="?",
            const=str(pki_default),
            help="mTLS with certificates from this PKI directory (default: the "
            "one `orka-scheduler serve` generates in its data_dir, here "
            f"{pki_default}; or `orka-scheduler certs init DIR`); missing "
            "certificates are issued from its CA",
        )

    agents = commands.add_parser("agents", help="run simulated Agents until Ctrl-C")
    connection(agents)
    agents.add_argument("--count", type=int, default=10)
    agents.add_argument(
        "--rate", type=float, default=1.0, help="status messages per second per Agent; 0 = flat out"
    )
    agents.add_argument("--prefix", default="sim", help="node ids are PREFIX-00000, ...")
    agents.add_argument("--first", type=int, default=0, help="number of the first node id")
    agents.add_argument("--refuse", type=float, default=0.0, help="fraction of Creates refused")
    agents.add_argument(
        "--hang", type=float, default=0.0, help="fraction of Creates never answered"
    )
    agents.add_argument(
        "--lifetime",
        type=float,
        default=None,
        help="seconds an instance runs before TERMINATED (default: until signalled)",
    )
    agents.add_argument(
        "--old",
        type=float,
        default=0.0,
        help="fraction of Agents reporting like old Agents (no cores/disk/instances)",
    )
    agents.add_argument(
        "--bind", default="127.0.0.1", help="address the Agents' WorkloadService servers listen on"
    )
    agents.add_argument(
        "--raw",
        action="store_true",
        help="write status streams as pre-encoded HTTP/2 frames paced per group "
        "(a cheap load generator for ingest benchmarks; needs --rate > 0)",
    )
    agents.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"child processes (default: one per {MAX_AGENTS_PER_PROCESS} Agents)",
    )
    agents.add_argument("--stats-every", type=float, default=5.0, metavar="SECONDS")
    agents.add_argument(
        "--control",
        action="store_true",
        help="driven by JSON lines on stdin (used by AgentProcesses)",
    )
    agents.set_defaults(func=_agents_main)

    from .sim_controller import add_controller_command

    add_controller_command(commands, connection)
    return top


def _addresses(text: str) -> list[str]:
    """argparse type of --address: HOST:PORT[,HOST:PORT...]."""
    try:
        return split_addresses(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    logging.getLogger("grpclib").setLevel(logging.WARNING)  # per-connection chatter
    if args.pki is not None:
        from ..pki import PkiError, PkiPaths

        try:
            PkiPaths.load(args.pki)
        except PkiError as err:
            print(
                f"simulator: {err} (`orka-scheduler serve` makes one in its data_dir on its "
                "first start)",
                file=sys.stderr,
            )
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
