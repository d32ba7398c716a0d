"""Peers built on the official `grpcio` package, driven from trio tests: a Controller and a watch.

grpclib serves the scheduler; real Controllers are likely to use grpcio, whose HTTP/2 and
framing details differ. The grpcio client is synchronous, so each call runs in a worker thread
(`trio.to_thread.run_sync`) with its own deadline: a thread cannot be cancelled, the deadline
bounds it instead.
"""

from __future__ import annotations

import math
import threading
from contextlib import asynccontextmanager

import grpc
import trio

from scheduler._proto import controller_pb2

CALL_DEADLINE = 5.0  # s: bounds every blocking grpcio call (the thread cannot be cancelled)
SERVICE = "/scheduler.controller.SchedulingService/"
WATCH = "/scheduler.controller.ClusterService/WatchEvents"
LIST = "/scheduler.controller.ClusterService/ListNodes"


def serialize(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class GrpcioController:
    """SchedulingService (and ListNodes) through grpcio's synchronous API, called from trio
    via threads. `own_connection`: this Controller's calls do not share an HTTP/2 connection
    with other grpcio channels of the process (grpcio pools them by default)."""

    def __init__(self, port: int, *, own_connection: bool = False) -> None:
        options = [("grpc.enable_http_proxy", 0)]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        self._schedule = self.channel.unary_stream(
            SERVICE + "Schedule",
            request_serializer=controller_pb2.SchedulingRequest.SerializeToString,
            response_deserializer=controller_pb2.WorkloadStatus.FromString,
        )
        self._unary = {
            name: self.channel.unary_unary(
                SERVICE + name,
                request_serializer=controller_pb2.WorkloadInstance.SerializeToString,
                response_deserializer=controller_pb2.Empty.FromString,
            )
            for name in ("Stop", "Destroy")
        }
        self._list = self.channel.unary_unary(
            LIST,
            request_serializer=serialize,
            response_deserializer=controller_pb2.NodeList.FromString,
        )

    def schedule(self, request, timeout: float = CALL_DEADLINE):
        """The response iterator of a Schedule call (also the call: code(), details())."""
        return self._schedule(request, timeout=timeout)

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
                self._unary[name](
                    controller_pb2.WorkloadInstance(instance_id=instance_id), timeout=CALL_DEADLINE
                )
            except grpc.RpcError as err:
                return err
            return None

        return await trio.to_thread.run_sync(call)

    async def list_nodes(self) -> list[controller_pb2.Node]:
        reply = await trio.to_thread.run_sync(
            lambda: self._list(controller_pb2.Empty(), timeout=CALL_DEADLINE)
        )
        return list(reply.nodes)

    def close(self) -> None:
        self.channel.close()


@asynccontextmanager
async def watch(channel: grpc.Channel, epoch: str = "", after_revision: int = 0):
    """Yield a trio channel of ClusterEvents read by a grpcio WatchEvents call in a thread.

    If the call ends, its last item is the grpc.RpcError.
    """
    call = channel.unary_stream(
        WATCH,
        request_serializer=serialize,
        response_deserializer=controller_pb2.ClusterEvent.FromString,
    )(controller_pb2.WatchRequest(epoch=epoch, after_revision=after_revision))
    send, receive = trio.open_memory_channel(math.inf)
    token = trio.lowlevel.current_trio_token()

    def pump():
        try:
            for event in call:
                trio.from_thread.run_sync(send.send_nowait, event, trio_token=token)
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.CANCELLED:
                trio.from_thread.run_sync(send.send_nowait, err, trio_token=token)

    thread = threading.Thread(target=pump, name="grpcio-watch", daemon=True)
    thread.start()
    try:
        yield receive
    finally:
        call.cancel()
        await trio.to_thread.run_sync(thread.join, CALL_DEADLINE)
