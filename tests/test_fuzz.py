"""Fuzzing every RPC the scheduler serves (SPEC §4, last bullet): nothing a client sends may crash
the server or another client's work, and every call gets a clear status: never UNKNOWN or
INTERNAL, which mean an unhandled exception.

What is sent, per RPC (found in the generated `*_grpc.py` bases, so a new RPC is fuzzed too):
- typed: messages built by hypothesis from the request's protobuf descriptor: arbitrary, empty
  and huge unicode text, integers at their type's bounds, NaN/inf doubles, unknown enum values,
  repeated fields with thousands of entries, any field absent; mixed with near-valid values
  (joined node ids, the current epoch, environment entries, loads in 0-100);
- near-valid: every field set from those near-valid values, so most requests are accepted and
  the fuzz explores the core (placements on a real fake Agent, then Destroy; statuses applied;
  watches replayed from the current epoch);
- garbage: random bytes, and valid encodings truncated, overwritten or extended, as one message,
  none or several on a grpclib channel with a pass-through codec;
- framing (raw HTTP/2): gRPC's 5-byte message prefix itself mangled, truncated or compressed.
Plus fixed cases: oversized messages (RESOURCE_EXHAUSTED, announced sizes never buffered), the
compressed flag (UNIMPLEMENTED), unbounded strings and lists (INVALID_ARGUMENT naming the field).

During every fuzz run a legitimate Agent keeps streaming statuses and a Controller keeps
watching, each on its own connection; at the end the Agent's last status must be applied, the
watch must have delivered it, and a real Schedule must still succeed.

How hypothesis meets trio here
------------------------------
`@given` cannot wrap an async test under pytest-trio, and `strategy.example()` neither shrinks
nor replays. A scheduler in a background thread with its own `trio.run` would need a second
trio-asyncio loop in the process, while importing trio_asyncio rewires asyncio's loop policy
process-wide (docs: STYLE.md pitfalls). So the roles are inverted: each test is an ordinary
pytest-trio test that serves the scheduler and the fakes in its own trio run; the `@given`
function is a plain sync function run in a worker thread (`trio.to_thread.run_sync`), and each
example crosses back with `trio.from_thread.run` to make its call on the test's loop. One loop,
the usual fakes and fail_after guards, and hypothesis shrinks, prints and replays (example
database in .hypothesis/, git-ignored) as usual. Only one thread ever runs hypothesis.

Budget: `ORKA_FUZZ_EXAMPLES` examples per RPC and kind (default 60; about 10 s for the file).
Run e.g. `ORKA_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py` for a longer hunt.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio_asyncio
from google.protobuf.descriptor import FieldDescriptor
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler._proto import agent_grpc, agent_pb2, controller_grpc, controller_pb2
from scheduler.app import serve
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    BytesCodec,
    FakeAgent,
    FakeController,
    Node,
    event_kind,
    make_channel,
    open_channel,
    schedule,
    scheduling_request,
    status,
    wait_until,
)

aio = trio_asyncio.aio_as_trio

FUZZ_EXAMPLES = int(os.environ.get("ORKA_FUZZ_EXAMPLES", "60"))
MAX_MESSAGE_BYTES = 64 * 1024  # small, so "huge" values cross it cheaply
CALL_TIMEOUT = 5.0  # s: a call the server leaves unanswered this long is a failure
NOT_CLEAR = (Status.UNKNOWN, Status.INTERNAL)  # an unhandled exception on the server
LEGIT = "legit-agent-7f3e"  # the Agent that must not notice the fuzz; no strategy draws it
GIB = 1 << 30
LEGIT_FREE = 48 * GIB  # more than "dead" reports: LEGIT is tried first, so fuzzed workloads land
RUNNING = controller_pb2.Status.RUNNING

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # calls over sockets: timing is the guard's business, not hypothesis's
    suppress_health_check=list(HealthCheck),  # huge values and slow examples are the point
    print_blob=True,
)


# -- the RPCs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    name: str
    path: str
    request: type  # the protobuf request message class
    cardinality: Cardinality


def scheduler_rpcs() -> dict[str, Rpc]:
    """Every RPC of the scheduler's own services, from the generated grpclib bases."""
    rpcs = {}
    for module in (agent_grpc, controller_grpc):
        for base in vars(module).values():
            if isinstance(base, type) and base.__name__.endswith("Base"):
                probe = type("Probe", (), dict.fromkeys(base.__abstractmethods__))()
                for path, handler in base.__mapping__(probe).items():
                    name = path.rsplit("/", 1)[1]
                    rpcs[name] = Rpc(name, path, handler.request_type, handler.cardinality)
    return rpcs


