"""Placing an instance: the decision, then sequential attempts in priority order (SPEC §2.2).

A placement asks `placement.plan` for the feasible nodes in priority order, then tries them one
at a time: re-check the node still fits, reserve, call the Agent's Create, wait for its first
status. A refusal releases the reservation and moves on. An acceptance is recorded durably
before the Controller hears of it; then the relay (see `relays`) owns the instance's stream.
"""

from __future__ import annotations

import logging

import trio

from ..agents import InstanceStream, Refused, attempt
from ..cluster import Node
from ..errors import AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable
from ..model import NO_RESOURCES, InstanceStatus, NodeState, Workload
from ..placement import plan, reserve_if_fits
from .book import Follower, Instance
from .relays import Relays

log = logging.getLogger(__name__)


class Attempts(Relays):
    """schedule(): decide, attempt node after node, accept."""

    async def schedule(self, workload: Workload, follower: Follower) -> Instance:
        """Place `workload`; return the instance, whose statuses (the first included) go to
        `follower` until its relay ends (`instance.ended` says why)."""
        instance_id = workload.instance_id
        started = trio.current_time()
        self._check_new(instance_id)
        request = workload.resources or NO_RESOURCES
        decision = plan(self.cluster.table, request, self.strategy, self.max_attempts)
        if not decision.feasible_count:
            if not any(node.state is NodeState.READY for node in self.cluster.nodes.values()):
                self.placements["no_nodes"] += 1
                raise FailedPrecondition(
                    f"cannot place {instance_id}: no node is ready "
                    f"({len(self.cluster.nodes)} known)"
                )
            self.placements["exhausted"] += 1
            counts = ", ".join(f"{reason}: {count}" for reason, count in decision.counts.items())
            log.info("instance %s not placed: no feasible node (%s)", instance_id, counts)
            raise ResourceExhausted(
                f"no node can take {instance_id} ({_describe(request)}): {counts}"
            )
        self._placing.add(instance_id)
        refusals: list[str] = []
        outcome = "cancelled"
        try:
            for node_id in decision.attempt_order():
                placed = await self._attempt(node_id, workload, follower, refusals)
                if placed is not None:
                    outcome = "placed"
                    for observe in self.on_placed:
                        observe(trio.current_time() - started)
                    log.info(
                        "instance %s placed on node %s after %d attempt(s)",
                        instance_id,
                        placed.node.id,
                        len(refusals) + 1,
                    )
                    return placed
            outcome = "refused"
        finally:
            self._placing.discard(instance_id)
            self.placements[outcome] += 1
        log.warning(
            "instance %s not placed: every node refused (%s)", instance_id, "; ".join(refusals)
        )
        raise Unavailable(f"every feasible node refused {instance_id}: " + "; ".join(refusals))

    def _check_new(self, instance_id: str) -> None:
        if instance_id in self._placing:
            raise AlreadyExists(f"instance {instance_id} is being placed right now")
        reported_on = self._unknown_where.get(instance_id)
        if reported_on is not None:
            raise AlreadyExists(
                f"instance {instance_id} runs on node {reported_on.id}: its Agent reports it, but "
                "no placement of it is recorded (its Create reached the Agent just before a "
                "failover or restart); Destroy it first"
            )
        existing = self._instances.get(instance_id)
        if existing is not None and existing.running_on_ready_node:
            raise AlreadyExists(
                f"instance {instance_id} already runs on node {existing.node.id} "
                f"({existing.latest.code.name}); Destroy it first"
            )

    async def _attempt(
        self, node_id: str, workload: Workload, follower: Follower, refusals: list[str]
    ) -> Instance | None:
        """One attempt on one node; None (and a reason in `refusals`) if it did not accept."""
        node = self.cluster.nodes.get(node_id)
        if node is None:  # departed and forgotten since the decision
            refusals.append(f"{node_id}: left the cluster before its turn")
            return None
        session = node.session
        generation = node.generation
        request = workload.resources or NO_RESOURCES
        table = self.cluster.table
        if node.state is not NodeState.READY or session is None:
            refusals.append(f"{node_id}: {node.state.name.lower()} before its turn")
            return None
        instance_id = workload.instance_id
        reason = reserve_if_fits(table, node_id, instance_id, request)
        if reason is not None:  # another placement took the room since the plan was made
            refusals.append(f"{node_id}: no longer fits ({reason})")
            return None
        try:
            stream, first = await attempt(self.agents.link(node), workload, self.attempt_timeout)
        except Refused as refusal:
            self.attempts["refused"] += 1
            table.release(instance_id)
            refusals.append(f"{node_id}: {refusal}")
            log.info("instance %s: node %s refused: %s", instance_id, node_id, refusal)
            return None
        except BaseException:
            table.release(instance_id)
            raise
        self.attempts["accepted"] += 1
        if node.generation != generation or node.state is not NodeState.READY:
            stream.cancel()  # the node went away while it answered
            table.release(instance_id)
            refusals.append(f"{node_id}: left or was lost during the attempt")
            return None
        return await self._accept(workload, node, stream, first, follower, refusals)

    async def _accept(
        self,
        workload: Workload,
        node: Node,
        stream: InstanceStream,
        first: InstanceStatus,
        follower: Follower,
        refusals: list[str],
    ) -> Instance | None:
        """Record an acceptance, durably before the Controller hears of it; None (and a reason
        in `refusals`) if the node went away meanwhile. A placement the store cannot record is
        abandoned (the Agent's Create is cancelled) and the Controller gets UNAVAILABLE."""
        generation = node.generation
        if self.store is not None:
            try:
                await self.store.save_placement(workload, node.id, generation, first)
            except BaseException:
                self._abandon(workload.instance_id, stream)
                raise
            if node.generation != generation or node.state is not NodeState.READY:
                self._abandon(workload.instance_id, stream)
                refusals.append(f"{node.id}: left or was lost while the placement was recorded")
                return None
        previous = self._instances.pop(workload.instance_id, None)
        if previous is not None:
            self._forget(previous, "placed again")
        instance = Instance(workload, node, generation, first, follower=follower)
        self._instances[instance.id] = instance
        self._reserved_on.setdefault(node.id, set()).add(instance)
        if instance.id in node.listed:  # a report overtook the Agent's first status
            self._release(instance)
        node.placed.add(instance.id)
        self.cluster.count_instances(node)
        self._publish(instance, first)
        self._nursery.start_soon(self._relay, instance, stream, name=f"relay:{instance.id}")
        return instance

    def _abandon(self, instance_id: str, stream: InstanceStream) -> None:
        """An accepted placement that is not recorded after all: cancel the Agent's Create,
        release the reservation, and put back in the store what was there before."""
        stream.cancel()
        self.cluster.table.release(instance_id)
        previous = self._instances.get(instance_id)
        assert self.store is not None, "only a recorded placement is abandoned"
        if previous is None:
            self.store.forget_placement(instance_id)
        else:
            self.store.update_placement(
                previous.workload, previous.node.id, previous.generation, previous.latest
            )


def _describe(request) -> str:
    parts = [
        f"cpu {request.cpu} m" if request.cpu else "",
        f"memory {request.memory} MiB" if request.memory else "",
        f"disk {request.disk} MiB" if request.disk else "",
    ]
    return ", ".join(p for p in parts if p) or "no resources requested"
