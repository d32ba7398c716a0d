"""Clients follow the leader: which scheduler address to call next, and the retry loop.

Several schedulers may serve one cluster (SPEC §4.1): one leads; a standby answers every
`scheduler.agent` / `scheduler.controller` call UNAVAILABLE with the trailing metadata
`orka-leader: HOST:PORT` of the leader (absent while it knows none); a scheduler that is down
refuses the connection. A client given several addresses (`--address a,b,c`) calls one, and
when that one does not serve the call:
- a standby named the leader: the leader is called next (its advertise address, which may not
  be in the list);
- no leader named, or the connection was refused or broke: the next address in the list;
- each retry waits a backoff that doubles from FIRST_RETRY to LARGEST_RETRY, with jitter.
The admin commands look for the leader for up to `--timeout` seconds, and give up at once when
no scheduler answers at all (every address refused or broke in turn: nothing runs there); the
simulator looks for as long as it runs.

`Leader` (which address next) and `Backoff` are plain, sync and tested without a network;
`retry`, `call` and `watch_events` are the asyncio side, shared by the admin commands and the
simulated Agents and Controller. Those run plain asyncio in their own processes: nothing here
imports trio or trio_asyncio (see STYLE.md).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ._proto import controller_grpc, controller_pb2
from .config import ConfigError, parse_host_port

LEADER_METADATA = "orka-leader"  # a standby's trailing metadata: the leader's HOST:PORT
FIRST_RETRY = 0.05  # s: a standby's hint is usually right, so the next try comes at once
LARGEST_RETRY = 2.0  # s: a failover takes up to lease_ttl + 2 s; polling every <= 2 s finds the
# new leader soon after, while 1,000 Agents waiting on a standby cost it <= 1,000 refusals/s

T = TypeVar("T")


def split_addresses(text: str, key: str = "--address") -> list[str]:
    """`a,b,c` → the HOST:PORT addresses, in order, without repeats; a ConfigError naming
    `key` for an empty list or an item that is not HOST:PORT."""
    addresses = [item.strip() for item in text.split(",")]
    if not any(addresses):
        raise ConfigError(key, "give at least one HOST:PORT (several: comma-separated)")
    for address in addresses:
        parse_host_port(address, key)
    return list(dict.fromkeys(addresses))


def host_port(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) → (host, port), for an address `split_addresses` took."""
    return parse_host_port(address, "address")


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Leader:
    """Which scheduler address to call next. Plain and sync; shared by every caller of one
    client (a group of simulated Agents, the Controller's concurrent calls), so a switch one
    caller learnt is made once, and logged once.

    `current` is the address to call. After a call there that did not serve, `failed` moves
    it: to the leader a standby named, else to the next address in the list. `exhausted` says
    that every listed address failed to answer at all (refused, broke, hung) since a scheduler
    last answered: nothing runs there to wait for.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("at least one scheduler address")
        self.addresses = list(dict.fromkeys(addresses))
        self.current = self.addresses[0]
        self._index = 0  # where in the list the next "next address" is counted from
        self._unanswered: set[str] = set()  # listed addresses where no scheduler answered

    @classmethod
    def of(cls, scheduler: Leader | str | tuple[str, int] | Sequence[str]) -> Leader:
        """A Leader from what a caller names: itself, "a,b,c", (host, port), or addresses."""
        if isinstance(scheduler, Leader):
            return scheduler
        if isinstance(scheduler, str):
            return cls(split_addresses(scheduler))
        if isinstance(scheduler, tuple) and len(scheduler) == 2 and isinstance(scheduler[1], int):
            return cls([join_host_port(*scheduler)])
        return cls(list(scheduler))

    @property
    def exhausted(self) -> bool:
        return self._unanswered >= set(self.addresses)

    def served(self, address: str) -> None:
        """A call at `address` was served: it leads."""
        self._unanswered.clear()

    def failed(self, address: str, hint: str | None) -> str | None:
        """A call at `address` was not served. `hint`: the leader a standby named; "" when
        the scheduler answered naming none (a standby that knows no leader, one going away);
        None when none answered (refused, broke, hung).

        Returns the line to log when the address to call changes, else None: another caller
        already moved on from `address`, the only address is tried again, or the standby
        named itself (it is taking over: called again, after a backoff)."""
        if address != self.current:
            return None
        if hint is None:
            if address in self.addresses:
                self._unanswered.add(address)
        else:
            self._unanswered.clear()
        if hint and hint != address:
            self.current = hint
            if hint in self.addresses:
                self._index = self.addresses.index(hint)
            return f"following leader at {hint}"
        if hint:
            return None
        if address in self.addresses:
            self._index = self.addresses.index(address)
        self._index = (self._index + 1) % len(self.addresses)
        self.current = self.addresses[self._index]
        if self.current == address:
            return None
        return f"{address} unavailable, trying {self.current}"


class Backoff:
    """Waits between retries: from `first` doubling to at most `largest`, each drawn in
    [half, all] of the step (jitter: clients that failed together do not retry together)."""

    def __init__(
        self,
        first: float = FIRST_RETRY,
        largest: float = LARGEST_RETRY,
        rng: random.Random | None = None,
    ) -> None:
        self.first, self.largest = first, largest
        self._step = first
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = self._step * self._rng.uniform(0.5, 1.0)
        self._step = min(self.largest, self._step * 2)
        return delay

    def reset(self) -> None:
        self._step = self.first


class NotServing(Exception):
    """The scheduler at `address` did not serve a call (`cause`). `hint` as in
    `Leader.failed`: the leader a standby named, "" if the scheduler answered naming none,
    None if none answered."""

    def __init__(self, address: str, hint: str | None, cause: BaseException) -> None:
        super().__init__(f"{address}: {cause}")
        self.address, self.hint, self.cause = address, hint, cause


class GaveUp(Exception):
    """No leader found: no scheduler answered at any address (`timed_out` False), or the
    deadline passed (`timed_out` True). `first` and `last`: the first and last refusal of the
    search (the same one if it took one call)."""

    def __init__(self, first: NotServing, last: NotServing, timed_out: bool) -> None:
        super().__init__(str(last))
        self.first, self.last, self.timed_out = first, last, timed_out


def leader_hint(stream: Any) -> str:
    """The leader named in a finished call's trailing metadata ("" if none, or malformed)."""
    metadata = getattr(stream, "trailing_metadata", None)
    hint = metadata.get(LEADER_METADATA, "") if metadata else ""
    try:
        parse_host_port(hint, LEADER_METADATA)
    except ConfigError:
        return ""
    return hint


