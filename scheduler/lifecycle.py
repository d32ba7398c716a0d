"""What happens, in order, at each step of a node's life: the one place that says it.

The registry (`cluster/`) decides *that* a step happened and keeps its own books first (the
session, the liveness deadline, the placement table, the node's state). Then, at each step, it
calls the `Lifecycle` below, which does what follows outside the registry, in this order:

  join (new session)   1. registry: session, deadline, READY, table row
                       2. node_changed: the membership record is saved
                       3. registry: JOINED event
  status               1. registry: metrics, deadline, table
                       2. instances_reported (only when the list changed): reconcile the
                          placements on the node with it (may narrow what the node speaks for)
                       3. node_reported: reservations the report now accounts for are released
                       4. registry: STATUS event
  leave / loss         1. registry: the session (and its status stream) ends
                       2. generation_ended: the channels to its Agent close, then the
                          instances of that generation end (their relays stop, reservations go)
                       3. registry: LEFT / LOST state; node_changed: the record is saved
                       4. registry: LEFT / LOST event, then the node counts as departed
  rejoin elsewhere     generation_ended as above, then as a join
  forgotten            node_forgotten: the instance bookkeeping of the node, then its record

A placement's own steps (accepted, its statuses, its end) are in `instances`, which owns them:
`Instances._accept` and `Instances._relay` say them in order.
"""

from __future__ import annotations

from .agents import Agents
from .cluster import FollowUps, Node
from .instances import Instances
from .store import Store


class Lifecycle(FollowUps):
    """The scheduler's follow-ups to each step of a node's life (see the module docstring)."""

    def __init__(self, store: Store, agents: Agents, instances: Instances) -> None:
        self._store = store
        self._agents = agents
        self._instances = instances

    def node_changed(self, node: Node) -> None:
        self._store.save_node(
            node.id, node.host, node.port, node.state, node.generation, node.last_seen_unix
        )

    def generation_ended(self, node: Node, generation: int, why: str) -> None:
        self._agents.generation_ended(node, generation, why)
        self._instances.generation_ended(node, generation, why)

    def node_forgotten(self, node_id: str) -> None:
        self._store.delete_node(node_id)
        self._instances.node_forgotten(node_id)

    def instances_reported(self, node: Node) -> None:
        self._instances.reconcile(node)

    def node_reported(self, node: Node) -> None:
        self._instances.node_reported(node)
