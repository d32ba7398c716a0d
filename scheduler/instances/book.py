"""The book of placed instances: what each of the service's jobs reads and changes.

`Book` holds the instances, their reservations and the bookkeeping every job shares (publish a
status, release a reservation, forget or retire an instance); the jobs themselves are in
`attempts`, `relays`, `reports` and `signals`, and `Instances` (in `__init__`) is all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..agents import Agents
from ..cluster import Cluster, Node
from ..config import DEFAULT_FINISHED_RETAINED
from ..events import EventLog
from ..logs import RateLimited
from ..model import InstanceCode, InstanceEvent, InstanceStatus, NodeState, Strategy, Workload
from ..retention import note_recent
from ..store import Store
from ..throttle import TokenBucket

log = logging.getLogger(__name__)

PLACEMENT_OUTCOMES = ("placed", "no_nodes", "exhausted", "refused", "cancelled")
RESERVATION_REPORTS = 2  # reports after acceptance before an instance-less report is trusted
# Flood guard: instances nobody placed that one node (its id, across generations) may announce,
# each an event the store keeps. A restart's worth at once, then what churn outside the
# scheduler could plausibly produce; an Agent inventing ids gets no further.
UNKNOWN_ANNOUNCED = 1_000  # announcements at once
UNKNOWN_RATE = 1.0  # announcements per second regained
LOG_INTERVAL = 10.0  # s between two WARNING lines of the same kind about the same node
FORGOTTEN_REMEMBERED = 1_000  # per node: forgotten ids (destroyed, placed again) its Agent may
# still list for a report or two; such a listing is no news
TERMINATED = InstanceCode.TERMINATED
ENDED_OK = ("terminated", "destroyed")  # relay endings after which Schedule ends with OK
ENDED_BY_AGENT = "ended by the Agent"  # message of the TERMINATED status the scheduler records
# when an Agent ends an instance's stream OK without sending one


class Follower(Protocol):
    """Who follows an instance's statuses as its relay gets them: the Controller's Schedule
    call. Called synchronously by the relay, so no task wakes per status."""

    def status(self, status: InstanceStatus) -> bool:
        """Take one status without waiting; False: no more (gone, or too far behind)."""
        ...

    def end(self) -> None:
        """The relay ended; `Instance.ended` says why."""
        ...


@dataclass(eq=False)
class Instance:
    """A placed instance: where it runs, its latest status, and its relay."""

    workload: Workload
    node: Node
    generation: int  # the node generation it was placed in
    latest: InstanceStatus
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    follower: Follower | None = None  # the Controller's Schedule call
    ended: str = ""  # why the relay ended; "" while it runs
    reports_after: int = 0  # node reports since acceptance, while the reservation is held
    reserved: bool = True
    relayed: bool = True  # False for instances restored after a restart: reports tell their fate

    @property
    def id(self) -> str:
        return self.workload.instance_id

    @property
    def running_on_ready_node(self) -> bool:
        """Still ours to run: its relay is live (or it is relayed by nobody yet) on a current node.

        An instance whose Agent stream broke before TERMINATED has an unknown fate; the
        Controller was told so (UNAVAILABLE) and may place it again.
        """
        return not self.ended and self.latest.code is not TERMINATED and self.node_current

    @property
    def node_current(self) -> bool:
        """Its node is READY in the generation the instance was placed in."""
        return self.node.state is NodeState.READY and self.node.generation == self.generation


class Book:
    """The state the jobs share; its relay tasks run in `nursery` (see open_instances)."""

    def __init__(
        self,
        cluster: Cluster,
        events: EventLog,
        agents: Agents,
        nursery: trio.Nursery,
        *,
        strategy: Strategy,
        attempt_timeout: float,
        max_attempts: int,
        store: Store | None = None,
        finished_retained: int = DEFAULT_FINISHED_RETAINED,
    ) -> None:
        self.cluster = cluster
        self.events = events
        self.agents = agents
        self.strategy = strategy
        self.attempt_timeout = attempt_timeout
        self.max_attempts = max_attempts
        self.store = store
        self.finished_retained = finished_retained
        self._instances: dict[str, Instance] = {}
        self._unknown_reported: dict[str, set[str]] = {}  # node id -> announced, still listed
        self._unknown_budget: dict[str, TokenBucket] = {}  # node id -> announcements left
        self._unknown_where: dict[str, Node] = {}  # announced instance id -> the node listing it
        self._node_log = RateLimited(log, LOG_INTERVAL)  # lines an Agent can provoke at will
        self._forgotten_on: dict[str, dict[str, None]] = {}  # node id -> ids forgotten there
        self._lists_instances: set[str] = set()  # nodes whose Agent listed instances (generation)
        self._placing: set[str] = set()  # instance ids with an attempt in flight
        self._finished: dict[str, None] = {}  # finished instance ids, oldest first
        # node id -> instances holding a reservation
        self._reserved_on: dict[str, set[Instance]] = {}
        self._nursery = nursery
        self.placements: dict[str, int] = dict.fromkeys(PLACEMENT_OUTCOMES, 0)  # for /metrics
        self.attempts: dict[str, int] = {"accepted": 0, "refused": 0}
        self.on_placed: list[Callable[[float], None]] = []  # seconds from request to acceptance

    def statuses(self) -> tuple[InstanceStatus, ...]:
        return tuple(instance.latest for instance in self._instances.values())

    def _update(self, instance: Instance, status: InstanceStatus) -> None:
        """A new status of a live instance: remember it durably, then tell everyone."""
        instance.latest = status
        if self.store is not None and self._instances.get(instance.id) is instance:
            self.store.update_placement(
                instance.workload, instance.node.id, instance.generation, status
            )
        self._publish(instance, status)

    def _publish(self, instance: Instance, status: InstanceStatus) -> None:
        self.events.publish(InstanceEvent(status))
        follower = instance.follower
        if follower is not None and not follower.status(status):
            instance.follower = None  # the Controller stopped listening

    def _end_relay(self, instance: Instance, why: str) -> None:
        if not instance.ended:
            instance.ended = why
        instance.scope.cancel()

    def _release(self, instance: Instance) -> None:
        if instance.reserved:
            instance.reserved = False
            self.cluster.table.release(instance.id)
            held = self._reserved_on.get(instance.node.id)
            if held is not None:
                held.discard(instance)
                if not held:
                    del self._reserved_on[instance.node.id]

    def _forget(self, instance: Instance, why: str) -> None:
        if self._instances.get(instance.id) is instance:
            del self._instances[instance.id]
            self._finished.pop(instance.id, None)
            if self.store is not None:
                self.store.forget_placement(instance.id)
        self._unplace(instance)
        self._release(instance)
        self._end_relay(instance, why)
        if instance.node_current:  # its Agent may list it in a report or two still
            recent = self._forgotten_on.setdefault(instance.node.id, {})
            for _ in note_recent(recent, instance.id, FORGOTTEN_REMEMBERED):
                pass  # the oldest are simply no longer remembered

    def _unplace(self, instance: Instance) -> None:
        """No longer count the instance on its node (unless the id was placed there again)."""
        if (
            self._instances.get(instance.id) in (instance, None)
            and instance.generation == instance.node.generation
        ):
            instance.node.placed.discard(instance.id)
            self.cluster.count_instances(instance.node)

    def _retain_finished(self, instance: Instance) -> None:
        """Remember the last `finished_retained` finished instances (terminated, or on a node that
        left or was lost) for Stop/Destroy answers and snapshots; forget older ones, so a
        Controller that never destroys them cannot grow the scheduler without bound."""
        for old_id in note_recent(self._finished, instance.id, self.finished_retained):
            old = self._instances.get(old_id)
            if old is not None and not old.running_on_ready_node:
                del self._instances[old_id]
                if self.store is not None:
                    self.store.forget_placement(old_id)