RPCS = scheduler_rpcs()
SPEC_RPCS = {
    "JoinCluster",
    "LeaveCluster",
    "UpdateNodeStatus",
    "Schedule",
    "Stop",
    "Destroy",
    "WatchEvents",
    "ListNodes",
}


def test_the_fuzz_finds_every_rpc_of_the_scheduler():
    assert SPEC_RPCS <= set(RPCS), f"RPC discovery missed some of SPEC §1: {SPEC_RPCS - set(RPCS)}"


# -- outcomes -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended, as the client saw it."""

    status: Status | None = None  # None: no status at all (see `problem`)
    message: str = ""
    streamed: bool = False  # a server-streaming call answered with a message (then cancelled)
    problem: str = ""  # no status: timed out, reset without trailers...

    @property
    def clear(self) -> bool:
        if self.problem or self.status is None or self.status in NOT_CLEAR:
            return False
        return self.status is Status.OK or bool(self.message)

    def __str__(self) -> str:
        if self.problem:
            return self.problem
        shown = self.message if len(self.message) < 300 else self.message[:300] + "..."
        return f"{self.status.name if self.status else None}: {shown!r}" + (
            " (streaming)" if self.streamed else ""
        )


async def raw_call(channel, rpc: Rpc, payloads: list[bytes]) -> Outcome:
    """Send `payloads` as the request messages of `rpc` (any number: the client side is always
    stream-stream); return how the call ended. A server stream that answers is cancelled."""

    async def call() -> Outcome:
        try:
            async with channel.request(
                rpc.path, Cardinality.STREAM_STREAM, bytes, bytes, timeout=CALL_TIMEOUT
            ) as stream:
                if payloads:
                    for index, payload in enumerate(payloads):
                        await stream.send_message(payload, end=index == len(payloads) - 1)
                else:
                    await stream.send_request(end=True)
                first = await stream.recv_message()
                if first is not None and rpc.cardinality.server_streaming:
                    await stream.cancel()
                    return Outcome(Status.OK, streamed=True)
                while await stream.recv_message() is not None:
                    pass
                await stream.recv_trailing_metadata()
        except GRPCError as err:
            return Outcome(err.status, err.message or "")
        except StreamTerminatedError as err:
            return Outcome(problem=f"stream reset without a status: {err}")
        except TimeoutError:
            return Outcome(problem=f"no answer within {CALL_TIMEOUT} s")
        return Outcome(Status.OK)

    return await aio(call)()


# -- strategies: protobuf messages from their descriptors ---------------------------------------

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),  # proto3 enums are open: any int32
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
SPECIAL_DOUBLES = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    100.0,
    math.nextafter(100.0, math.inf),
    5e-324,
    sys.float_info.max,
]
HUGE_LENGTHS = [254, 4097, 32 * 1024 + 1, 70_000]  # past an id, an image, an env entry, the limit
MANY_ENTRIES = [1025, 10_001, 20_000]  # past the environment and instance report limits
MAX_DEPTH = 3
ID_LIKE = r"[a-zA-Z0-9.-]{1,40}"


def bounded_integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, low + 1, -1, 0, 1, high - 1, high) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def texts(small: bool) -> st.SearchStrategy[str]:
    """Unicode of every kind, empty, id-like; unless `small`, also huge (one repeated char)."""
    options = [st.text(max_size=40), st.from_regex(ID_LIKE, fullmatch=True)]
    if not small:
        options.append(
            st.builds(
                lambda char, length: char * length,
                st.characters(codec="utf-8"),
                st.sampled_from(HUGE_LENGTHS),
            )
        )
    return st.one_of(options)


def scalars(field: FieldDescriptor, small: bool) -> st.SearchStrategy:
    kind = field.type
    if kind in INT_RANGES:
        return bounded_integers(*INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(SPECIAL_DOUBLES), st.floats())
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return texts(small)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for field {field.full_name} of type {kind}")


def field_values(field: FieldDescriptor, hints: dict, small: bool) -> st.SearchStrategy:
    """The field's hint two times in three (so examples get past validation), else anything."""
    generic = scalars(field, small)
    hint = hints.get(field.full_name)
    return generic if hint is None else st.one_of(hint, hint, generic)


def scalar_values(field: FieldDescriptor, hints: dict, small: bool, near: bool):
    if near and field.full_name in hints:
        return hints[field.full_name]
    return field_values(field, hints, small)


PRESENT = st.sampled_from([True, True, True, False])  # a field is set 3 times in 4