def unreachable(err: BaseException) -> bool:
    """A failure to reach a scheduler (refused, reset, connection lost): worth trying another
    address. Not a TLS refusal (the same everywhere), nor a deadline (the caller's to judge:
    a TimeoutError is an OSError)."""
    return isinstance(err, (OSError, StreamTerminatedError)) and not isinstance(
        err, (ssl.SSLError, TimeoutError)
    )


def forget_wakeup(err: BaseException) -> None:
    """Undo the cancel request grpclib leaves on a task whose call lost its connection.

    grpclib wakes such a call by cancelling the task waiting on it, then raises
    StreamTerminatedError in its place without `Task.uncancel()`: the task would stay
    "cancelling", and a later Ctrl-C (asyncio.run) or asyncio.timeout in it would be taken
    for that old request (seen: `watch` ending in a CancelledError traceback on Ctrl-C after
    its leader was killed)."""
    task = asyncio.current_task()
    if isinstance(err, StreamTerminatedError) and task is not None and task.cancelling():
        task.uncancel()


async def send_request(stream: Any, address: str) -> None:
    """Open a call: connect and send its headers. Unreachable → NotServing (nothing was sent,
    so even a non-idempotent call may go elsewhere)."""
    try:
        await stream.send_request()
    except Exception as err:
        forget_wakeup(err)
        if unreachable(err):
            raise NotServing(address, None, err) from err
        raise


def refusal(
    err: BaseException, stream: Any, address: str, *, idempotent: bool
) -> NotServing | None:
    """The NotServing that `err` (ending a call at `address`) means, or None: a final answer.

    A standby's UNAVAILABLE naming a leader means "not here" for any call. For an idempotent
    call (reads, joins) any UNAVAILABLE or a lost connection does too; for Schedule, Stop and
    Destroy an UNAVAILABLE naming no leader is the leader's own answer (every node refused,
    the node is lost), and a connection lost after the request left may have done its work.
    Call it in the task that made the call: it settles grpclib's wakeup (`forget_wakeup`).
    """
    forget_wakeup(err)
    if isinstance(err, GRPCError):
        if err.status is not Status.UNAVAILABLE:
            return None
        hint = leader_hint(stream)
        return NotServing(address, hint, err) if hint or idempotent else None
    if idempotent and unreachable(err):
        return NotServing(address, None, err)
    return None


async def retry(
    leader: Leader,
    attempt: Callable[[str], Awaitable[T]],
    *,
    deadline: float | None = None,
    give_up: bool = False,
    report: Callable[[str], None] | None = None,
    backoff: Backoff | None = None,
) -> T:
    """`attempt(address)` at the current address until it returns; NotServing moves on.

    `deadline` (loop time): GaveUp rather than wait past it. `give_up`: GaveUp as soon as no
    scheduler answers at any listed address (the admin commands: nothing runs there).
    `report` gets the line of each switch."""
    backoff = backoff or Backoff()
    first: NotServing | None = None
    while True:
        address = leader.current
        try:
            result = await attempt(address)
        except NotServing as failure:
            first = first or failure
            await wait_to_retry(
                leader, first, failure, backoff, deadline=deadline, give_up=give_up, report=report
            )
            continue
        leader.served(address)
        return result


