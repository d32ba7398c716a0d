"""scheduler.controller.SchedulingService: Schedule, Stop, Destroy (SPEC §2.2)."""

from __future__ import annotations

import trio

from .._proto import controller_grpc, controller_pb2
from ..convert import instance_id_from_wire, instance_status_to_wire, workload_from_wire
from ..errors import ResourceExhausted, Unavailable
from ..grpc_bridge import OUTBOX_SIZE, Call, TrioHandler, routes
from ..instances import ENDED_OK, Instances
from ..model import InstanceStatus

EMPTY = controller_pb2.Empty()


class SchedulingApi:
    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def routes(self) -> dict[str, TrioHandler]:
        return routes(
            controller_grpc.SchedulingServiceBase,
            {
                "Schedule": self.schedule,
                "Stop": self.stop,
                "Destroy": self.destroy,
            },
        )

    async def schedule(self, call: Call) -> None:
        """Place the workload, then relay its statuses until TERMINATED (then end OK).

        If the Controller goes away, the attempt in flight is cancelled; after acceptance the
        instance keeps running and its statuses keep flowing to WatchEvents.
        """
        workload = workload_from_wire(call.request)
        following = _Following(call)
        try:
            instance = await self.instances.schedule(workload, following)
            await following.over.wait()
        finally:
            following.gone = True
        if following.behind:
            raise ResourceExhausted(
                f"instance {instance.id} runs on node {instance.node.id}, but this Schedule "
                f"stream is over: its reader left {OUTBOX_SIZE} statuses unread; "
                "follow the instance on WatchEvents"
            )
        if instance.ended not in ENDED_OK:
            raise Unavailable(
                f"instance {instance.id} on node {instance.node.id}: {instance.ended}"
            )

    async def stop(self, call: Call) -> controller_pb2.Empty:
        await self.instances.stop(instance_id_from_wire(call.request.instance_id))
        return EMPTY

    async def destroy(self, call: Call) -> controller_pb2.Empty:
        await self.instances.destroy(instance_id_from_wire(call.request.instance_id))
        return EMPTY


class _Following:
    """A Schedule call following its instance (an `instances.Follower`): the relay's statuses
    are queued on the call as they come, no task wakes per status. A Controller that reads none
    of OUTBOX_SIZE waiting statuses loses the stream (RESOURCE_EXHAUSTED), not our memory."""

    __slots__ = ("_call", "over", "behind", "gone")

    def __init__(self, call: Call) -> None:
        self._call = call
        self.over = trio.Event()  # the relay ended, or the reader fell behind
        self.behind = False
        self.gone = False  # the call is over: nothing more may be queued on it

    def status(self, status: InstanceStatus) -> bool:
        if self.gone:
            return False
        if not self._call.send_nowait(instance_status_to_wire(status)):
            self.behind = True
            self.over.set()
            return False
        return True

    def end(self) -> None:
        self.over.set()
