"""scheduler.controller.ClusterService: how node and instance status reaches the Controller."""

from __future__ import annotations

import logging

from .._proto import controller_grpc, controller_pb2
from ..cluster import Cluster
from ..convert import event_to_wire, node_to_wire
from ..events import EventLog, Watcher
from ..grpc_bridge import Call, TrioHandler, routes

log = logging.getLogger(__name__)


class ClusterApi:
    def __init__(self, cluster: Cluster, events: EventLog) -> None:
        self.cluster = cluster
        self.events = events

    def routes(self) -> dict[str, TrioHandler]:
        return routes(
            controller_grpc.ClusterServiceBase,
            {
                "WatchEvents": self.watch_events,
                "ListNodes": self.list_nodes,
            },
        )

    async def watch_events(self, call: Call) -> None:
        """Replay after (epoch, after_revision) when retained, else snapshot; then live events.

        Runs until the Controller goes away; `call.send` waits while it reads slowly, so its
        position in the log falls behind instead of buffering here.
        """
        request: controller_pb2.WatchRequest = call.request
        events = self.events
        watcher = Watcher(events, request.epoch, request.after_revision)
        events.watchers += 1
        log.info(
            "watcher from %s connected (epoch %s, after revision %d)",
            call.peer_host,
            request.epoch or "-",
            request.after_revision,
        )
        try:
            async for event in watcher:
                await call.send(event_to_wire(events.epoch, event))
        finally:
            events.watchers -= 1
            log.info("watcher from %s disconnected", call.peer_host)

    async def list_nodes(self, call: Call) -> controller_pb2.NodeList:
        return controller_pb2.NodeList(nodes=[node_to_wire(v) for v in self.cluster.views()])
