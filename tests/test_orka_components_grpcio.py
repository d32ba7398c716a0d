"""What the real Orka components do, end to end (issue 11): a Controller on grpcio, fake Agents
that are real gRPC servers on 127.0.0.1 and report the way the Orka node agent does.

- Ids and environment as the Orka Controller makes them (SPEC §2.2 step 1): `_` in instance
  names, environment entries that are not KEY=VALUE.
- An Agent that ends an instance's Create stream OK without a TERMINATED status (step 5).
- Ranking counts what is placed (step 3): `spread` water-fills, equal nodes share evenly,
  `binpack` fills one node before it starts the next. The Agents report every REPORT_INTERVAL
  their free memory and cpu, lowered by what their running instances use; a current Agent lists
  the instances it runs (its report closes their reservation window), an old one lists none and
  reports no cores (only RESERVATION_REPORTS reports close the window).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from contextlib import asynccontextmanager

import grpc
import pytest
import trio

from scheduler._proto import controller_pb2
from scheduler.model import MIB, NodeMetrics, Resources, Strategy
from scheduler.placement import NodeTable, plan, reserve_if_fits
from scheduler.placement.requests import NONZERO_CPU_MILLICORES, NONZERO_MEMORY_MIB
from tests.conftest import make_config, running_scheduler
from tests.fakes import Node, open_channel, open_nodes, scheduling_request, wait_until
from tests.grpcio_peers import GrpcioController, watch

GIB_IN_MIB = 1024
WAITING, RUNNING, TERMINATED = (
    controller_pb2.Status.WAITING,
    controller_pb2.Status.RUNNING,
    controller_pb2.Status.TERMINATED,
)
REPORT_INTERVAL = 0.1  # s: within the scheduler's default status_rate (10/s per node)
USED_MIB = NONZERO_MEMORY_MIB  # what a fake instance without limits uses: what ranking counts
USED_MILLICORES = NONZERO_CPU_MILLICORES
TOTAL_GIB = 8  # every fake node's memory
CORES = 4  # a current Agent's cores (an old one reports none)
IDLE_LOAD = 10.0  # percent busy with no instance running
SCHEDULES_PER_CONNECTION = 50  # the scheduler allows 100 streams per HTTP/2 connection
SCHEDULE_DEADLINE = 60.0  # s: Schedule calls stay open while their instances run
NO_LIMITS = Resources()
AGENT_KINDS = pytest.mark.parametrize("lists_instances", [True, False], ids=["agent", "old-agent"])


def agent_metrics(free_mib: int, lists_instances: bool, running: list[str]) -> dict:
    """A fake Agent's status (fakes.status keywords): free memory and cpu lowered by what its
    running instances use, and (unless old) the instances it runs."""
    free = max(0, free_mib - USED_MIB * len(running)) * MIB
    load = min(100.0, IDLE_LOAD + 100.0 * USED_MILLICORES * len(running) / (CORES * 1000))
    metrics = dict(mem_total=TOTAL_GIB * GIB_IN_MIB * MIB, mem_free=free, load=load)
    if not lists_instances:  # an old Agent: no cores (its cpu is unknown), no instances
        return dict(metrics, cores=0)
    return dict(metrics, cores=CORES, instances=[(i, RUNNING) for i in running])


async def report_forever(node: Node, free_mib: int, lists_instances: bool) -> None:
    """The status loop of a fake Agent, one report every REPORT_INTERVAL."""
    while True:
        await trio.sleep(REPORT_INTERVAL)
        await node.report(**agent_metrics(free_mib, lists_instances, list(node.workloads.running)))


@asynccontextmanager
async def open_orka_cluster(
    free_mib: dict[str, int], lists_instances: bool = True, strategy: str = "spread"
):
    """A scheduler and reporting fake Agents (node id -> free MiB at idle); yields the
    scheduler and the nodes (tests.fakes.Node) once every node has reported."""
    config = make_config(scheduling={"strategy": strategy, "attempt_timeout": 5.0})
    specs = [
        (node_id, "accept", agent_metrics(free, lists_instances, []))
        for node_id, free in free_mib.items()
    ]
    async with (
        running_scheduler(config) as scheduler,
        open_channel(scheduler.port) as channel,
        open_nodes(channel, scheduler, *specs) as nodes,
    ):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(report_forever, node, free_mib[node.node_id], lists_instances)
            yield scheduler, nodes
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_controllers(port: int, schedules: int):
    """grpcio Controllers, each on its own HTTP/2 connection, enough for `schedules` open
    Schedule calls (the scheduler allows 100 streams per connection)."""
    controllers = [
        GrpcioController(port, own_connection=True)
        for _ in range(max(1, math.ceil(schedules / SCHEDULES_PER_CONNECTION)))
    ]
    try:
        yield controllers
    finally:
        await trio.to_thread.run_sync(lambda: [c.close() for c in controllers])


async def place(
    scheduler,
    controllers: list[GrpcioController],
    count: int,
    waves: int = 3,
    prefix: str = "instance-web_app",
) -> tuple[list[str], list]:
    """Ask for `count` instances without limits in `waves` bursts, as a Controller scaling a
    workload up does: each burst at once, the next once the Agents' reports show the last (the
    scheduler holds no reservation any more), so later decisions rank on what the Agents report.
    Return the node of each instance, and the calls: they stay open while their instances run
    (keep them referenced: grpcio cancels a collected call)."""
    nodes: list[str] = []
    calls = []
    for wave in range(waves):
        numbers = range(count * wave // waves, count * (wave + 1) // waves)
        burst = [
            controllers[number // SCHEDULES_PER_CONNECTION].schedule(
                scheduling_request(f"{prefix}-{number}"), SCHEDULE_DEADLINE
            )
            for number in numbers
        ]
        for number, call in zip(numbers, burst, strict=True):
            first = await controllers[0].next(call)
            assert first is not None, f"{prefix}-{number}: {call.code()} {call.details()}"
            assert first.status.code == WAITING
            nodes.append(first.node_id)
        calls += burst
        await wait_until(lambda: len(scheduler.cluster.table.reservations) == 0)
    return nodes, calls


def placed_one_by_one(
    free_mib: dict[str, int], lists_instances: bool, count: int, strategy: Strategy
) -> Counter:
    """Where `count` instances without limits go when each is counted the moment it is placed
    (no report in between): the plain placement rules over the Agents' idle reports."""
    table = NodeTable()
    for node_id, free in free_mib.items():
        table.upsert(node_id)
        table.set_ready(node_id, True)
        table.update_metrics(
            node_id,
            NodeMetrics(
                memory_total=TOTAL_GIB * GIB_IN_MIB * MIB,
                memory_free=free * MIB,
                cpu_load=IDLE_LOAD,
                cpu_cores=CORES if lists_instances else None,
            ),
        )
    placed: Counter = Counter()
    for number in range(count):
        [node_id] = plan(table, strategy=strategy, max_attempts=1).order
        assert reserve_if_fits(table, node_id, f"i-{number}", NO_LIMITS) is None
        placed[node_id] += 1
        table.set_instance_count(node_id, placed[node_id])
    return placed


