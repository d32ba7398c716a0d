"""A Controller built on the official `grpcio` package places, stops and destroys an instance.

grpclib serves the scheduler; real Controllers are likely to use grpcio, whose HTTP/2 and
framing details differ. The grpcio client is synchronous, so each call runs in a worker thread
(`trio.to_thread.run_sync`) with its own deadline: a thread cannot be cancelled, the deadline
bounds it instead.
"""
from __future__ import annotations

import grpc
import pytest
import trio

from scheduler._proto import controller_pb2
from tests.conftest import make_config, running_scheduler
from tests.fakes import open_channel, open_nodes, scheduling_request

CALL_DEADLINE = 5.0  # s: bounds every blocking grpcio call (the thread cannot be cancelled)
SERVICE = "/scheduler.controller.SchedulingService/"
WAITING, RUNNING, TERMINATED = (controller_pb2.Status.WAITING, controller_pb2.Status.RUNNING,
                                controller_pb2.Status.TERMINATED)


class GrpcioController:
    """SchedulingService through grpcio's synchronous API, called from trio via threads."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._schedule = self.channel.unary_stream(
            SERVICE + "Schedule",
            request_serializer=controller_pb2.SchedulingRequest.SerializeToString,
            response_deserializer=controller_pb2.WorkloadStatus.FromString)
        self._unary = {
            name: self.channel.unary_unary(
                SERVICE + name,
                request_serializer=controller_pb2.WorkloadInstance.SerializeToString,
                response_deserializer=controller_pb2.Empty.FromString)
            for name in ("Stop", "Destroy")
        }

    def schedule(self, request):
        """The response iterator of a Schedule call (also the call: code(), details())."""
        return self._schedule(request, timeout=CALL_DEADLINE)

    async def next(self, responses):
        """The next status, or None at the end of the stream (OK or not: see code())."""
        def step():
            try:
                return next(responses)
            except StopIteration:
                return None
            except grpc.RpcError:
                return None
        return await trio.to_thread.run_sync(step)

    async def signal(self, name: str, instance_id: str):
        """Stop or Destroy; None if OK, else the grpc.RpcError."""
        def call():
            try:
                self._unary[name](controller_pb2.WorkloadInstance(instance_id=instance_id),
                                  timeout=CALL_DEADLINE)
            except grpc.RpcError as err:
                return err
            return None
        return await trio.to_thread.run_sync(call)

    def close(self) -> None:
        self.channel.close()


async def test_grpcio_controller_schedules_stops_and_destroys():
    async with running_scheduler(make_config(scheduling={"attempt_timeout": 0.5})) as scheduler, \
            open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "accept", {})) as [n1]:
        controller = GrpcioController(scheduler.port)
        try:
            responses = controller.schedule(scheduling_request("g-1", memory=64,
                                                               environment=["A=1"]))
            waiting = await controller.next(responses)
            running = await controller.next(responses)
            assert [(s.instance_id, s.status.code, s.node_id) for s in (waiting, running)] == \
                [("g-1", WAITING, "n1"), ("g-1", RUNNING, "n1")]
            assert list(n1.workloads.workloads[0].environment) == ["A=1"]

            assert await controller.signal("Stop", "g-1") is None
            terminated = await controller.next(responses)
            assert (terminated.status.code, terminated.status.message, terminated.node_id) == \
                (TERMINATED, "signalled", "n1")
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


@pytest.mark.parametrize("fields, code, details", [
    (dict(image=""), grpc.StatusCode.INVALID_ARGUMENT, "workload.image is empty"),
    (dict(memory=1 << 30), grpc.StatusCode.RESOURCE_EXHAUSTED, "memory: 1"),
])
async def test_grpcio_controller_sees_codes_and_messages_of_refused_schedules(fields, code, details):
    async with running_scheduler(make_config()) as scheduler, \
            open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "accept", {})) as [n1]:
        controller = GrpcioController(scheduler.port)
        try:
            responses = controller.schedule(scheduling_request("g-2", **fields))
            assert await controller.next(responses) is None
            assert responses.code() is code
            assert details in responses.details()
            assert n1.workloads.created == []
        finally:
            await trio.to_thread.run_sync(controller.close)
