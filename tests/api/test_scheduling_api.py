"""scheduler.controller.SchedulingService over real sockets (SPEC §2.2): Schedule, Stop, Destroy.

Every test serves a scheduler on 127.0.0.1:0 (`running_scheduler`, guarded by fail_after) and
talks to it as a Controller would; nodes are fake Agents that join, report a status, and serve
a real node_agent.WorkloadService that accepts, refuses, hangs, ends empty or dies on command.
Attempt timeouts are short (0.5 s) so refusal paths take well under a second.
"""

from __future__ import annotations

import collections
from contextlib import asynccontextmanager

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from scheduler._proto import controller_grpc, controller_pb2
from scheduler.model import NodeState
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    CHATTY_STATUSES,
    FakeController,
    RecordingWorkloadAgent,
    aio,
    destroy_instance,
    drop_stream,
    open_channel,
    open_node,
    open_nodes,
    open_schedule,
    schedule,
    scheduling_request,
    stop_instance,
    wait_until,
)

MIB = 1 << 20
GIB = 1 << 30
WAITING, RUNNING, TERMINATED = (
    controller_pb2.Status.WAITING,
    controller_pb2.Status.RUNNING,
    controller_pb2.Status.TERMINATED,
)
STOP, KILL = 0, 1
ATTEMPT_TIMEOUT = 0.5  # s: long enough for a loopback Create, short enough for refusal tests


def node(node_id: str, mode: str = "accept", **metrics) -> tuple[str, str, dict]:
    """A node spec for open_nodes; metrics as fakes.status (memory in bytes)."""
    return node_id, mode, metrics


@asynccontextmanager
async def open_cluster(*specs, journal=None, liveness=None, **scheduling):
    """A scheduler, a Controller channel to it and started nodes: (scheduler, channel, nodes)."""
    config = make_config(
        scheduling={"attempt_timeout": ATTEMPT_TIMEOUT, **scheduling},
        liveness={"node_timeout": 5, **(liveness or {})},
    )
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        async with open_nodes(channel, scheduler, *specs, journal=journal) as nodes:
            yield scheduler, channel, nodes


def reservations(scheduler):
    return scheduler.cluster.table.reservations


async def leave(scheduler, fake) -> None:
    await fake.agent.leave()
    await wait_until(lambda: scheduler.cluster.nodes[fake.node_id].state is NodeState.LEFT)


def refusal_parts(message: str) -> list[str]:
    """The per-node reasons of an UNAVAILABLE 'every feasible node refused X: a; b' message."""
    head, _, tail = message.partition(": ")
    assert head.startswith("every feasible node refused"), message
    return tail.split("; ")


# -- validation (step 1) ------------------------------------------------------------------------

INVALID = [
    pytest.param(dict(workload=False), "workload is missing", id="missing-workload"),
    pytest.param(
        dict(instance_id="web 1"),
        "workload.instance_id 'web 1' is not a valid id",
        id="instance-id-space",
    ),
    pytest.param(
        dict(instance_id=""), "workload.instance_id '' is not a valid id", id="instance-id-empty"
    ),
    pytest.param(dict(instance_id="a" * 254), "workload.instance_id", id="instance-id-too-long"),
    pytest.param(dict(image=""), "workload.image is empty", id="image-empty"),
    pytest.param(dict(image="i" * 4097), "workload.image is 4097 characters", id="image-too-long"),
    pytest.param(dict(type=7), "workload.type 7 is unknown", id="unknown-type"),
    pytest.param(dict(cpu=-1), "workload.resource_limits.cpu is -1; must be >= 0", id="cpu<0"),
    pytest.param(
        dict(memory=-512), "workload.resource_limits.memory is -512; must be >= 0", id="memory<0"
    ),
    pytest.param(dict(disk=-3), "workload.resource_limits.disk is -3; must be >= 0", id="disk<0"),
    pytest.param(
        dict(instance_id="web/1"),
        "workload.instance_id 'web/1' is not a valid id: "
        "1-253 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        id="instance-id-slash",
    ),
    pytest.param(dict(instance_id="w\u212a"), "workload.instance_id", id="instance-id-kelvin"),
    pytest.param(
        dict(environment=["A=1", ""]), "workload.environment[1] is empty", id="env-empty-entry"
    ),
    pytest.param(
        dict(environment=["K=v"] * 1025),
        "workload.environment has 1025 entries; at most 1024",
        id="env-too-many",
    ),
    pytest.param(
        dict(environment=["K=" + "v" * 40_000]),
        "workload.environment[0] is 40002 characters",
        id="env-entry-too-long",
    ),
]