async def wait_to_retry(
    leader: Leader,
    first: NotServing,
    failure: NotServing,
    backoff: Backoff,
    *,
    deadline: float | None,
    give_up: bool,
    report: Callable[[str], None] | None,
) -> None:
    """After `failure` (`first`: the search's first): move the leader, then sleep the
    backoff, or raise GaveUp."""
    line = leader.failed(failure.address, failure.hint)
    if give_up and leader.exhausted:
        raise GaveUp(first, failure, timed_out=False)
    delay = backoff.next()
    if deadline is not None and asyncio.get_running_loop().time() + delay > deadline:
        raise GaveUp(first, failure, timed_out=True)
    if line is not None and report is not None:
        report(line)
    await asyncio.sleep(delay)


async def call_once(
    method: Any, request: Any, address: str, *, idempotent: bool, timeout: float | None = None
) -> Any:
    """One unary call of stub `method` (its channel at `address`); NotServing when that
    scheduler did not serve it (see `refusal`)."""
    stream = None
    try:
        async with method.open(timeout=timeout) as stream:
            await send_request(stream, address)
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
        return reply
    except (GRPCError, OSError, StreamTerminatedError) as err:
        failure = refusal(err, stream, address, idempotent=idempotent)
        if failure is None:
            raise
        raise failure from err


async def call(
    leader: Leader,
    method: Callable[[str], Any],
    request: Any,
    *,
    idempotent: bool,
    deadline: float | None = None,
    give_up: bool = False,
    report: Callable[[str], None] | None = None,
) -> Any:
    """One unary call on the leader: `method(address)` is the stub method at that address.
    With a `deadline` (loop time) each attempt gets what is left of it (asyncio.TimeoutError
    when a scheduler takes it all)."""

    async def attempt(address: str) -> Any:
        return await call_once(
            method(address), request, address, idempotent=idempotent, timeout=remaining(deadline)
        )

    return await retry(leader, attempt, deadline=deadline, give_up=give_up, report=report)


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (loop time; None: no deadline)."""
    if deadline is None:
        return None
    return max(0.0, deadline - asyncio.get_running_loop().time())


async def watch_events(
    schedulers: Channels,
    epoch: str = "",
    after: int = 0,
    *,
    patience: float | None = None,
    give_up: bool = False,
    report: Callable[[str], None] | None = None,
) -> AsyncIterator[controller_pb2.ClusterEvent]:
    """Every ClusterEvent of the cluster, from the leader, following it across failovers.

    At each switch the watch resumes after the last event it yielded: the epoch continues
    across leaders (SPEC §4.1), so the new leader replays what came after, with no Snapshot.
    `patience` (s): GaveUp when no leader served for that long; `give_up` as in `retry`. Ends
    when a scheduler ends the stream OK."""
    leader = schedulers.leader
    loop = asyncio.get_running_loop()
    backoff = Backoff()
    since: float | None = loop.time()  # when the watch last had a leader
    first: NotServing | None = None  # the failure that began this search
    while True:
        address = leader.current
        stream = None
        failure: NotServing | None
        try:
            async with schedulers.cluster(address).WatchEvents.open() as stream:
                await send_request(stream, address)
                await stream.send_message(
                    controller_pb2.WatchRequest(epoch=epoch, after_revision=after), end=True
                )
                async for event in stream:
                    if since is not None:
                        leader.served(address)
                        backoff.reset()
                        since = first = None
                    epoch, after = event.epoch, event.revision
                    yield event
                await stream.recv_trailing_metadata()
            return
        except NotServing as err:
            failure = err
        except (GRPCError, OSError, StreamTerminatedError) as err:
            failure = refusal(err, stream, address, idempotent=True)
            if failure is None:
                raise
        if since is None:
            since = loop.time()
        first = first or failure
        deadline = None if patience is None else since + patience
        await wait_to_retry(
            leader, first, failure, backoff, deadline=deadline, give_up=give_up, report=report
        )


async def health(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> int | None:
    """The HTTP status of a scheduler's `/healthz` (observability.http_listen): 200 while it
    leads, 503 on a standby or while draining; None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: orka\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return int(head.split()[1])
    except (TimeoutError, OSError, IndexError, ValueError):
        return None


class Channels:
    """One grpclib channel per scheduler address, opened on first use, and the Leader among
    them: what a Controller-like client (admin commands, simulated Controller) holds."""

    def __init__(
        self,
        scheduler: Leader | str | tuple[str, int] | Sequence[str],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.leader = Leader.of(scheduler)
        self._ssl = ssl_context
        self._channels: dict[str, Channel] = {}

    def __call__(self, address: str) -> Channel:
        channel = self._channels.get(address)
        if channel is None:
            host, port = host_port(address)
            channel = self._channels[address] = Channel(host, port, ssl=self._ssl)
        return channel

    def cluster(self, address: str) -> controller_grpc.ClusterServiceStub:
        return controller_grpc.ClusterServiceStub(self(address))

    def scheduling(self, address: str) -> controller_grpc.SchedulingServiceStub:
        return controller_grpc.SchedulingServiceStub(self(address))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
