"""What the nodes' reports say about instances: reservations they account for, placements of a
previous run (restored, relayed by nobody), instances nobody placed (announced, within a flood
guard), and the instances of a node generation that ended.

Reservations (what concurrent decisions must not promise twice) are held from the attempt
until the node's reports can be trusted to include the instance: a report that lists the
instance (also one that overtook the Agent's first status), or — for Agents that do not report
instances — `RESERVATION_REPORTS` status reports after acceptance. They are also released on
refusal, termination, Destroy and node loss.
"""

from __future__ import annotations

import logging

import trio

from ..cluster import Node
from ..model import InstanceCode, InstanceEvent, InstanceStatus, Workload
from ..throttle import TokenBucket
from .book import (
    RESERVATION_REPORTS,
    TERMINATED,
    UNKNOWN_ANNOUNCED,
    UNKNOWN_RATE,
    Book,
    Instance,
)

log = logging.getLogger(__name__)


class Reports(Book):
    """The nodes' reports and generations, as they concern instances."""

    def node_reported(self, node: Node) -> None:
        """A status arrived: release reservations the report now accounts for. Hot path."""
        held = self._reserved_on.get(node.id)
        if not held:
            return
        listed = node.listed  # its free amounts account for these
        for instance in list(held):
            instance.reports_after += 1
            if instance.id in listed or (
                not listed and instance.reports_after >= RESERVATION_REPORTS
            ):
                self._release(instance)

    def restore(
        self, workload: Workload, node: Node, generation: int, latest: InstanceStatus
    ) -> None:
        """Take back a placement of a previous run. Its Create stream died with that run, so
        the node's `instances` reports tell its fate from now on (see `reconcile`)."""
        instance = Instance(workload, node, generation, latest, reserved=False, relayed=False)
        self._instances[instance.id] = instance
        if latest.code is TERMINATED:
            self._finished[instance.id] = None
        elif generation == node.generation:
            node.placed.add(instance.id)
            self.cluster.count_instances(node)

    def reconcile(self, node: Node) -> None:
        """The node's Agent reported a changed instance list: update instances nobody relays,
        mark vanished ones TERMINATED, announce instances this scheduler never placed there.
        The node counts (`running`) only the instances it may speak for: its own, and the
        unknown ones announced; not another live node's, nor those the flood guard held back."""
        reports = node.reported
        if not reports:
            if node.id not in self._lists_instances:
                return  # an Agent that never listed instances tells nothing (old Agents never do)
        else:
            self._lists_instances.add(node.id)
        reported = node.listed
        forgotten = self._forgotten_on.get(node.id, {})
        for instance_id in [i for i in forgotten if i not in reported]:
            del forgotten[instance_id]  # the Agent caught up: a later listing would be news
        self._unknown_gone(node, reported)
        claimed = []
        for instance_id, code in reported.items():
            instance = self._instances.get(instance_id)
            if (
                instance is not None
                and instance.node is not node
                and instance.node_current
                and instance.latest.code is not TERMINATED
            ):
                claimed.append(instance_id)  # another live node's: not this Agent's to tell
            elif instance is None or instance.node is not node:
                # One we just forgot here (a report sent before the Agent got the KILL) or a
                # finished one is no news, and one whose Create is in flight is ours: the
                # report overtook the Agent's first status.
                if (
                    code is not TERMINATED
                    and instance_id not in self._placing
                    and instance_id not in forgotten
                ):
                    self._announce_unknown(node, instance_id, code)
            elif (
                not instance.relayed
                and instance.latest.code is not code
                and instance.latest.code is not TERMINATED
            ):
                self._update(
                    instance,
                    InstanceStatus(instance_id, code, "reported by the Agent", node_id=node.id),
                )
                if code is TERMINATED:
                    self._unplace(instance)
                    self._retain_finished(instance)
        if claimed:
            self._log_claims(node, claimed)
        announced = self._unknown_reported.get(node.id, ())
        node.set_running(
            instance_id
            for instance_id in node.running
            if instance_id in announced or self._placed_on(instance_id, node)
        )
        for instance_id in list(node.placed):
            instance = self._instances.get(instance_id)
            if (
                instance is not None
                and not instance.relayed
                and instance_id not in reported
                and instance.latest.code is not TERMINATED
            ):
                log.warning(
                    "instance %s vanished: node %s no longer reports it", instance_id, node.id
                )
                self._update(
                    instance,
                    InstanceStatus(
                        instance_id,
                        TERMINATED,
                        "vanished: the Agent no longer reports it",
                        node_id=node.id,
                    ),
                )
                self._unplace(instance)
                self._retain_finished(instance)

    def _placed_on(self, instance_id: str, node: Node) -> bool:
        instance = self._instances.get(instance_id)
        return instance is not None and instance.node is node

    def _log_claims(self, node: Node, claimed: list[str]) -> None:
        """A report may speak only for its own node's instances (or unknown ones): instances
        placed on another live node are neither announced from it nor counted on it."""
        first = self._instances[claimed[0]]
        self._node_log.warning(
            ("claims", node.id),
            "node %s reports instance %s, which runs on "
            "node %s: ignored (%d such instances in this report)",
            node.id,
            first.id,
            first.node.id,
            len(claimed),
        )

    def _announce_unknown(self, node: Node, instance_id: str, code: InstanceCode) -> None:
        """Tell the Controller once about an instance an Agent runs that nobody placed there;
        at most UNKNOWN_ANNOUNCED at once per node id, then UNKNOWN_RATE a second, however
        often it rejoins, so an Agent cannot flood the event log, the store or the log."""
        announced = self._unknown_reported.setdefault(node.id, set())
        if instance_id in announced:
            return
        budget = self._unknown_budget.get(node.id)
        now = trio.current_time()
        if budget is None:
            budget = self._unknown_budget[node.id] = TokenBucket(
                UNKNOWN_RATE, UNKNOWN_ANNOUNCED, now
            )
        if not budget.take(now):
            self._node_log.warning(
                ("flood", node.id),
                "node %s reports more instances nobody "
                "placed there than are announced (%d at once, then %g a "
                "second): not announcing %s",
                node.id,
                UNKNOWN_ANNOUNCED,
                UNKNOWN_RATE,
                instance_id,
            )
            return
        announced.add(instance_id)
        self._unknown_where[instance_id] = node
        self._node_log.warning(
            ("unknown", node.id),
            "node %s reports instance %s, which this scheduler did not place there (%s)",
            node.id,
            instance_id,
            code.name,
        )
        self.events.publish(
            InstanceEvent(
                InstanceStatus(
                    instance_id,
                    code,
                    "reported by the Agent; not placed by this scheduler",
                    node_id=node.id,
                )
            )
        )

    def _unknown_gone(self, node: Node, reported: dict[str, InstanceCode]) -> None:
        """Announced instances the Agent no longer lists end, for the Controller, TERMINATED."""
        announced = self._unknown_reported.get(node.id)
        if not announced:
            return
        for instance_id in sorted(announced - reported.keys()):
            announced.discard(instance_id)
            if self._unknown_where.get(instance_id) is node:
                del self._unknown_where[instance_id]
            log.info(
                "node %s no longer reports instance %s (never placed there)", node.id, instance_id
            )
            self.events.publish(
                InstanceEvent(
                    InstanceStatus(
                        instance_id, TERMINATED, "no longer reported by the Agent", node_id=node.id
                    )
                )
            )

    def generation_ended(self, node: Node, generation: int, why: str) -> None:
        for instance_id in self._unknown_reported.pop(node.id, ()):
            if self._unknown_where.get(instance_id) is node:
                del self._unknown_where[instance_id]
        self._forgotten_on.pop(node.id, None)
        self._lists_instances.discard(node.id)
        for instance_id in list(node.placed):
            instance = self._instances.get(instance_id)
            if instance is not None and instance.generation == generation:
                self._end_relay(instance, f"node {node.id} {why}")
                self._release(instance)
                self._retain_finished(instance)  # remembered (UNAVAILABLE), but not forever

    def node_forgotten(self, node_id: str) -> None:
        self._unknown_budget.pop(node_id, None)