@pytest.mark.parametrize("fields, message", INVALID)
async def test_invalid_workload_is_invalid_argument_naming_the_field(fields, message):
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        statuses, error = await schedule(channel, scheduling_request(**fields))
        assert statuses == []
        assert error is not None and error.status is Status.INVALID_ARGUMENT, error
        assert message in error.message
        assert n1.workloads.created == [], "an invalid workload must never reach an Agent"
        assert len(reservations(scheduler)) == 0


async def test_validation_comes_before_looking_for_nodes():
    async with (
        running_scheduler(make_config()) as scheduler,
        open_channel(scheduler.port) as channel,
    ):
        _, error = await schedule(channel, scheduling_request(image=""))
        assert error.status is Status.INVALID_ARGUMENT, "a bad request is bad even with no nodes"
        assert "workload.image" in error.message


async def test_edge_values_that_are_valid_are_placed():
    # Ids and environment as the Orka Controller makes them (SPEC §2.2 step 1): `_` in names,
    # upper case, entries that are not KEY=VALUE, all passed to the Agent as given.
    instance_id = "instance-My_db.1-" + "a" * (253 - 17)
    environment = ["EMPTY=", "EQ=a=b", "DEBUG", "=value", " spaced out ", "ünï=cødé"]
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        request = scheduling_request(instance_id, environment=environment, cpu=0, memory=0, disk=0)
        statuses, _ = await schedule(channel, request, until_code=RUNNING)
        assert [s.status.code for s in statuses] == [WAITING, RUNNING]
        [sent] = n1.workloads.workloads
        assert len(instance_id) == 253
        assert (sent.instance_id, sent.image, list(sent.environment)) == (
            instance_id,
            "nginx:1.27",
            environment,
        )
        assert sent.HasField("resource_limits") and sent.resource_limits.HasField("memory"), (
            "explicit zero limits must reach the Agent as set, not as absent"
        )


# -- no nodes, no feasible node (steps 2 and 5) -------------------------------------------------


async def test_no_nodes_at_all_is_failed_precondition():
    async with (
        running_scheduler(make_config()) as scheduler,
        open_channel(scheduler.port) as channel,
    ):
        statuses, error = await schedule(channel, scheduling_request("web-1"))
        assert statuses == []
        assert error.status is Status.FAILED_PRECONDITION
        assert error.message == "cannot place web-1: no node is ready (0 known)"


async def test_only_nodes_that_left_is_failed_precondition():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        await leave(scheduler, n1)
        _, error = await schedule(channel, scheduling_request("web-1"))
        assert error.status is Status.FAILED_PRECONDITION
        assert "no node is ready (1 known)" in error.message
        assert n1.workloads.created == []


async def test_no_feasible_node_is_resource_exhausted_with_counts_per_reason():
    specs = (
        node("n-mem", mem_free=256 * MIB),  # memory
        node("n-mem-cpu", mem_free=100 * MIB, cores=1, load=95.0),  # memory: the first check
        node("n-cpu", cores=1, load=90.0),  # 100 mc free
        node("n-disk", disk_total=10 * GIB, disk_free=100 * MIB),
        node("n-silent", report=False),  # joined, never reported: not-ready
        node("n-left"),  # reported, then left: not-ready
    )
    async with open_cluster(*specs) as (scheduler, channel, nodes):
        await leave(scheduler, nodes[-1])
        request = scheduling_request("big-1", cpu=500, memory=512, disk=1024)
        statuses, error = await schedule(channel, request)
        assert statuses == []
        assert error.status is Status.RESOURCE_EXHAUSTED
        assert error.message.startswith(
            "no node can take big-1 (cpu 500 m, memory 512 MiB, disk 1024 MiB): "
        ), error.message
        counts = dict(part.split(": ") for part in error.message.split("): ", 1)[1].split(", "))
        assert counts == {"not-ready": "2", "memory": "2", "cpu": "1", "disk": "1"}
        assert all(n.workloads.created == [] for n in nodes)


# -- priority (step 3) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, order",
    [
        ("spread", ["n2", "n3", "n1"]),  # most free memory after placement first
        ("binpack", ["n1", "n3", "n2"]),  # least free first
    ],
)
async def test_attempts_follow_the_strategy_and_unavailable_lists_each_node_in_order(
    strategy, order
):
    journal = []
    specs = (
        node("n1", "refuse", mem_free=2 * GIB),
        node("n2", "refuse", mem_free=6 * GIB),
        node("n3", "refuse", mem_free=4 * GIB),
    )
    async with open_cluster(*specs, journal=journal, strategy=strategy) as (scheduler, channel, _):
        statuses, error = await schedule(channel, scheduling_request("p-1", memory=512))
        assert statuses == []
        assert journal == [(node_id, "p-1") for node_id in order], "attempt order"
        assert error.status is Status.UNAVAILABLE
        assert refusal_parts(error.message) == [
            f"{node_id}: RESOURCE_EXHAUSTED: fake agent refuses p-1" for node_id in order
        ]
        assert len(reservations(scheduler)) == 0, "every refusal releases its reservation"