def fill(
    draw, message, hints: dict, depth: int = 0, small: bool = False, near: bool = False
) -> None:
    """Set a random subset of `message`'s fields (in place) to drawn values.

    `near`: every field set, from its hint where it has one and with at most 4 entries, so
    most messages are valid and the fuzz explores what the core does with them.
    """
    for descriptor in message.DESCRIPTOR.fields:
        if not near and not draw(PRESENT):
            continue  # left at its default / absent
        if descriptor.is_repeated:
            entries = getattr(message, descriptor.name)
            many = st.sampled_from(MANY_ENTRIES) if not (small or near) else st.nothing()
            count = draw(st.one_of(st.integers(0, 4), many))
            if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= MAX_DEPTH:
                    continue
                if count <= 4:
                    for _ in range(count):
                        fill(draw, entries.add(), hints, depth + 1, small, near)
                else:  # thousands of one small entry: big, but cheap to build
                    entry = entries.add()
                    fill(draw, entry, hints, depth + 1, small=True)
                    entries.extend([entry] * (count - 1))
            elif count <= 4:
                values = scalar_values(descriptor, hints, small, near)
                entries.extend(draw(values) for _ in range(count))
            else:
                entries.extend([draw(field_values(descriptor, hints, True))] * count)
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < MAX_DEPTH:
                child = getattr(message, descriptor.name)
                child.SetInParent()
                fill(draw, child, hints, depth + 1, small, near)
        else:
            setattr(message, descriptor.name, draw(scalar_values(descriptor, hints, small, near)))


def requests(message_class: type, hints: dict, near: bool = False) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        message = message_class()
        fill(draw, message, hints, near=near)
        return message

    return build()


def hints_for(context: FuzzContext) -> dict[str, st.SearchStrategy]:
    """Near-valid values for fields the scheduler looks at, so examples get past validation."""
    nodes, instances = st.sampled_from(context.nodes), st.sampled_from(context.instances)
    fresh = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
    amounts = st.one_of(st.integers(0, 8192), bounded_integers(0, 2**31 - 1))
    env_keys = st.text(min_size=1, max_size=20).filter(lambda key: "=" not in key)
    return {
        "scheduler.agent.ConnectionRequest.id": st.one_of(nodes, fresh),
        "scheduler.agent.ConnectionRequest.port": st.integers(1, 65535),
        "scheduler.agent.DisconnectionNotice.id": st.one_of(nodes, fresh),
        "scheduler.agent.NodeStatus.id": nodes,
        "scheduler.agent.CpuLoad.load": st.floats(0.0, 100.0),
        "scheduler.agent.CpuLoad.cores": st.integers(0, 256),
        "scheduler.agent.Memory.total": st.sampled_from([64 * GIB, 2**64 - 1]),
        "scheduler.agent.Memory.free": st.integers(0, 64 * GIB),
        "scheduler.agent.Disk.total": st.sampled_from([512 * GIB, 2**64 - 1]),
        "scheduler.agent.Disk.free": st.integers(0, 512 * GIB),
        "scheduler.agent.InstanceReport.instance_id": st.one_of(instances, fresh),
        "scheduler.agent.InstanceReport.code": st.sampled_from([0, 1, 2]),
        "scheduler.controller.Workload.instance_id": st.one_of(
            fresh, st.from_regex(r"instance-[A-Za-z0-9._-]{1,20}", fullmatch=True)
        ),
        "scheduler.controller.Workload.type": st.just(0),
        "scheduler.controller.Workload.image": st.one_of(
            st.just("nginx:1.27"), st.text(min_size=1, max_size=100)
        ),
        "scheduler.controller.Workload.environment": st.one_of(
            st.from_regex(r"[A-Z_]{1,8}=[ -~]{0,16}", fullmatch=True),
            st.builds(lambda key, value: f"{key}={value}", env_keys, st.text(max_size=40)),
            st.text(min_size=1, max_size=40),
        ),  # entries are free strings (SPEC §2.2 step 1)
        "scheduler.controller.Resources.cpu": amounts,
        "scheduler.controller.Resources.memory": amounts,
        "scheduler.controller.Resources.disk": amounts,
        "scheduler.controller.WorkloadInstance.instance_id": instances,
        "scheduler.controller.WatchRequest.epoch": st.just(context.epoch),
        "scheduler.controller.WatchRequest.after_revision": st.integers(0, 10_000),
    }


class Payloads(list):
    """The encoded messages (or DATA frames) of one call, shown shortened in failure reports."""

    def __repr__(self) -> str:
        return (
            "["
            + ", ".join(
                repr(p) if len(p) <= 200 else f"{p[:200]!r}...({len(p)} bytes)" for p in self
            )
            + "]"
        )

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis's pretty printer
        printer.text(repr(self))