# -- SPEC §2.2 step 1 -------------------------------------------------------------------------


async def test_ids_and_environment_as_the_orka_controller_makes_them():
    instance_id = f"instance-my_db-{uuid.uuid4()}"
    environment = ["DEBUG", "A=1", "PATH=/usr/bin:/bin", "--verbose", "=x"]
    async with (
        open_orka_cluster({"n1": 4 * GIB_IN_MIB}) as (scheduler, [n1]),
        open_controllers(scheduler.port, 1) as [controller],
    ):
        request = scheduling_request(instance_id, environment=environment, memory=64)
        responses = controller.schedule(request)
        statuses = [await controller.next(responses) for _ in range(2)]
        assert [(s.instance_id, s.status.code, s.node_id) for s in statuses] == [
            (instance_id, WAITING, "n1"),
            (instance_id, RUNNING, "n1"),
        ]
        [sent] = n1.workloads.workloads
        assert (sent.instance_id, list(sent.environment)) == (instance_id, environment), (
            "passed to the Agent as given"
        )
        # The Agent lists it in its reports: a valid instance id there too.
        await wait_until(lambda: instance_id not in scheduler.cluster.table.reservations)
        [node] = await controller.list_nodes()
        assert (node.state, list(node.instance_ids)) == (controller_pb2.Node.READY, [instance_id])

        assert await controller.signal("Stop", instance_id) is None
        terminated = await controller.next(responses)
        assert (terminated.status.code, terminated.status.message) == (TERMINATED, "signalled")
        assert await controller.next(responses) is None
        assert responses.code() is grpc.StatusCode.OK, responses.details()
        assert await controller.signal("Destroy", instance_id) is None
        error = await controller.signal("Stop", instance_id)
        assert error is not None and error.code() is grpc.StatusCode.NOT_FOUND
        assert error.details() == f"instance {instance_id} is not known to this scheduler"


# -- SPEC §2.2 step 5 -------------------------------------------------------------------------