async def test_ties_go_to_fewer_instances_then_smaller_node_id():
    journal = []
    specs = (
        node("n3", "refuse"),
        node("n1", "refuse", instances=[("other", RUNNING)]),
        node("n2", "refuse"),
    )
    async with open_cluster(*specs, journal=journal) as (scheduler, channel, _):
        _, error = await schedule(channel, scheduling_request("t-1"))
        assert error.status is Status.UNAVAILABLE
        assert [node_id for node_id, _ in journal] == ["n2", "n3", "n1"], (
            "equal scores: fewer instances first, then the smaller id"
        )


# -- attempts and refusals (step 4) -------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE, Status.INTERNAL, Status.PERMISSION_DENIED],
)
async def test_refusal_with_any_grpc_error_moves_to_the_next_node(code):
    journal = []
    specs = (node("n1", "refuse", mem_free=6 * GIB), node("n2", mem_free=4 * GIB))
    async with open_cluster(*specs, journal=journal) as (scheduler, channel, [n1, n2]):
        n1.workloads.refuse_status = code
        statuses, error = await schedule(
            channel, scheduling_request("r-1", memory=256), until_code=RUNNING
        )
        assert error is None
        assert journal == [("n1", "r-1"), ("n2", "r-1")]
        assert [(s.status.code, s.node_id) for s in statuses] == [(WAITING, "n2"), (RUNNING, "n2")]
        assert reservations(scheduler).node_of("r-1") == "n2", (
            "the refusing node's reservation is released, the accepting node's is held"
        )


async def test_hanging_agent_is_refused_after_attempt_timeout_and_its_create_cancelled():
    specs = (node("n1", "hang", mem_free=6 * GIB), node("n2", mem_free=4 * GIB))
    async with open_cluster(*specs) as (scheduler, channel, [n1, n2]):
        started = trio.current_time()
        statuses, error = await schedule(channel, scheduling_request("h-1"), until_code=RUNNING)
        elapsed = trio.current_time() - started
        assert error is None and statuses[-1].node_id == "n2"
        assert ATTEMPT_TIMEOUT <= elapsed < ATTEMPT_TIMEOUT + 2.0, elapsed
        await wait_until(lambda: n1.workloads.cancelled == ["h-1"])


async def test_empty_stream_is_a_refusal():
    specs = (node("n1", "empty", mem_free=6 * GIB), node("n2", mem_free=4 * GIB))
    async with open_cluster(*specs) as (scheduler, channel, [n1, n2]):
        statuses, _ = await schedule(channel, scheduling_request("e-1"), until_code=RUNNING)
        assert n1.workloads.created == ["e-1"]
        assert statuses[-1].node_id == "n2"


async def test_every_node_refusing_is_unavailable_with_each_reason():
    specs = (
        node("n1", "refuse", mem_free=7 * GIB),
        node("n2", "hang", mem_free=6 * GIB),
        node("n3", "empty", mem_free=5 * GIB),
        node("n4", mem_free=4 * GIB),
    )
    async with open_cluster(*specs) as (scheduler, channel, nodes):
        gone = nodes[3]
        await gone.workloads.stop()  # joined and reporting, but nobody listens at its port
        gone.workloads._server = None
        statuses, error = await schedule(channel, scheduling_request("u-1", memory=64))
        assert statuses == []
        assert error.status is Status.UNAVAILABLE
        parts = refusal_parts(error.message)
        assert parts[:3] == [
            "n1: RESOURCE_EXHAUSTED: fake agent refuses u-1",
            "n2: no status within 0.5 s",
            "n3: ended the stream without a status",
        ]
        assert parts[3].startswith(f"n4: UNAVAILABLE: cannot reach 127.0.0.1:{gone.workloads.port}")
        assert len(parts) == 4
        assert len(reservations(scheduler)) == 0
        assert all(not scheduler.cluster.nodes[n.node_id].placed for n in nodes)


async def test_max_attempts_limits_the_nodes_tried():
    journal = []
    specs = (
        node("n1", "refuse", mem_free=6 * GIB),
        node("n2", "refuse", mem_free=5 * GIB),
        node("n3", mem_free=4 * GIB),
    )
    async with open_cluster(*specs, journal=journal, max_attempts=2) as (scheduler, channel, nodes):
        _, error = await schedule(channel, scheduling_request("m-1", memory=1))
        assert journal == [("n1", "m-1"), ("n2", "m-1")], "n3 would accept but is the third"
        assert error.status is Status.UNAVAILABLE
        assert [part.split(":")[0] for part in refusal_parts(error.message)] == ["n1", "n2"]