def typed_payloads(rpc: Rpc, hints: dict, near: bool = False) -> st.SearchStrategy[list[bytes]]:
    """The request messages of one call, encoded: exactly one, or 0-4 on a request stream."""
    one = requests(rpc.request, hints, near)
    if rpc.cardinality.client_streaming:
        return st.lists(one, max_size=4).map(
            lambda messages: Payloads(
                message.SerializeToString() for message in one_speaker(messages, near)
            )
        )
    return one.map(lambda message: Payloads([message.SerializeToString()]))


def one_speaker(messages: list, near: bool) -> list:
    """Near-valid request streams speak for one node (their first message's id) throughout."""
    if near and messages and "id" in messages[0].DESCRIPTOR.fields_by_name:
        for message in messages[1:]:
            message.id = messages[0].id
    return messages


NASTY_PAYLOADS = [
    b"\xff" * 11,  # a varint longer than 10 bytes
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
    b"\x0a\x02\xff\xfe",  # invalid UTF-8 in a string field
    b"\x0b" * 200 + b"\x0c" * 200,  # 200 nested groups of field 1
    b"\xfb\x0f" * 120,  # deeply nested unknown groups, never closed
    b"\x12\x04\x0a\x02\xc3\x28",  # invalid UTF-8 one message down
    b"\x00",  # field number 0
]


