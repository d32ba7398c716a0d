"""scheduler.agent: the handlers Agents call (JoinCluster, LeaveCluster, UpdateNodeStatus).

Thin: validate and convert at the edge, check the caller speaks for its own node, delegate to
the cluster registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from .._proto import agent_grpc, agent_pb2
from ..cluster import Cluster, Node, Session, StatusStream
from ..convert import node_id_from_wire, node_status_from_wire, port_from_wire
from ..errors import Aborted, InvalidArgument
from ..grpc_bridge import Call, TrioHandler, routes
from ..model import InstanceReport, NodeMetrics
from ..security import check_node

log = logging.getLogger(__name__)

EMPTY = agent_pb2.Empty()


class AgentApi:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def routes(self) -> dict[str, TrioHandler]:
        return {
            **routes(
                agent_grpc.LifecycleServiceBase,
                {
                    "JoinCluster": self.join_cluster,
                    "LeaveCluster": self.leave_cluster,
                },
            ),
            **routes(
                agent_grpc.StatusUpdateServiceBase,
                {
                    "UpdateNodeStatus": self.update_node_status,
                },
            ),
        }

    async def join_cluster(self, call: Call) -> agent_pb2.Empty:
        request: agent_pb2.ConnectionRequest = call.request
        node_id = node_id_from_wire(request.id)
        port = port_from_wire(request.port)
        check_node(call.identity, node_id)
        self.cluster.join(node_id, call.peer_host, port)
        return EMPTY

    async def leave_cluster(self, call: Call) -> agent_pb2.Empty:
        node_id = node_id_from_wire(call.request.id)
        check_node(call.identity, node_id)
        self.cluster.leave(node_id)
        return EMPTY

    async def update_node_status(self, call: Call) -> agent_pb2.Empty:
        """One Agent's status stream: every valid message is applied and moves its deadline.

        The stream belongs to the node of its first message. A newer stream for the node, a
        leave, a loss or a rejoin ends this one with ABORTED and the reason.

        Messages are validated and applied where the bridge decodes them (`_StatusStream.take`,
        synchronous): this task owns the stream's lifetime and its cancellation, and wakes only
        for a status that must wait for the node's rate limit, and for the stream's end.
        """
        status = _StatusStream(self.cluster, call.identity)
        try:
            with status.scope:
                call.handle_inline(status.take)
                async for held in call:
                    await trio.sleep(held.wait)
                    status.apply(held)
        finally:
            status.detach()
        if status.scope.cancelled_caught:
            assert status.attached is not None, "only an attached stream is ended by the registry"
            node, _, stream = status.attached
            raise Aborted(f"status stream of node {node.id} ended: {stream.ended_because}")
        return EMPTY


@dataclass(frozen=True)
class _Held:
    """A valid status that may be applied only `wait` seconds from now (the node's rate limit).
    Waiting, rather than dropping, throttles the Agent: its stream is not read meanwhile."""

    wait: float
    metrics: NodeMetrics
    reports: tuple[InstanceReport, ...]


class _StatusStream:
    """One status stream as the registry sees it: the node of its first message, the session
    it feeds, and the `StatusStream` record whose scope (this one) ends it."""

    __slots__ = ("cluster", "identity", "scope", "attached")  # one per Agent, for good

    def __init__(self, cluster: Cluster, identity: Any) -> None:
        self.cluster = cluster
        self.identity = identity
        self.scope = trio.CancelScope()
        self.attached: tuple[Node, Session, StatusStream] | None = None  # at the first status

    def take(self, message: agent_pb2.NodeStatus) -> _Held | None:
        """Validate one message, check the caller speaks for its node (every message, not
        just the first), and apply it; or hold it, if the node's rate limit says to wait."""
        node_id, metrics, reports = node_status_from_wire(message)
        check_node(self.identity, node_id)
        if self.attached is None:
            self.attached = self.cluster.attach_stream(node_id, self.scope)
        node, session, _ = self.attached
        if node_id != node.id:
            raise InvalidArgument(
                f"this status stream belongs to node {node.id}; got a status for {node_id}"
            )
        wait = session.limiter.delay(trio.current_time())
        if wait:
            return _Held(wait, metrics, reports)
        self.cluster.report(node, session, metrics, reports)
        return None

    def apply(self, held: _Held) -> None:
        assert self.attached is not None, "a held status came after the stream attached"
        node, session, _ = self.attached
        self.cluster.report(node, session, held.metrics, held.reports)

    def detach(self) -> None:
        if self.attached is not None:
            _, session, stream = self.attached
            self.cluster.detach_stream(session, stream)