async def test_controller_cancelling_mid_attempt_cancels_the_create_and_releases():
    specs = (node("n1", "hang", mem_total=GIB, mem_free=512 * MIB),)
    async with open_cluster(*specs, attempt_timeout=10.0) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("c-1", memory=512)) as call:
            await wait_until(lambda: n1.workloads.created == ["c-1"])
            assert reservations(scheduler).node_of("c-1") == "n1"
            _, error = await schedule(channel, scheduling_request("c-2", memory=512))
            assert error.status is Status.RESOURCE_EXHAUSTED and "memory: 1" in error.message, (
                "the attempt in flight holds the node's memory"
            )
            await call.cancel()
            await wait_until(lambda: n1.workloads.cancelled == ["c-1"])
            await wait_until(lambda: "c-1" not in reservations(scheduler))
        n1.mode = "accept"
        statuses, error = await schedule(
            channel, scheduling_request("c-1", memory=512), until_code=RUNNING
        )
        assert error is None and statuses[-1].node_id == "n1", (
            "the same instance, same size, fits again once the cancelled attempt released"
        )


async def test_controller_deadline_cancels_the_attempt_in_flight():
    specs = (node("n1", "hang", mem_total=GIB, mem_free=512 * MIB),)
    async with open_cluster(*specs, attempt_timeout=10.0) as (scheduler, channel, [n1]):
        async with open_schedule(
            channel, scheduling_request("d-1", memory=512), timeout=0.3
        ) as call:
            statuses, error = await call.result()
        assert statuses == [] and error is not None
        await wait_until(lambda: n1.workloads.cancelled == ["d-1"])
        await wait_until(lambda: len(reservations(scheduler)) == 0)


async def test_concurrent_schedules_never_overcommit():
    size = 256  # MiB: each node reports 1 GiB free, so exactly 4 fit on each
    specs = [node(f"n{i}", mem_total=8 * GIB, mem_free=4 * size * MIB) for i in (1, 2, 3)]
    async with open_cluster(*specs) as (scheduler, channel, nodes):
        placed: dict[str, str] = {}
        refused: list = []
        done = trio.Event()

        async def one(index: int) -> None:
            request = scheduling_request(f"i-{index}", memory=size)
            async with open_schedule(channel, request) as call:
                first = await call.next()
                if first is None:
                    refused.append(call.error)
                else:
                    placed[first.instance_id] = first.node_id
                await done.wait()

        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(one, index)
            await wait_until(lambda: len(placed) + len(refused) == 50)
            done.set()

        assert len(placed) == 12
        assert collections.Counter(placed.values()) == {"n1": 4, "n2": 4, "n3": 4}
        assert len(refused) == 38
        for error in refused:
            assert error.status in (Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE), error
            if error.status is Status.RESOURCE_EXHAUSTED:
                assert "memory: 3" in error.message, error.message
            else:
                assert "no longer fits (memory)" in error.message, error.message
        for fake in nodes:
            assert len(fake.workloads.created) <= 4, f"{fake.node_id} got too many Creates"
        assert len(reservations(scheduler)) == 12


# -- acceptance, Stop, Destroy (step 5) ---------------------------------------------------------


async def test_accepted_instance_streams_statuses_and_stop_ends_the_call_ok():
    async with open_cluster(node("n1"), node("n2", mem_free=GIB)) as (scheduler, channel, [n1, n2]):
        request = scheduling_request("web-1", environment=["A=1"], cpu=250, memory=128)
        async with open_schedule(channel, request) as call:
            waiting = await call.next()
            assert (waiting.instance_id, waiting.status.code, waiting.node_id) == (
                "web-1",
                WAITING,
                "n1",
            )
            running = await call.next()
            assert (running.status.code, running.node_id) == (RUNNING, "n1")
            [sent] = n1.workloads.workloads
            assert (
                sent.image,
                list(sent.environment),
                sent.resource_limits.cpu,
                sent.resource_limits.memory,
            ) == ("nginx:1.27", ["A=1"], 250, 128)
            nodes = await FakeController(channel).list_nodes()
            listed = {n.id: list(n.instance_ids) for n in nodes}
            assert listed == {"n1": ["web-1"], "n2": []}

            assert await stop_instance(channel, "web-1") is None
            assert n1.workloads.signals == [("web-1", STOP)]
            statuses, error = await call.result()
        assert error is None, "the Schedule call ends OK after TERMINATED"
        last = statuses[-1]
        assert (last.status.code, last.status.message, last.node_id) == (
            TERMINATED,
            "signalled",
            "n1",
        )
        assert len(reservations(scheduler)) == 0
        assert "web-1" not in scheduler.cluster.nodes["n1"].placed
        assert n2.workloads.created == []