def mangled(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, and valid encodings truncated, overwritten at one byte or extended."""

    def truncate(data: bytes, at: int) -> bytes:
        return data[: at % (len(data) + 1)]

    def overwrite(data: bytes, at: int, byte: int) -> bytes:
        if not data:
            return bytes([byte])
        at %= len(data)
        return data[:at] + bytes([byte]) + data[at + 1 :]

    positions = st.integers(0, 2**16)
    return st.one_of(
        st.binary(max_size=256),
        st.builds(truncate, valid, positions),
        st.builds(overwrite, valid, positions, st.integers(0, 255)),
        st.builds(bytes.__add__, valid, st.binary(min_size=1, max_size=16)),
        st.sampled_from(NASTY_PAYLOADS),
    )


def garbage_payloads(rpc: Rpc, hints: dict) -> st.SearchStrategy[list[bytes]]:
    valid = requests(rpc.request, hints).map(lambda message: message.SerializeToString())
    return st.lists(mangled(valid), max_size=3).map(Payloads)


# -- the cluster under fuzz ---------------------------------------------------------------------


@dataclass
class FuzzContext:
    """What strategies may aim at: known node and instance ids (never LEGIT), the epoch."""

    epoch: str
    nodes: list[str]  # joined
    instances: list[str]  # running on LEGIT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_messages():
    return make_config(server={"max_message_bytes": MAX_MESSAGE_BYTES})


@asynccontextmanager
async def fuzzed_scheduler(guard: float):
    """A scheduler (messages limited to 64 KiB, no status throttling) under a fail_after
    `guard` scaled to the fuzz budget (conftest's running_scheduler has a fixed 20 s one)."""
    config = make_config(
        server={"max_message_bytes": MAX_MESSAGE_BYTES},
        scheduling={"attempt_timeout": 1.0},
        liveness={"node_timeout": 60.0, "status_rate": 1e6, "status_burst": 1_000_000},
    )
    shutdown = trio.Event()
    with trio.fail_after(guard):
        async with trio.open_nursery() as nursery:
            scheduler = await nursery.start(
                lambda task_status: serve(
                    config, ssl_context=None, shutdown=shutdown, task_status=task_status
                )
            )
            try:
                yield scheduler
            finally:
                shutdown.set()


class Bystanders:
    """A legitimate Agent streaming statuses and a Controller watching, on their own
    connections, for as long as the fuzz runs; `check()` proves they did not notice."""

    def __init__(self, scheduler, agent_channel, controller_channel) -> None:
        self.scheduler = scheduler
        self.node = Node(agent_channel, LEGIT, "accept")
        self.controller = FakeController(controller_channel)
        self.sent = 0  # statuses sent; the last one reported memory_free = LEGIT_FREE + sent
        self.seen = -1  # memory_free of the last STATUS event of LEGIT the watch delivered
        self.watch_ended: object = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with (
            self.controller.watch(buffer=1_000_000) as events,
            trio.open_nursery() as nursery,
        ):
            await self.node.start(self.scheduler, mem_total=64 * GIB, mem_free=LEGIT_FREE)
            nursery.start_soon(self._read, events)
            task_status.started()
            while True:
                await trio.sleep(0.02)
                self.sent += 1
                await self.node.stream.send(
                    status(LEGIT, mem_total=64 * GIB, mem_free=LEGIT_FREE + self.sent)
                )

    async def _read(self, events) -> None:
        async for event in events:
            if isinstance(event, Exception):
                self.watch_ended = event
                return
            if event_kind(event) == "STATUS" and event.node.node.id == LEGIT:
                self.seen = event.node.node.memory_free
        self.watch_ended = "the watch channel closed"

    async def check(self, channel) -> None:
        node = self.scheduler.cluster.nodes[LEGIT]
        sent = LEGIT_FREE + self.sent
        with trio.fail_after(5):
            await wait_until(lambda: node.metrics is not None and node.metrics.memory_free >= sent)
            await wait_until(lambda: self.seen >= sent or self.watch_ended is not None)
        assert node.session is not None and node.session.stream is not None, (
            f"the legitimate Agent's status stream ended during the fuzz ({node.state.name})"
        )
        assert self.watch_ended is None, f"the Controller's watch ended: {self.watch_ended!r}"
        assert self.seen >= sent, "the watch stopped delivering the legitimate Agent's statuses"
        listed = {n.id: n.state for n in await FakeController(channel).list_nodes()}
        assert listed[LEGIT] == controller_pb2.Node.READY, listed[LEGIT]
        statuses, error = await schedule(
            channel, scheduling_request("after-fuzz"), until_code=RUNNING
        )
        assert error is None and statuses[-1].node_id == LEGIT, (
            f"a legitimate Schedule after the fuzz failed: {error!r}"
        )

    async def close(self) -> None:
        await self.node.close()


@asynccontextmanager
async def open_fuzz_cluster():
    """Scheduler, bystanders, prepared targets and a fuzz channel (a connection of its own).

    Targets: nodes fz-0..fz-3 joined (no stream), node "dead" reporting with nobody at its port
    (every Schedule tries and is refused there first), instances victim-0..2 running on LEGIT.
    Yields (scheduler, fuzz channel, context, bystanders).
    """
    guard = 30 + FUZZ_EXAMPLES * 0.25
    async with fuzzed_scheduler(guard) as scheduler, open_channel(scheduler.port) as channel:
        agent_channel = await make_channel(scheduler.port)
        controller_channel = await make_channel(scheduler.port)
        fuzz = await make_channel(scheduler.port, codec=BytesCodec())
        bystanders = Bystanders(scheduler, agent_channel, controller_channel)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(bystanders.run)
                dead_port = free_port()
                for node_id in ("fz-0", "fz-1", "fz-2", "fz-3", "dead"):
                    await FakeAgent(channel, node_id, dead_port).join()
                dead = await FakeAgent(channel, "dead", dead_port).report(
                    mem_total=64 * GIB, mem_free=32 * GIB
                )
                await wait_until(lambda: scheduler.cluster.nodes["dead"].metrics is not None)
                await dead.finish()
                victims = [f"victim-{index}" for index in range(3)]
                for instance_id in victims:
                    await schedule(channel, scheduling_request(instance_id), until_code=RUNNING)
                context = FuzzContext(
                    scheduler.events.epoch, ["fz-0", "fz-1", "fz-2", "fz-3", "dead"], victims
                )
                yield scheduler, fuzz, context, bystanders
                await bystanders.check(channel)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await bystanders.close()
                for other in (fuzz, agent_channel, controller_channel):
                    other.close()


def run_examples(label: str, strategy: st.SearchStrategy, check) -> None:
    """Run hypothesis over `strategy` in this (worker) thread; `check(example)` asserts.

    `label` keeps each run's saved failing examples apart in hypothesis's database (the way
    its pytest plugin tells parametrized cases apart), so a failure replays where it was found.
    """

    def fuzz(example):
        check(example)

    fuzz._hypothesis_internal_add_digest = label.encode()
    FUZZ_SETTINGS(given(strategy)(fuzz))()


def no_legit(payloads: list[bytes]) -> None:
    assume(not any(LEGIT.encode() in payload for payload in payloads))


# -- typed and garbage messages, per RPC --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RPCS))
async def test_fuzz_rpc_answers_every_message_with_a_clear_status(name):
    rpc = RPCS[name]
    async with open_fuzz_cluster() as (scheduler, fuzz, context, bystanders):
        hints = hints_for(context)

        def send(payloads: list[bytes], kind: str) -> None:
            no_legit(payloads)
            outcome = trio.from_thread.run(raw_call, fuzz, rpc, payloads)
            assert outcome.clear, (
                f"{rpc.name} answered {kind} request {[p[:120] for p in payloads]!r} "
                f"({[len(p) for p in payloads]} bytes) with {outcome}: SPEC §4 wants a clear "
                "status (UNKNOWN/INTERNAL mean an unhandled exception)"
            )
            if rpc.name == "Schedule" and outcome.streamed:
                # Placed: the Controller destroys it again, so the same id may come back.
                instance_id = controller_pb2.SchedulingRequest.FromString(
                    payloads[0]
                ).workload.instance_id
                wire = controller_pb2.WorkloadInstance(instance_id=instance_id)
                destroyed = trio.from_thread.run(
                    raw_call, fuzz, RPCS["Destroy"], [wire.SerializeToString()]
                )
                assert destroyed.status is Status.OK, (
                    f"Destroy of {instance_id!r}, placed by {payloads!r}: {destroyed}"
                )

        def fuzz_all() -> None:
            run_examples(
                f"{rpc.name} typed",
                typed_payloads(rpc, hints),
                lambda payloads: send(payloads, "typed"),
            )
            run_examples(
                f"{rpc.name} near-valid",
                typed_payloads(rpc, hints, near=True),
                lambda payloads: send(payloads, "near-valid"),
            )
            run_examples(
                f"{rpc.name} garbage",
                garbage_payloads(rpc, hints),
                lambda payloads: send(payloads, "garbage"),
            )

        await trio.to_thread.run_sync(fuzz_all)
        listed = await raw_call(fuzz, RPCS["ListNodes"], [b""])
        assert listed.status is Status.OK, f"the server stopped serving: {listed}"


# -- gRPC framing over raw HTTP/2 ---------------------------------------------------------------


@dataclass
class H2Outcome:
    headers: dict = field(default_factory=dict)  # response headers and trailers together
    streamed: bool = False  # a DATA frame (a reply message) arrived
    reset: object = None  # the stream's RST_STREAM error code
    problem: str = ""

    @property
    def status(self) -> Status | None:
        code = self.headers.get("grpc-status")
        return Status(int(code)) if code is not None else None

    def __str__(self) -> str:
        return self.problem or f"{self.status!r} {self.headers.get('grpc-message', '')!r}" + (
            " (streaming)" if self.streamed else ""
        ) + (f" (reset {self.reset!r})" if self.reset is not None else "")


async def h2_call(
    port: int,
    rpc: Rpc,
    chunks: list[bytes],
    *,
    end_stream: bool = True,
    extra_headers=(),
    timeout: float = 3.0,
) -> H2Outcome:
    """One gRPC call spoken with raw HTTP/2: each chunk sent as DATA frames of its own, so the
    message framing (the 5-byte prefix) can be anything. Waits for the trailers or a reset, or,
    for a server-streaming RPC, a first reply message."""
    path = rpc.path
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra_headers,
        ],
    )
    frame = connection.max_outbound_frame_size
    for index, chunk in enumerate(chunks):
        pieces = [chunk[at : at + frame] for at in range(0, len(chunk), frame)] or [b""]
        for number, piece in enumerate(pieces):
            last = index == len(chunks) - 1 and number == len(pieces) - 1
            connection.send_data(stream_id, piece, end_stream=end_stream and last)
    if not chunks and end_stream:
        connection.end_stream(stream_id)
    outcome = H2Outcome()
    try:
        await stream.send_all(connection.data_to_send())
        with trio.move_on_after(timeout) as waited:
            done = False
            while not done:
                data = await stream.receive_some(65536)
                if not data:
                    outcome.problem = "the server closed the connection without a status"
                    break
                for event in connection.receive_data(data):
                    if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                        outcome.headers.update(dict(event.headers))
                    elif isinstance(event, h2.events.DataReceived):
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, stream_id
                        )
                        if rpc.cardinality.server_streaming:
                            outcome.streamed = True
                            done = True
                    elif isinstance(event, h2.events.StreamReset):
                        outcome.reset = event.error_code
                        done = True
                    elif isinstance(event, h2.events.StreamEnded):
                        done = True
                await stream.send_all(connection.data_to_send())
        if waited.cancelled_caught:
            outcome.problem = f"no status within {timeout} s"
    finally:
        await stream.aclose()
    return outcome


