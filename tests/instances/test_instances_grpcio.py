"""A Controller built on the official `grpcio` package places, stops and destroys an instance
(the grpcio Controller: tests/grpcio_peers.py)."""

from __future__ import annotations

import grpc
import pytest
import trio

from scheduler._proto import controller_pb2
from tests.conftest import make_config, running_scheduler
from tests.fakes import open_channel, open_nodes, scheduling_request
from tests.grpcio_peers import GrpcioController

WAITING, RUNNING, TERMINATED = (
    controller_pb2.Status.WAITING,
    controller_pb2.Status.RUNNING,
    controller_pb2.Status.TERMINATED,
)


async def test_grpcio_controller_schedules_stops_and_destroys():
    async with (
        running_scheduler(make_config(scheduling={"attempt_timeout": 0.5})) as scheduler,
        open_channel(scheduler.port) as channel,
        open_nodes(channel, scheduler, ("n1", "accept", {})) as [n1],
    ):
        controller = GrpcioController(scheduler.port)
        try:
            responses = controller.schedule(
                scheduling_request("g-1", memory=64, environment=["A=1"])
            )
            waiting = await controller.next(responses)
            running = await controller.next(responses)
            assert [(s.instance_id, s.status.code, s.node_id) for s in (waiting, running)] == [
                ("g-1", WAITING, "n1"),
                ("g-1", RUNNING, "n1"),
            ]
            assert list(n1.workloads.workloads[0].environment) == ["A=1"]

            assert await controller.signal("Stop", "g-1") is None
            terminated = await controller.next(responses)
            assert (terminated.status.code, terminated.status.message, terminated.node_id) == (
                TERMINATED,
                "signalled",
                "n1",
            )
            assert await controller.next(responses) is None
            assert responses.code() is grpc.StatusCode.OK, responses.details()

            # Placed again after TERMINATED, then destroyed while its Schedule call is open.
            responses = controller.schedule(scheduling_request("g-1", memory=64))
            assert (await controller.next(responses)).status.code == WAITING
            assert await controller.signal("Destroy", "g-1") is None
            statuses = []
            while (status := await controller.next(responses)) is not None:
                statuses.append(status)
            assert statuses[-1].status.code == TERMINATED
            assert responses.code() is grpc.StatusCode.OK, responses.details()
            assert n1.workloads.signals == [("g-1", 0), ("g-1", 1)], "STOP, then KILL"

            error = await controller.signal("Stop", "g-1")
            assert error is not None and error.code() is grpc.StatusCode.NOT_FOUND
            assert error.details() == "instance g-1 is not known to this scheduler"
        finally:
            await trio.to_thread.run_sync(controller.close)


@pytest.mark.parametrize(
    "fields, code, details",
    [
        (dict(image=""), grpc.StatusCode.INVALID_ARGUMENT, "workload.image is empty"),
        (dict(memory=1 << 30), grpc.StatusCode.RESOURCE_EXHAUSTED, "memory: 1"),
    ],
)
async def test_grpcio_controller_sees_codes_and_messages_of_refused_schedules(
    fields, code, details
):
    async with (
        running_scheduler(make_config()) as scheduler,
        open_channel(scheduler.port) as channel,
        open_nodes(channel, scheduler, ("n1", "accept", {})) as [n1],
    ):
        controller = GrpcioController(scheduler.port)
        try:
            responses = controller.schedule(scheduling_request("g-2", **fields))
            assert await controller.next(responses) is None
            assert responses.code() is code
            assert details in responses.details()
            assert n1.workloads.created == []
        finally:
            await trio.to_thread.run_sync(controller.close)