async def test_an_agent_ending_the_stream_ok_without_terminated_has_terminated_the_instance():
    # The Orka node agent, once it has cleaned an instance up, ends its Create stream OK with
    # no TERMINATED status (SPEC §2.2 step 5): TERMINATED "ended by the Agent", resources back.
    async with open_cluster(node("n1", "cleanup", mem_free=GIB)) as (scheduler, channel, [n1]):
        async with FakeController(channel).watch() as events:
            async with open_schedule(channel, scheduling_request("c-1", memory=768)) as call:
                await call.until(RUNNING)
                _, error = await schedule(channel, scheduling_request("c-2", memory=768))
                assert error.status is Status.RESOURCE_EXHAUSTED, "c-1 holds the memory"
                assert await stop_instance(channel, "c-1") is None
                statuses, error = await call.result()
            assert error is None, f"the Schedule call must end OK: {error!r}"
            assert [(s.status.code, s.status.message, s.node_id) for s in statuses][-1] == (
                TERMINATED,
                "ended by the Agent",
                "n1",
            )
            seen = []
            while len(seen) < 3:
                event = await events.receive()
                assert not isinstance(event, Exception), event
                if event.WhichOneof("event") == "instance":
                    seen.append((event.instance.status.code, event.instance.status.message))
        assert seen == [(WAITING, ""), (RUNNING, ""), (TERMINATED, "ended by the Agent")]
        assert "c-1" not in reservations(scheduler)
        assert "c-1" not in scheduler.cluster.nodes["n1"].placed
        [latest] = [s for s in scheduler.instances.statuses() if s.instance_id == "c-1"]
        assert (latest.code.name, latest.message) == ("TERMINATED", "ended by the Agent")
        n1.mode = "accept"
        statuses, _ = await schedule(
            channel, scheduling_request("c-2", memory=768), until_code=RUNNING
        )
        assert statuses[-1].node_id == "n1", "the memory c-1 held is free again"


async def test_destroy_sends_kill_and_forgets_the_placement():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("web-1", memory=64)) as call:
            await call.until(RUNNING)
            assert await destroy_instance(channel, "web-1") is None
            assert n1.workloads.signals == [("web-1", KILL)]
            statuses, error = await call.result()
        assert error is None and statuses[-1].status.code == TERMINATED
        for method in (stop_instance, destroy_instance):
            error = await method(channel, "web-1")
            assert error is not None and error.status is Status.NOT_FOUND, method.__name__
            assert "instance web-1 is not known" in error.message
        assert n1.workloads.signals == [("web-1", KILL)], "forgotten: no further signal sent"
        assert "web-1" not in reservations(scheduler)
        assert "web-1" not in scheduler.cluster.nodes["n1"].placed
        assert all(
            not instance.instance_id == "web-1" for instance in scheduler.instances.statuses()
        )


async def test_statuses_reach_watch_events_after_the_controller_cancels_its_schedule():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        async with FakeController(channel).watch() as events:
            async with open_schedule(channel, scheduling_request("w-1")) as call:
                await call.until(RUNNING)
                follower = scheduler.instances._instances["w-1"].follower
                await call.cancel()
            # The handler is gone:
            await wait_until(lambda: follower.gone)
            assert n1.workloads.cancelled == [], "the instance keeps running without its Controller"
            assert await stop_instance(channel, "w-1") is None
            seen = []
            async for event in events:
                assert not isinstance(event, Exception), event
                if event.WhichOneof("event") == "instance":
                    seen.append(
                        (
                            event.instance.instance_id,
                            event.instance.status.code,
                            event.instance.node_id,
                        )
                    )
                    if event.instance.status.code == TERMINATED:
                        break
        assert seen == [("w-1", WAITING, "n1"), ("w-1", RUNNING, "n1"), ("w-1", TERMINATED, "n1")]


async def test_a_controller_not_reading_its_schedule_stream_loses_it_not_our_memory():
    # The Agent sends CHATTY_STATUSES statuses; the Controller reads none: past its HTTP/2
    # window, at most OUTBOX_SIZE wait for it, then its stream is over (RESOURCE_EXHAUSTED)
    # while the instance keeps running and every status still reaches WatchEvents.
    async with open_cluster(node("n1", "chatty")) as (scheduler, channel, [n1]):
        async with FakeController(channel).watch() as events:
            stub = controller_grpc.SchedulingServiceStub(channel)
            async with aio(stub.Schedule.open()) as stream:
                await aio(stream.send_message)(scheduling_request("w-1"), end=True)
                last = f"tick {CHATTY_STATUSES - 1}"
                async for event in events:
                    assert not isinstance(event, Exception), event
                    if event.WhichOneof("event") == "instance":
                        if event.instance.status.message == last:
                            break
                instance = scheduler.instances._instances["w-1"]
                assert instance.follower is None, "the Schedule stream no longer follows it"
                assert not instance.ended, "the instance keeps running"
                received = 0
                while await aio(stream.recv_message)() is not None:
                    received += 1
                with pytest.raises(GRPCError) as ended:
                    await aio(stream.recv_trailing_metadata)()
        assert ended.value.status is Status.RESOURCE_EXHAUSTED
        assert "statuses unread" in ended.value.message
        assert "follow the instance on WatchEvents" in ended.value.message
        assert 0 < received < CHATTY_STATUSES
        assert n1.workloads.cancelled == []