def h2_clear(outcome: H2Outcome) -> bool:
    if outcome.streamed:
        return True
    return not outcome.problem and outcome.status is not None and outcome.status not in NOT_CLEAR


H2_WINDOW = 65_535 - 1  # bytes a client may send before the server's first WINDOW_UPDATE


def prefix(length: int, compressed: bool = False) -> bytes:
    return struct.pack(">?I", compressed, length)


def framings(hints: dict) -> st.SearchStrategy[tuple[Rpc, list[bytes]]]:
    """An RPC and the DATA frames of one request: gRPC framing mangled in every way."""

    @st.composite
    def build(draw):
        rpc = draw(st.sampled_from(sorted(RPCS.values(), key=lambda r: r.name)))
        message = requests(rpc.request, hints).map(lambda m: m.SerializeToString())
        body = draw(st.one_of(message, mangled(message)))
        announced = draw(st.one_of(st.just(len(body)), bounded_integers(0, 2**32 - 1)))
        data = prefix(announced, draw(st.booleans())) + body
        data = draw(
            st.one_of(
                st.just(data),
                st.builds(lambda n: data[:n], st.integers(0, 5)),
                st.builds(lambda n: data[:n], st.integers(0, len(data))),
                st.binary(max_size=64),
            )
        )
        data = data[:H2_WINDOW]
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        return rpc, Payloads(chunks)

    return build()


