"""scheduler.controller.SchedulingService: Schedule, Stop, Destroy (SPEC §2.2)."""

from __future__ import annotations

from .._proto import controller_grpc, controller_pb2
from ..convert import instance_id_from_wire, instance_status_to_wire, workload_from_wire
from ..errors import Unavailable
from ..grpc_bridge import Call, TrioHandler, routes
from ..instances import ENDED_OK, Instances

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
        instance, statuses = await self.instances.schedule(workload)
        async with statuses:
            async for status in statuses:
                await call.send(instance_status_to_wire(status))
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