async def test_stop_and_destroy_of_unknown_or_invalid_instances():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        for method in (stop_instance, destroy_instance):
            error = await method(channel, "ghost")
            assert error.status is Status.NOT_FOUND
            assert error.message == "instance ghost is not known to this scheduler"
            error = await method(channel, "bad id!")
            assert error.status is Status.INVALID_ARGUMENT
            assert error.message.startswith("instance_id 'bad id!' is not a valid id")
        assert n1.workloads.signals == []


async def test_node_leaving_ends_the_schedule_unavailable_and_signals_are_unavailable():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("l-1")) as call:
            await call.until(RUNNING)
            await leave(scheduler, n1)
            _, error = await call.result()
        assert error.status is Status.UNAVAILABLE
        assert error.message.startswith("instance l-1 on node n1: "), error.message
        await wait_until(lambda: n1.workloads.cancelled == ["l-1"])
        for method in (stop_instance, destroy_instance):
            error = await method(channel, "l-1")
            assert error.status is Status.UNAVAILABLE, method.__name__
            assert (
                "l-1" in error.message and "node n1" in error.message and "LEFT" in error.message
            ), error.message
        assert n1.workloads.signals == []


async def test_node_rejoining_from_another_address_makes_its_instances_unavailable():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("j-1")) as call:
            await call.until(RUNNING)
            old_session = scheduler.cluster.nodes["n1"].session
            await drop_stream(n1.stream)  # the node is replaced: a new Agent at another port
            n1.stream = None
            await wait_until(lambda: old_session.stream is None)
            replacement = RecordingWorkloadAgent("n1")
            await replacement.start()
            try:
                await n1.agent.join(port=replacement.port)
                _, error = await call.result()
                assert error.status is Status.UNAVAILABLE
                assert error.message.startswith("instance j-1 on node n1: "), error.message
                await wait_until(lambda: n1.workloads.cancelled == ["j-1"])
                error = await stop_instance(channel, "j-1")
                assert error.status is Status.UNAVAILABLE, "the new Agent never ran j-1"
                assert "j-1" in error.message and "node n1" in error.message, error.message
                await n1.report(scheduler)  # a new session is placeable once it reports
                statuses, error = await schedule(
                    channel, scheduling_request("j-1"), until_code=RUNNING
                )
                assert error is None and statuses[-1].node_id == "n1"
                assert replacement.created == ["j-1"] and n1.workloads.created == ["j-1"]
            finally:
                await replacement.stop()


async def test_signal_to_an_instance_on_a_lost_node_is_unavailable():
    async with open_cluster(node("n1"), liveness={"node_timeout": 1.0}) as (scheduler, channel, _):
        await schedule(channel, scheduling_request("x-1"), until_code=RUNNING)
        await wait_until(lambda: scheduler.cluster.nodes["n1"].state is NodeState.LOST)
        error = await stop_instance(channel, "x-1")
        assert error.status is Status.UNAVAILABLE
        assert "on node n1, which is LOST" in error.message


async def test_agent_error_on_signal_keeps_its_code_and_message():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        await schedule(channel, scheduling_request("s-1"), until_code=RUNNING)
        n1.workloads.signal_refusal = (Status.FAILED_PRECONDITION, "s-1 is still pulling its image")
        for method in (stop_instance, destroy_instance):
            error = await method(channel, "s-1")
            assert (error.status, error.message) == (
                Status.FAILED_PRECONDITION,
                "s-1 is still pulling its image",
            ), method.__name__
        assert n1.workloads.signals == [("s-1", STOP), ("s-1", KILL)]
        n1.workloads.signal_refusal = None
        assert await stop_instance(channel, "s-1") is None, (
            "a Destroy the Agent refused leaves the placement in place"
        )


# -- re-placement (step 1) ----------------------------------------------------------------------