async def test_fuzz_grpc_framing_over_raw_http2():
    async with open_fuzz_cluster() as (scheduler, fuzz, context, bystanders):
        hints = hints_for(context)

        def send(example) -> None:
            rpc, chunks = example
            no_legit(chunks)
            outcome = trio.from_thread.run(h2_call, scheduler.port, rpc, chunks)
            assert h2_clear(outcome), (
                f"{rpc.name} answered DATA frames {[c[:60] for c in chunks]!r} with {outcome}: "
                "SPEC §4 wants a clear status (UNKNOWN/INTERNAL mean an unhandled exception)"
            )

        await trio.to_thread.run_sync(run_examples, "framing", framings(hints), send)


async def test_a_message_cut_short_by_the_end_of_the_stream_is_invalid_argument():
    # Found by the framing fuzz: the request stream ends (END_STREAM) inside a message.
    cases = [
        ("a body shorter than its prefix says", prefix(100) + b"\x0a\x02ab"),
        ("2 of the 5 prefix bytes", prefix(0)[:2]),
    ]
    wrong = []
    async with running_scheduler(small_messages()) as scheduler:
        for rpc in sorted(RPCS.values(), key=lambda r: r.name):
            for what, data in cases:
                outcome = await h2_call(scheduler.port, rpc, [data])
                if outcome.status is not Status.INVALID_ARGUMENT:
                    wrong.append(f"{rpc.name} ({what}): {outcome}")
    assert not wrong, (
        "a request stream that ends inside a message must be INVALID_ARGUMENT; got\n  "
        + "\n  ".join(wrong)
        + "\n(grpclib's Buffer.read raises AssertionError('Received less "
        "data than expected') from the recv_data calls in Bridge._receive, "
        "scheduler/grpc_bridge.py: unary calls answer UNKNOWN, and Call._pump_requests lets it "
        "escape, so a request stream ends as if the client had half-closed: OK)"
    )


async def test_a_unary_request_with_a_second_message_is_invalid_argument():
    # Found by the fuzz once flow-control credit followed consumption: WatchEvents never read the
    # client's second message, so a large one held the client's window, and the call, for good.
    # grpc-go calls this a cardinality violation; so do we, for every unary-request method.
    unary = [rpc for rpc in RPCS.values() if not rpc.cardinality.client_streaming]
    wrong = []
    async with running_scheduler(small_messages()) as scheduler:
        for rpc in sorted(unary, key=lambda r: r.name):
            for second in (prefix(0), prefix(70_000)):  # whole, or larger than the window
                outcome = await h2_call(scheduler.port, rpc, [prefix(0) + second], end_stream=False)
                if (
                    outcome.status is not Status.INVALID_ARGUMENT
                    or "one request message" not in outcome.headers.get("grpc-message", "")
                ):
                    wrong.append(f"{rpc.name} (second prefix {second!r}): {outcome}")
    assert len(unary) >= 5 and not wrong, "\n  ".join(wrong)


# -- oversized, compressed, unbounded -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RPCS))
async def test_oversized_messages_are_resource_exhausted_without_being_buffered(name):
    rpc = RPCS[name]
    async with running_scheduler(small_messages()) as scheduler, open_channel(scheduler.port):
        # Announce 4 GiB - 1 and send 1 KiB without ending the stream: the answer must come
        # from the prefix alone (a server buffering first would wait here forever).
        outcome = await h2_call(
            scheduler.port, rpc, [prefix(2**32 - 1) + b"x" * 1024], end_stream=False
        )
        assert outcome.status is Status.RESOURCE_EXHAUSTED, f"{rpc.name}: {outcome}"
        assert "server.max_message_bytes" in outcome.headers.get("grpc-message", ""), outcome
        # A whole message one byte over the limit, sent by a real client.
        fuzz = await make_channel(scheduler.port, codec=BytesCodec())
        try:
            outcome = await raw_call(fuzz, rpc, [sized(MAX_MESSAGE_BYTES + 1)])
            assert outcome.status is Status.RESOURCE_EXHAUSTED, f"{rpc.name}: {outcome}"
            assert f"{MAX_MESSAGE_BYTES + 1} bytes exceeds the limit" in outcome.message, outcome
            exact = await raw_call(fuzz, RPCS["ListNodes"], [sized(MAX_MESSAGE_BYTES)])
            assert exact.status is Status.OK, f"a message of exactly the limit is fine: {exact}"
        finally:
            fuzz.close()