async def test_an_agent_that_ends_the_stream_ok_without_terminated_has_terminated_it():
    # The node reports once (no report loop): what holds its memory is the reservation alone.
    async with (
        running_scheduler(make_config()) as scheduler,
        open_channel(scheduler.port) as channel,
        open_nodes(channel, scheduler, ("n1", "cleanup", {"mem_free": GIB_IN_MIB * MIB})),
        open_controllers(scheduler.port, 2) as [controller],
    ):
        async with watch(controller.channel) as events:
            assert (await events.receive()).WhichOneof("event") == "snapshot"
            responses = controller.schedule(scheduling_request("instance-db_1-a", memory=768))
            assert [(await controller.next(responses)).status.code for _ in range(2)] == [
                WAITING,
                RUNNING,
            ]
            refused = controller.schedule(scheduling_request("instance-db_1-b", memory=768))
            assert await controller.next(refused) is None
            assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()

            assert await controller.signal("Stop", "instance-db_1-a") is None
            last = await controller.next(responses)
            assert (last.instance_id, last.status.code, last.status.message, last.node_id) == (
                "instance-db_1-a",
                TERMINATED,
                "ended by the Agent",
                "n1",
            )
            assert await controller.next(responses) is None
            assert responses.code() is grpc.StatusCode.OK, responses.details()

            seen = []
            while len(seen) < 3:
                event = await events.receive()
                assert not isinstance(event, grpc.RpcError), event
                if event.WhichOneof("event") == "instance":
                    seen.append((event.instance.status.code, event.instance.status.message))
            assert seen == [(WAITING, ""), (RUNNING, ""), (TERMINATED, "ended by the Agent")]

        again = controller.schedule(scheduling_request("instance-db_1-b", memory=768))
        first = await controller.next(again)
        assert first is not None, f"its memory is free again: {again.code()} {again.details()}"
        assert (first.status.code, first.node_id) == (WAITING, "n1")
        again.cancel()


# -- SPEC §2.2 step 3 -------------------------------------------------------------------------


def free_fraction(free_mib: int, instances: int, lists_instances: bool) -> float:
    """A node's mean free fraction once its Agent reports `instances` running: memory, and
    cpu where the Agent reports cores."""
    memory = (free_mib - USED_MIB * instances) / (TOTAL_GIB * GIB_IN_MIB)
    if not lists_instances:
        return memory
    capacity = CORES * 1000
    cpu = (capacity * (1 - IDLE_LOAD / 100) - USED_MILLICORES * instances) / capacity
    return (memory + cpu) / 2


@AGENT_KINDS
@pytest.mark.parametrize("step_mib", [16, 100], ids=["slightly", "100MiB"])
async def test_spread_water_fills_the_freest_nodes_first(lists_instances, step_mib):
    # 20 nodes whose free memory differs by `step_mib` each; 60 instances without limits.
    free = {f"n{i:02d}": 3 * GIB_IN_MIB + step_mib * i for i in range(20)}
    async with (
        open_orka_cluster(free, lists_instances) as (scheduler, _),
        open_controllers(scheduler.port, 60) as controllers,
    ):
        nodes, calls = await place(scheduler, controllers, 60)
    got = Counter(nodes)
    by_freeness = [got[node_id] for node_id in sorted(free, key=free.get, reverse=True)]
    assert by_freeness == sorted(by_freeness, reverse=True), f"freest first: {by_freeness}"
    # Water-filling: the free amounts (what each Agent reports now) meet within one instance,
    # and a node that got nothing was never above that level.
    left = {
        node_id: free_fraction(free[node_id], got[node_id], lists_instances) for node_id in free
    }
    one_instance = free_fraction(0, 0, lists_instances) - free_fraction(0, 1, lists_instances)
    level = min(left[node_id] for node_id in got)
    assert max(left.values()) - level <= one_instance + 1e-9, by_freeness
    assert got == placed_one_by_one(free, lists_instances, 60, Strategy.SPREAD), (
        "the same as when each placement is counted the moment it is made"
    )


@AGENT_KINDS
async def test_spread_shares_equal_nodes_evenly(lists_instances):
    free = {f"n{i:02d}": 4 * GIB_IN_MIB for i in range(20)}
    async with (
        open_orka_cluster(free, lists_instances) as (scheduler, _),
        open_controllers(scheduler.port, 200) as controllers,
    ):
        nodes, calls = await place(scheduler, controllers, 200, waves=4)
    got = Counter(nodes)
    assert set(got) == set(free) and all(9 <= count <= 11 for count in got.values()), got


@AGENT_KINDS
async def test_binpack_fills_one_node_before_it_starts_the_next(lists_instances):
    # 1 GiB free on each node: room for 8 instances of 128 MiB (cpu has room for 36).
    free = {f"n{i:02d}": GIB_IN_MIB for i in range(20)}
    async with (
        open_orka_cluster(free, lists_instances, "binpack") as (scheduler, _),
        open_controllers(scheduler.port, 24) as controllers,
    ):
        nodes, calls = await place(scheduler, controllers, 24)
    assert Counter(nodes) == {"n00": 8, "n01": 8, "n02": 8}, Counter(nodes)