async def test_already_exists_while_running_or_being_placed():
    async with open_cluster(node("n1"), node("n2", "hang", mem_free=GIB), attempt_timeout=10.0) as (
        scheduler,
        channel,
        [n1, n2],
    ):
        await schedule(channel, scheduling_request("a-1"), until_code=RUNNING)
        statuses, error = await schedule(channel, scheduling_request("a-1"))
        assert statuses == [] and error.status is Status.ALREADY_EXISTS
        assert error.message == "instance a-1 already runs on node n1 (RUNNING); Destroy it first"

        n1.mode = "refuse"
        async with open_schedule(channel, scheduling_request("a-2")) as first:
            await wait_until(lambda: n2.workloads.created == ["a-2"])
            _, error = await schedule(channel, scheduling_request("a-2"))
            assert error.status is Status.ALREADY_EXISTS
            assert error.message == "instance a-2 is being placed right now"
            await first.cancel()
        assert n1.workloads.created == ["a-1", "a-2"], "the duplicate never reached an Agent"


async def test_replacement_allowed_after_the_node_left():
    async with open_cluster(node("n1", mem_free=6 * GIB), node("n2")) as (
        scheduler,
        channel,
        [n1, n2],
    ):
        await schedule(channel, scheduling_request("m-1"), until_code=RUNNING)
        assert n1.workloads.created == ["m-1"]
        await leave(scheduler, n1)
        statuses, error = await schedule(channel, scheduling_request("m-1"), until_code=RUNNING)
        assert error is None and statuses[-1].node_id == "n2"
        assert "m-1" not in scheduler.cluster.nodes["n1"].placed
        assert scheduler.cluster.nodes["n2"].placed == {"m-1"}
        assert await stop_instance(channel, "m-1") is None
        assert n2.workloads.signals == [("m-1", STOP)], "signals go to the new placement"


async def test_replacement_allowed_after_terminated():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("t-1", memory=64)) as call:
            await call.until(RUNNING)
            await stop_instance(channel, "t-1")
            await call.until(TERMINATED)
        statuses, error = await schedule(
            channel, scheduling_request("t-1", memory=64), until_code=RUNNING
        )
        assert error is None and statuses[-1].node_id == "n1"
        assert n1.workloads.created == ["t-1", "t-1"]
        assert reservations(scheduler).node_of("t-1") == "n1", "the new placement holds its own"


# -- Agents that die, old Agents ----------------------------------------------------------------


async def test_agent_dying_after_acceptance_ends_the_schedule_unavailable():
    async with open_cluster(node("n1", "crash")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("d-1", memory=64)) as call:
            await call.until(RUNNING)
            await n1.workloads.crash("d-1")
            statuses, error = await call.result()
        assert [(s.status.code, s.node_id) for s in statuses] == [(WAITING, "n1"), (RUNNING, "n1")]
        assert error is not None and error.status is Status.UNAVAILABLE, error
        assert error.message.startswith(
            "instance d-1 on node n1: the instance's stream from n1 failed"
        ), error.message
        assert "d-1" not in reservations(scheduler)


async def test_an_instance_whose_agent_stream_broke_may_be_placed_again_and_destroyed():
    # Its fate is unknown: the Controller was told UNAVAILABLE and may place it again; a Destroy
    # the Agent answers NOT_FOUND (it no longer runs it) still forgets the placement.
    async with open_cluster(node("n1", "crash")) as (scheduler, channel, [n1]):
        async with open_schedule(channel, scheduling_request("s-1", memory=64)) as call:
            await call.until(RUNNING)
            await n1.workloads.crash("s-1")
            _, error = await call.result()
        assert error is not None and error.status is Status.UNAVAILABLE
        n1.workloads.mode = "accept"
        statuses, error = await schedule(
            channel, scheduling_request("s-1", memory=64), until_code=RUNNING
        )
        assert error is None and statuses[-1].node_id == "n1", error
        assert n1.workloads.created == ["s-1", "s-1"]
    async with open_cluster(node("n2", "crash")) as (scheduler, channel, [n2]):
        async with open_schedule(channel, scheduling_request("s-2", memory=64)) as call:
            await call.until(RUNNING)
            await n2.workloads.crash("s-2")
            await call.result()
        assert await destroy_instance(channel, "s-2") is None, "Agent's NOT_FOUND still forgets"
        assert n2.workloads.signals == [("s-2", KILL)]
        error = await stop_instance(channel, "s-2")
        assert error is not None and error.status is Status.NOT_FOUND
        assert "instance s-2 is not known" in error.message


async def test_agent_dying_right_after_its_first_status_is_a_refusal():
    # "die": the status and the RST_STREAM arrive together; grpclib's client drops the status,
    # so the scheduler never saw an acceptance and tries the next node.
    specs = (node("n1", "die", mem_free=6 * GIB), node("n2"))
    async with open_cluster(*specs) as (scheduler, channel, [n1, n2]):
        statuses, error = await schedule(channel, scheduling_request("d-2"), until_code=RUNNING)
        assert n1.workloads.created == ["d-2"]
        assert error is None and statuses[-1].node_id == "n2"
        assert reservations(scheduler).node_of("d-2") == "n2"


