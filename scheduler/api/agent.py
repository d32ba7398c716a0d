"""scheduler.agent: the handlers Agents call (JoinCluster, LeaveCluster, UpdateNodeStatus).

Thin: validate and convert at the edge, check the caller speaks for its own node, delegate to
the cluster registry.
"""
from __future__ import annotations

import logging

import trio

from .._proto import agent_grpc, agent_pb2
from ..cluster import Cluster
from ..errors import Aborted, InvalidArgument
from ..grpc_bridge import Call, TrioHandler, routes
from ..security import check_node
from ..convert import node_id_from_wire, node_status_from_wire, port_from_wire

log = logging.getLogger(__name__)

EMPTY = agent_pb2.Empty()


class AgentApi:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def routes(self) -> dict[str, TrioHandler]:
        return {
            **routes(agent_grpc.LifecycleServiceBase, {
                "JoinCluster": self.join_cluster,
                "LeaveCluster": self.leave_cluster,
            }),
            **routes(agent_grpc.StatusUpdateServiceBase, {
                "UpdateNodeStatus": self.update_node_status,
            }),
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
        """
        cluster = self.cluster
        node = session = stream = None
        try:
            with trio.CancelScope() as scope:
                async for message in call:
                    node_id, metrics, reports = node_status_from_wire(message)
                    check_node(call.identity, node_id)  # every message, not just the first
                    if stream is None:
                        node, session, stream = cluster.attach_stream(node_id, scope)
                    elif node_id != node.id:
                        raise InvalidArgument(f"this status stream belongs to node {node.id}; "
                                              f"got a status for {node_id}")
                    wait = session.limiter.delay(trio.current_time())
                    if wait:
                        await trio.sleep(wait)
                    cluster.report(node, session, metrics, reports)
        finally:
            if stream is not None:
                cluster.detach_stream(session, stream)
        if scope.cancelled_caught:
            raise Aborted(f"status stream of node {node.id} ended: {stream.ended_because}")
        return EMPTY
