"""Instances: placing them (sequential attempts in priority order), relaying their statuses,
stopping and destroying them (SPEC §2.2).

A placement asks `placement.plan` for the feasible nodes in priority order, then tries them one
at a time: re-check the node still fits, reserve, call the Agent's Create, wait for its first
status. A refusal releases the reservation and moves on. Once an Agent accepts, a relay task
owned by this service (not by the Controller's call) reads the Agent's stream until the
instance terminates (a TERMINATED status, or the Agent ends the stream OK), is destroyed, or its
node's generation ends; it publishes every status to the event log and forwards it to the
Controller's Schedule stream while that is still listening.

Reservations (what concurrent decisions must not promise twice) are held from the attempt
until the node's reports can be trusted to include the instance: a report that lists the
instance (also one that overtook the Agent's first status), or — for Agents that do not report
instances — `RESERVATION_REPORTS` status reports after acceptance. They are also released on
refusal, termination, Destroy and node loss.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .agents import Agents, Refused, attempt
from .cluster import Cluster, Node
from .cluster.throttle import TokenBucket
from .convert import instance_status_from_agent
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteError,
    ResourceExhausted,
    Unavailable,
)
from .events import EventLog
from .grpc_bridge import ServerStream
from .logs import RateLimited
from .model import (
    NO_RESOURCES,
    InstanceCode,
    InstanceEvent,
    InstanceStatus,
    NodeState,
    Signal,
    Workload,
)
from .placement import plan, reserve_if_fits
from .retention import note_recent
from .store import Store

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
FINISHED_RETAINED = 10_000  # finished instances remembered until destroyed; older are forgotten
TERMINATED = InstanceCode.TERMINATED
ENDED_OK = ("terminated", "destroyed")  # relay endings after which Schedule ends with OK
ENDED_BY_AGENT = "ended by the Agent"  # message of the TERMINATED status the scheduler records
# when an Agent ends an instance's stream OK without sending one


@dataclass(eq=False)
class Instance:
    """A placed instance: where it runs, its latest status, and its relay."""

    workload: Workload
    node: Node
    generation: int  # the node generation it was placed in
    latest: InstanceStatus
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    follower: trio.MemorySendChannel | None = None  # the Controller's Schedule stream
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


class Instances:
    """Every placed instance and the service's relay tasks. Call `run()` first."""

    def __init__(self, cluster: Cluster, events: EventLog, agents: Agents, *,
                 strategy: str, attempt_timeout: float, max_attempts: int,
                 store: Store | None = None) -> None:
        self.cluster = cluster
        self.events = events
        self.agents = agents
        self.strategy = strategy
        self.attempt_timeout = attempt_timeout
        self.max_attempts = max_attempts
        self.store = store
        self._instances: dict[str, Instance] = {}
        self._unknown_reported: dict[str, set[str]] = {}  # node id -> announced, still listed
        self._unknown_budget: dict[str, TokenBucket] = {}  # node id -> announcements left
        self._unknown_where: dict[str, Node] = {}  # announced instance id -> the node listing it
        self._node_log = RateLimited(log, LOG_INTERVAL)  # lines an Agent can provoke at will
        self._forgotten_on: dict[str, dict[str, None]] = {}  # node id -> ids forgotten there
        self._lists_instances: set[str] = set()  # nodes whose Agent listed instances (generation)
        self._placing: set[str] = set()  # instance ids with an attempt in flight
        self._finished: dict[str, None] = {}  # finished instance ids, oldest first
        self._reserved_on: dict[str, set[Instance]] = {}  # node id -> instances holding a reservation
        self._nursery: trio.Nursery | None = None
        self.placements: dict[str, int] = dict.fromkeys(PLACEMENT_OUTCOMES, 0)  # for /metrics
        self.attempts: dict[str, int] = {"accepted": 0, "refused": 0}
        self.on_placed: list[Callable[[float], None]] = []  # seconds from request to acceptance
        cluster.on_generation_end.append(self._generation_ended)
        cluster.on_node_forgotten.append(self._node_forgotten)
        cluster.on_report.append(self._node_reported)
        cluster.on_instances_reported.append(self._reconcile)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def statuses(self) -> tuple[InstanceStatus, ...]:
        return tuple(instance.latest for instance in self._instances.values())

    # -- placing ---------------------------------------------------------------------------

    async def schedule(self, workload: Workload) -> tuple[Instance, trio.MemoryReceiveChannel]:
        """Place `workload`; return the instance and a channel of its statuses (first included).

        The channel closes when the relay ends; `instance.ended` says why.
        """
        instance_id = workload.instance_id
        started = trio.current_time()
        self._check_new(instance_id)
        request = workload.resources or NO_RESOURCES
        decision = plan(self.cluster.table, request, self.strategy, self.max_attempts)
        if not decision.feasible_count:
            if not any(node.state is NodeState.READY for node in self.cluster.nodes.values()):
                self.placements["no_nodes"] += 1
                raise FailedPrecondition(f"cannot place {instance_id}: no node is ready "
                                         f"({len(self.cluster.nodes)} known)")
            self.placements["exhausted"] += 1
            counts = ", ".join(f"{reason}: {count}" for reason, count in decision.counts.items())
            log.info("instance %s not placed: no feasible node (%s)", instance_id, counts)
            raise ResourceExhausted(f"no node can take {instance_id} ({_describe(request)}): "
                                    f"{counts}")
        self._placing.add(instance_id)
        refusals: list[str] = []
        outcome = "cancelled"
        try:
            for node_id in decision.attempt_order():
                placed = await self._attempt(node_id, workload, refusals)
                if placed is not None:
                    outcome = "placed"
                    for observe in self.on_placed:
                        observe(trio.current_time() - started)
                    log.info("instance %s placed on node %s after %d attempt(s)", instance_id,
                             placed[0].node.id, len(refusals) + 1)
                    return placed
            outcome = "refused"
        finally:
            self._placing.discard(instance_id)
            self.placements[outcome] += 1
        log.warning("instance %s not placed: every node refused (%s)", instance_id, "; ".join(refusals))
        raise Unavailable(f"every feasible node refused {instance_id}: " + "; ".join(refusals))

    def _check_new(self, instance_id: str) -> None:
        if instance_id in self._placing:
            raise AlreadyExists(f"instance {instance_id} is being placed right now")
        reported_on = self._unknown_where.get(instance_id)
        if reported_on is not None:
            raise AlreadyExists(
                f"instance {instance_id} runs on node {reported_on.id}: its Agent reports it, but "
                "no placement of it is recorded (its Create reached the Agent just before a "
                "failover or restart); Destroy it first")
        existing = self._instances.get(instance_id)
        if existing is not None and existing.running_on_ready_node:
            raise AlreadyExists(f"instance {instance_id} already runs on node {existing.node.id} "
                                f"({existing.latest.code.name}); Destroy it first")

    async def _attempt(self, node_id: str, workload: Workload,
                       refusals: list[str]) -> tuple[Instance, trio.MemoryReceiveChannel] | None:
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
        return await self._accept(workload, node, stream, first, refusals)

    async def _accept(self, workload: Workload, node: Node, stream: ServerStream,
                      first: InstanceStatus, refusals: list[str],
                      ) -> tuple[Instance, trio.MemoryReceiveChannel] | None:
        """Record an acceptance, durably before the Controller hears of it; None (and a reason
        in `refusals`) if the node went away meanwhile. A placement the store cannot record is
        abandoned (the Agent's Create is cancelled) and the Controller gets UNAVAILABLE."""
        assert self._nursery is not None, "Instances.run() is not running"
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
        instance = Instance(workload, node, generation, first)
        send, receive = trio.open_memory_channel(math.inf)  # a few statuses per instance
        instance.follower = send
        self._instances[instance.id] = instance
        self._reserved_on.setdefault(node.id, set()).add(instance)
        if instance.id in node.listed:  # a report overtook the Agent's first status
            self._release(instance)
        node.placed.add(instance.id)
        self.cluster.count_instances(node)
        self._publish(instance, first)
        self._nursery.start_soon(self._relay, instance, stream, name=f"relay:{instance.id}")
        return instance, receive

    def _abandon(self, instance_id: str, stream: ServerStream) -> None:
        """An accepted placement that is not recorded after all: cancel the Agent's Create,
        release the reservation, and put back in the store what was there before."""
        stream.cancel()
        self.cluster.table.release(instance_id)
        previous = self._instances.get(instance_id)
        if previous is None:
            self.store.forget_placement(instance_id)
        else:
            self.store.update_placement(previous.workload, previous.node.id, previous.generation,
                                        previous.latest)

    # -- relaying --------------------------------------------------------------------------

    async def _relay(self, instance: Instance, stream: ServerStream) -> None:
        """Read the Agent's stream until TERMINATED or its end; publish and forward every status."""
        try:
            with instance.scope:
                try:
                    while instance.latest.code is not TERMINATED:
                        wire = await stream.receive()
                        status = instance_status_from_agent(wire, instance.id, instance.node.id)
                        self._update(instance, status)
                    instance.ended = "terminated"
                except trio.EndOfChannel:
                    self._ended_by_agent(instance)
                except (RemoteError, InvalidArgument) as err:
                    instance.ended = f"the instance's stream from {instance.node.id} failed: {err}"
        finally:
            stream.cancel()
        if instance.ended == "destroyed" and instance.latest.code is not TERMINATED:
            self._publish(instance, InstanceStatus(instance.id, TERMINATED, "destroyed",
                                                   node_id=instance.node.id))
        if instance.ended not in ENDED_OK:
            # Ended with its node's generation (left, lost, rejoined elsewhere): the node's
            # own line said so and named its instances; a leave is planned, not a fault.
            level = logging.WARNING if instance.node_current else logging.INFO
            log.log(level, "instance %s: relay ended: %s", instance.id, instance.ended)
        self._release(instance)
        if instance.latest.code is TERMINATED:
            self._unplace(instance)
            self._retain_finished(instance)
        if instance.follower is not None:
            instance.follower.close()

    def _ended_by_agent(self, instance: Instance) -> None:
        """The Agent ended the instance's stream OK without a TERMINATED status: the Orka node
        agent does so once it has cleaned the instance up, so it is TERMINATED (SPEC §2.2
        step 5). A stream that ends with an error is not this: its instance's fate is unknown.
        A relay already being ended (Destroy, the node's generation ending) keeps its reason."""
        if instance.ended:
            return
        log.info("instance %s terminated: the Agent on %s ended its stream", instance.id,
                 instance.node.id)
        self._update(instance, InstanceStatus(instance.id, TERMINATED, ENDED_BY_AGENT,
                                              node_id=instance.node.id))
        instance.ended = "terminated"

    def _update(self, instance: Instance, status: InstanceStatus) -> None:
        """A new status of a live instance: remember it durably, then tell everyone."""
        instance.latest = status
        if self.store is not None and self._instances.get(instance.id) is instance:
            self.store.update_placement(instance.workload, instance.node.id, instance.generation,
                                        status)
        self._publish(instance, status)

    def _publish(self, instance: Instance, status: InstanceStatus) -> None:
        self.events.publish(InstanceEvent(status))
        follower = instance.follower
        if follower is not None:
            try:
                follower.send_nowait(status)
            except trio.BrokenResourceError:  # the Controller stopped listening
                instance.follower = None

    def _end_relay(self, instance: Instance, why: str) -> None:
        if not instance.ended:
            instance.ended = why
        instance.scope.cancel()

    # -- reservations ----------------------------------------------------------------------

    def _release(self, instance: Instance) -> None:
        if instance.reserved:
            instance.reserved = False
            self.cluster.table.release(instance.id)
            held = self._reserved_on.get(instance.node.id)
            if held is not None:
                held.discard(instance)
                if not held:
                    del self._reserved_on[instance.node.id]

    def _node_reported(self, node: Node) -> None:
        """A status arrived: release reservations the report now accounts for. Hot path."""
        held = self._reserved_on.get(node.id)
        if not held:
            return
        listed = node.listed  # its free amounts account for these
        for instance in list(held):
            instance.reports_after += 1
            if instance.id in listed or (not listed and instance.reports_after >= RESERVATION_REPORTS):
                self._release(instance)

    # -- after a restart: restored instances and the Agents' reports ---------------------------

    def restore(self, workload: Workload, node: Node, generation: int,
                latest: InstanceStatus) -> None:
        """Take back a placement of a previous run. Its Create stream died with that run, so
        the node's `instances` reports tell its fate from now on (see `_reconcile`)."""
        instance = Instance(workload, node, generation, latest, reserved=False, relayed=False)
        self._instances[instance.id] = instance
        if latest.code is TERMINATED:
            self._finished[instance.id] = None
        elif generation == node.generation:
            node.placed.add(instance.id)
            self.cluster.count_instances(node)

    def _reconcile(self, node: Node) -> None:
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
            if instance is not None and instance.node is not node and instance.node_current \
                    and instance.latest.code is not TERMINATED:
                claimed.append(instance_id)  # another live node's: not this Agent's to tell
            elif instance is None or instance.node is not node:
                # One we just forgot here (a report sent before the Agent got the KILL) or a
                # finished one is no news, and one whose Create is in flight is ours: the
                # report overtook the Agent's first status.
                if code is not TERMINATED and instance_id not in self._placing \
                        and instance_id not in forgotten:
                    self._announce_unknown(node, instance_id, code)
            elif not instance.relayed and instance.latest.code is not code \
                    and instance.latest.code is not TERMINATED:
                self._update(instance, InstanceStatus(instance_id, code, "reported by the Agent",
                                                      node_id=node.id))
                if code is TERMINATED:
                    self._unplace(instance)
                    self._retain_finished(instance)
        if claimed:
            self._log_claims(node, claimed)
        announced = self._unknown_reported.get(node.id, ())
        node.running = frozenset(instance_id for instance_id in node.running
                                 if instance_id in announced or self._placed_on(instance_id, node))
        for instance_id in list(node.placed):
            instance = self._instances.get(instance_id)
            if instance is not None and not instance.relayed and instance_id not in reported \
                    and instance.latest.code is not TERMINATED:
                log.warning("instance %s vanished: node %s no longer reports it", instance_id,
                            node.id)
                self._update(instance, InstanceStatus(
                    instance_id, TERMINATED, "vanished: the Agent no longer reports it",
                    node_id=node.id))
                self._unplace(instance)
                self._retain_finished(instance)

    def _placed_on(self, instance_id: str, node: Node) -> bool:
        instance = self._instances.get(instance_id)
        return instance is not None and instance.node is node

    def _log_claims(self, node: Node, claimed: list[str]) -> None:
        """A report may speak only for its own node's instances (or unknown ones): instances
        placed on another live node are neither announced from it nor counted on it."""
        first = self._instances[claimed[0]]
        self._node_log.warning(("claims", node.id), "node %s reports instance %s, which runs on "
                               "node %s: ignored (%d such instances in this report)", node.id,
                               first.id, first.node.id, len(claimed))

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
            budget = self._unknown_budget[node.id] = TokenBucket(UNKNOWN_RATE,
                                                                 UNKNOWN_ANNOUNCED, now)
        if not budget.take(now):
            self._node_log.warning(("flood", node.id), "node %s reports more instances nobody "
                                   "placed there than are announced (%d at once, then %g a "
                                   "second): not announcing %s", node.id, UNKNOWN_ANNOUNCED,
                                   UNKNOWN_RATE, instance_id)
            return
        announced.add(instance_id)
        self._unknown_where[instance_id] = node
        self._node_log.warning(("unknown", node.id), "node %s reports instance %s, which this "
                               "scheduler did not place there (%s)", node.id, instance_id,
                               code.name)
        self.events.publish(InstanceEvent(InstanceStatus(
            instance_id, code, "reported by the Agent; not placed by this scheduler",
            node_id=node.id)))

    def _unknown_gone(self, node: Node, reported: dict[str, InstanceCode]) -> None:
        """Announced instances the Agent no longer lists end, for the Controller, TERMINATED."""
        announced = self._unknown_reported.get(node.id)
        if not announced:
            return
        for instance_id in sorted(announced - reported.keys()):
            announced.discard(instance_id)
            if self._unknown_where.get(instance_id) is node:
                del self._unknown_where[instance_id]
            log.info("node %s no longer reports instance %s (never placed there)", node.id,
                     instance_id)
            self.events.publish(InstanceEvent(InstanceStatus(
                instance_id, TERMINATED, "no longer reported by the Agent", node_id=node.id)))

    # -- node generations ending -------------------------------------------------------------

    def _generation_ended(self, node: Node, generation: int, why: str) -> None:
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

    def _node_forgotten(self, node_id: str) -> None:
        self._unknown_budget.pop(node_id, None)

    # -- stop / destroy --------------------------------------------------------------------

    async def stop(self, instance_id: str) -> None:
        if not await self._signal_reported(instance_id, Signal.STOP):
            await self._signal(instance_id, Signal.STOP)
        log.info("instance %s: STOP sent", instance_id)

    async def destroy(self, instance_id: str) -> None:
        """KILL the instance and forget it. An Agent that answers NOT_FOUND no longer runs it,
        which is what Destroy wants: the placement is forgotten all the same."""
        if await self._signal_reported(instance_id, Signal.KILL):
            log.info("instance %s: KILL sent to node %s, whose Agent reports it (no placement "
                     "of it was recorded)", instance_id, self._unknown_where[instance_id].id)
            return
        try:
            instance = await self._signal(instance_id, Signal.KILL)
        except RemoteError as err:
            instance = self._instances.get(instance_id)
            if err.status != "NOT_FOUND" or instance is None:
                raise
            log.info("instance %s: the Agent on %s does not know it (%s); forgetting it",
                     instance_id, instance.node.id, err.message)
        self._forget(instance, "destroyed")
        if self.store is not None:  # durable before Destroy is acknowledged
            await self.store.commit_durably()
        log.info("instance %s destroyed on node %s", instance_id, instance.node.id)

    async def _signal_reported(self, instance_id: str, signal: Signal) -> bool:
        """Signal an instance that an Agent reports but no placement records (announced);
        False if there is none. Its Agent's next reports tell the Controller how it ends."""
        node = self._unknown_where.get(instance_id)
        if node is None or instance_id in self._instances:
            return False
        try:
            await self.agents.link(node).signal(instance_id, signal, self.attempt_timeout)
        except RemoteError as err:
            if signal is not Signal.KILL or err.status != "NOT_FOUND":
                raise  # for a KILL, an Agent that does not know it no longer runs it
        return True

    async def _signal(self, instance_id: str, signal: Signal) -> Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise NotFound(f"instance {instance_id} is not known to this scheduler")
        node = instance.node
        if not instance.node_current:
            state = node.state.name if node.state is not NodeState.READY else \
                "rejoined from another address"
            raise Unavailable(f"instance {instance_id} was on node {node.id}, which is {state}: "
                              "its Agent cannot be signalled")
        await self.agents.link(node).signal(instance_id, signal, self.attempt_timeout)
        return instance

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
        if self._instances.get(instance.id) in (instance, None) and \
                instance.generation == instance.node.generation:
            instance.node.placed.discard(instance.id)
            self.cluster.count_instances(instance.node)

    def _retain_finished(self, instance: Instance) -> None:
        """Remember the last FINISHED_RETAINED finished instances (terminated, or on a node that
        left or was lost) for Stop/Destroy answers and snapshots; forget older ones, so a
        Controller that never destroys them cannot grow the scheduler without bound."""
        for old_id in note_recent(self._finished, instance.id, FINISHED_RETAINED):
            old = self._instances.get(old_id)
            if old is not None and not old.running_on_ready_node:
                del self._instances[old_id]
                if self.store is not None:
                    self.store.forget_placement(old_id)


def _describe(request) -> str:
    parts = [f"cpu {request.cpu} m" if request.cpu else "",
             f"memory {request.memory} MiB" if request.memory else "",
             f"disk {request.disk} MiB" if request.disk else ""]
    return ", ".join(p for p in parts if p) or "no resources requested"