async def test_old_agents_without_cores_disk_or_instances_still_receive_work():
    specs = (
        node("new", cores=1, load=90.0, disk_total=100 * GIB, disk_free=50 * GIB),
        node("old", cores=0, load=30.0, mem_free=2 * GIB),
    )
    async with open_cluster(*specs) as (scheduler, channel, [new, old]):
        request = scheduling_request("o-1", cpu=2000, memory=256, disk=10_240)
        statuses, error = await schedule(channel, request, until_code=RUNNING)
        assert error is None and statuses[-1].node_id == "old", (
            "cpu and disk an old Agent does not report filter nothing"
        )
        assert new.workloads.created == []
        held = reservations(scheduler)
        assert held.node_of("o-1") == "old"
        await old.report(scheduler, cores=0, load=30.0, mem_free=2 * GIB)
        assert "o-1" in held, "one instance-less report may predate the instance"
        await old.report(scheduler, cores=0, load=30.0, mem_free=2 * GIB)
        assert "o-1" not in held, "released after RESERVATION_REPORTS reports"


async def test_agent_with_no_metrics_at_all_receives_work():
    async with open_cluster(node("bare", mem_total=None, load=None)) as (scheduler, channel, _):
        statuses, error = await schedule(
            channel, scheduling_request("b-1", cpu=100, memory=100), until_code=RUNNING
        )
        assert error is None and statuses[-1].node_id == "bare"


async def test_report_listing_the_instance_releases_its_reservation():
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        await schedule(channel, scheduling_request("r-1", memory=512), until_code=RUNNING)
        assert reservations(scheduler).node_of("r-1") == "n1"
        await n1.report(scheduler, instances=[("other", RUNNING)])
        assert "r-1" in reservations(scheduler), "a report that lists other instances only"
        await n1.report(scheduler, mem_free=3 * GIB, instances=[("r-1", RUNNING)])
        assert "r-1" not in reservations(scheduler)


class GatedWorkloadAgent(RecordingWorkloadAgent):
    """Accepts like "accept", but answers a Create only once the test opens the gate."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.waiting = 0  # Creates received and not answered yet
        self._gate = None

    async def _create(self, stream) -> None:
        import asyncio

        if self._gate is None:
            self._gate = asyncio.Event()
        self.waiting += 1
        await self._gate.wait()
        self.waiting -= 1
        await super()._create(stream)

    async def open_gate(self) -> None:
        async def open_gate():
            self._gate.set()

        await aio(open_gate)()


async def test_a_report_that_lists_the_instance_before_the_agent_answers_releases_at_once():
    # The Agent started the instance and reported it before its first status reached us: that
    # report already accounts for the instance, so holding its reservation would count it twice.
    async with (
        running_scheduler(make_config()) as scheduler,
        open_channel(scheduler.port) as channel,
    ):
        workloads = GatedWorkloadAgent("n1")
        n1 = await open_node(channel, scheduler, "n1", workloads)
        try:
            async with open_schedule(channel, scheduling_request("r-1", memory=512)) as call:
                await wait_until(lambda: workloads.waiting == 1)
                assert reservations(scheduler).node_of("r-1") == "n1"
                await n1.report(scheduler, mem_free=3 * GIB, instances=[("r-1", RUNNING)])
                assert "r-1" in reservations(scheduler), "not accepted yet: still held"
                await workloads.open_gate()
                await call.until(RUNNING)
                assert "r-1" not in reservations(scheduler)
        finally:
            await n1.close()


async def test_instance_streams_spread_over_connections_and_signals_have_their_own(monkeypatch):
    # Every running instance holds a Create stream open; an HTTP/2 peer allows ~100 streams per
    # connection, so Creates spread over connections and Stop/Destroy never queue behind them.
    import scheduler.agents as agents_module

    monkeypatch.setattr(agents_module, "STREAMS_PER_CONNECTION", 3)
    async with open_cluster(node("n1")) as (scheduler, channel, [n1]):
        for index in range(7):
            statuses, error = await schedule(
                channel, scheduling_request(f"c-{index}"), until_code=RUNNING
            )
            assert error is None and statuses[-1].node_id == "n1", error
        link = scheduler.agents.link(scheduler.cluster.nodes["n1"])
        assert [c.streams for c in link._creates] == [3, 3, 1]
        assert await stop_instance(channel, "c-6") is None
        assert await destroy_instance(channel, "c-0") is None
        assert ("c-6", STOP) in n1.workloads.signals and ("c-0", KILL) in n1.workloads.signals
        await wait_until(lambda: sum(c.streams for c in link._creates) == 5)