@pytest.mark.parametrize("name", sorted(RPCS))
async def test_compressed_messages_are_unimplemented(name):
    rpc = RPCS[name]
    body = rpc.request().SerializeToString()
    async with running_scheduler(small_messages()) as scheduler:
        for headers in ((), (("grpc-encoding", "gzip"),)):
            outcome = await h2_call(
                scheduler.port, rpc, [prefix(len(body), True) + body], extra_headers=headers
            )
            assert outcome.status is Status.UNIMPLEMENTED, f"{rpc.name} {headers}: {outcome}"
            assert "compress" in outcome.headers.get("grpc-message", ""), outcome


def sized(total: int) -> bytes:
    """An encoded message of exactly `total` bytes: field 1 (a string) padded with "x"."""
    for length in range(total, 0, -1):
        data = controller_pb2.WorkloadInstance(instance_id="x" * length).SerializeToString()
        if len(data) == total:
            return data
    raise AssertionError(f"no field-1 encoding is exactly {total} bytes")


def big_workload(**fields) -> bytes:
    return scheduling_request("big-1", **fields).SerializeToString()


def big_status(node_id: str, reports: int) -> bytes:
    return status(node_id, instances=[(f"i-{n}", 1) for n in range(reports)]).SerializeToString()


UNBOUNDED = [
    pytest.param(
        "Schedule",
        lambda: [big_workload(environment=[f"K{n}=v" for n in range(100_000)])],
        "workload.environment has 100000 entries",
        id="100k-environment-entries",
    ),
    pytest.param(
        "Schedule",
        lambda: [big_workload(image="i" * (1 << 20))],
        "workload.image is 1048576 characters",
        id="1MB-image",
    ),
    pytest.param(
        "Schedule",
        lambda: [big_workload(environment=["K=" + "v" * (1 << 20)])],
        "workload.environment[0] is 1048578 characters",
        id="1MB-environment-entry",
    ),
    pytest.param(
        "Schedule",
        lambda: [scheduling_request("x" * (1 << 20)).SerializeToString()],
        "workload.instance_id 'xxx",
        id="1MB-instance-id",
    ),
    pytest.param(
        "UpdateNodeStatus",
        lambda: [big_status("n1", 20_000)],
        "instances lists 20000 entries",
        id="20k-instance-reports",
    ),
    pytest.param(
        "JoinCluster",
        lambda: [agent_pb2.ConnectionRequest(id="n" * (1 << 20), port=7000).SerializeToString()],
        "id 'nnn",
        id="1MB-node-id",
    ),
    pytest.param(
        "LeaveCluster",
        lambda: [agent_pb2.DisconnectionNotice(id="n" * (1 << 20)).SerializeToString()],
        "id 'nnn",
        id="1MB-leave-id",
    ),
    pytest.param(
        "Stop",
        lambda: [controller_pb2.WorkloadInstance(instance_id="x" * (1 << 20)).SerializeToString()],
        "instance_id 'xxx",
        id="1MB-stop-id",
    ),
    pytest.param(
        "Destroy",
        lambda: [controller_pb2.WorkloadInstance(instance_id="x" * (1 << 20)).SerializeToString()],
        "instance_id 'xxx",
        id="1MB-destroy-id",
    ),
]


@pytest.mark.parametrize("name, payloads, message", UNBOUNDED)
async def test_unbounded_strings_and_lists_are_refused_naming_the_field(name, payloads, message):
    rpc = RPCS[name]
    sent = payloads()
    for limit, expected in (
        (4 << 20, Status.INVALID_ARGUMENT),
        (MAX_MESSAGE_BYTES, Status.RESOURCE_EXHAUSTED),
    ):
        config = make_config(server={"max_message_bytes": limit})
        async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
            await FakeAgent(channel, "n1").join()
            fuzz = await make_channel(scheduler.port, codec=BytesCodec())
            try:
                outcome = await raw_call(fuzz, rpc, sent)
            finally:
                fuzz.close()
            shown = f"{rpc.name} with {[len(p) for p in sent]} bytes, limit {limit}"
            assert outcome.status is expected, f"{shown}: {outcome}"
            if expected is Status.INVALID_ARGUMENT:
                assert message in outcome.message, f"{shown}: must name the field: {outcome}"
                assert len(outcome.message) < 1000, (
                    f"{shown}: the message must not echo the huge value back"
                )
            else:
                assert "server.max_message_bytes" in outcome.message, outcome
            assert [n.id for n in await FakeController(channel).list_nodes()] == ["n1"]
