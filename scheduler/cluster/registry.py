"""The node registry: joins, status streams, leaves and liveness (SPEC §2.1).

A node's *session* lasts from one JoinCluster to its leave, its loss, or its next join. A node's
*generation* lasts longer: from a join until the node is LEFT or LOST, or rejoins from another
address. A rejoin from the same address (the Agent's status stream broke, the Agent rejoins, as
it does after every stream failure) is a new session of the same generation: the instances
it runs and the scheduler's channel to it carry over.

Liveness: every valid status moves the session's deadline; when it passes, the node is LOST. No
polling: the deadline *is* the liveness state. One task (`_liveness`) keeps every session's
deadline in a heap and sleeps until the earliest. A status only writes the new deadline into
the session (a float); the heap picks it up when the old deadline comes due, so the
per-message hot path pays no heap push (measured: 7 % of ingest CPU), and a node that keeps
reporting is re-pushed once per `node_timeout`. (A trio task per session did the same with its
cancel scope, at 3.5 KiB per node.) Everything else here is synchronous, so a status message
costs a few attribute writes and one event.

What must follow each step outside the registry (persistence, the node's instances, the channels
to its Agent) is not hooked in here: the registry calls its `FollowUps` at each step, and
`scheduler.lifecycle` says, in one place and in order, what they are.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..config import DEFAULT_DEPARTED_RETAINED
from ..errors import AlreadyExists, NotFound
from ..events import EventLog
from ..model import (
    InstanceCode,
    InstanceReport,
    NodeEvent,
    NodeEventKind,
    NodeMetrics,
    NodeState,
    NodeView,
)
from ..placement import NodeTable
from ..retention import note_recent
from ..throttle import TokenBucket

log = logging.getLogger(__name__)

STALE_DEADLINES = 1024  # ended sessions' entries the liveness heap may hold beyond 2 x nodes
SWEEP_STEP = 0.005  # s between steps that end the status streams of lost nodes
STREAMS_PER_SWEEP_STEP = 8  # streams ended per step: ending one costs grpclib ~0.25 ms


@dataclass(eq=False)
class StatusStream:
    """The one status stream in charge of a session; cancelling `scope` ends its handler."""

    scope: trio.CancelScope
    ended_because: str = ""


@dataclass(eq=False, slots=True)
class Session:
    """One join of a node; over once it is no longer its node's `session`."""

    number: int
    host: str  # the peer IP of the JoinCluster call
    port: int  # the Agent's own gRPC server (node_agent.WorkloadService)
    deadline: float  # trio time by which a valid status must arrive, else the node is LOST
    limiter: TokenBucket  # the node's: a rejoin does not renew its burst
    stream: StatusStream | None = None


NOTHING_RUNNING: frozenset[str] = frozenset()  # shared: even empty, a frozenset is 216 bytes


@dataclass(eq=False, slots=True)
class Node:
    """A node the scheduler has seen, with its latest good status."""

    id: str
    host: str  # the peer IP of its latest JoinCluster
    port: int  # the port its Agent declared
    state: NodeState = NodeState.READY
    metrics: NodeMetrics | None = None
    last_seen_unix: float = 0.0
    session: Session | None = None
    generation: int = 0  # bumps when the node is LEFT/LOST or rejoins from another address
    placed: set[str] = field(default_factory=set)  # instance ids placed in this generation
    ids: tuple[str, ...] = ()  # instance_ids(), kept by Cluster.count_instances (hot path)
    running: frozenset[str] = NOTHING_RUNNING  # reported, not TERMINATED, in the latest status
    reported: tuple[InstanceReport, ...] | None = None  # its instance list; None: no status yet
    listed: dict[str, InstanceCode] = field(default_factory=dict)  # `reported` indexed by id
    # (read-only: replaced, never changed, when the list changes)
    limiter: TokenBucket | None = None  # its status rate, across sessions and generations
    # host:port, formatted once per join: every event of the node shares the one string
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = format_address(self.host, self.port)

    def set_running(self, instance_ids: Iterable[str]) -> None:
        """Set `running` (most nodes run nothing: they share the one empty set)."""
        self.running = frozenset(instance_ids) or NOTHING_RUNNING

    def instance_ids(self) -> tuple[str, ...]:
        """Instances on this node: placed by us, or reported running/waiting by the Agent."""
        return tuple(sorted(self.placed.union(self.running)))

    def view(self) -> NodeView:
        return NodeView(
            self.id, self.address, self.state, self.metrics, self.ids, self.last_seen_unix
        )


def format_address(host: str, port: int) -> str:
    """host:port, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FollowUps:
    """What follows each step of a node's life outside the registry; nothing, here. The
    scheduler's are `scheduler.lifecycle.Lifecycle`, which says what and in which order."""

    def node_changed(self, node: Node) -> None:
        """The node joined, left or was lost (its membership record changed)."""

    def generation_ended(self, node: Node, generation: int, why: str) -> None:
        """The node's generation is over (LEFT, LOST, rejoined from another address): `why` is
        "left the cluster", "was lost (...)" or "rejoined from another address (...)"."""

    def node_forgotten(self, node_id: str) -> None:
        """A departed node is gone for good (see `Cluster._departed_now`)."""

    def instances_reported(self, node: Node) -> None:
        """The node's reported instance list changed; may narrow `node.running`."""

    def node_reported(self, node: Node) -> None:
        """A valid status was applied (hot path: keep it O(1))."""


@asynccontextmanager
async def open_cluster(
    events: EventLog,
    *,
    node_timeout: float,
    status_rate: float,
    status_burst: int,
    departed_retained: int = DEFAULT_DEPARTED_RETAINED,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Cluster]:
    """A Cluster whose liveness tasks live in a nursery of their own, cancelled on exit."""
    async with trio.open_nursery() as nursery:
        try:
            yield Cluster(
                events,
                nursery,
                node_timeout=node_timeout,
                status_rate=status_rate,
                status_burst=status_burst,
                departed_retained=departed_retained,
                clock=clock,
            )
        finally:
            nursery.cancel_scope.cancel()


class Cluster:
    """All nodes and their sessions; its liveness task runs in `nursery` (see open_cluster)."""

    def __init__(
        self,
        events: EventLog,
        nursery: trio.Nursery,
        *,
        node_timeout: float,
        status_rate: float,
        status_burst: int,
        departed_retained: int = DEFAULT_DEPARTED_RETAINED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.departed_retained = departed_retained
        self.node_timeout = node_timeout
        self._status_rate = status_rate
        self._status_burst = status_burst
        self._clock = (
            clock  # wall clock for last_seen (reported to people); trio's clock for deadlines
        )
        self.nodes: dict[str, Node] = {}
        self.table = NodeTable()  # placement's columnar copy of what placement needs
        self._sessions = 0
        self._generation = 0
        self.status_messages = 0  # valid statuses applied, for /metrics
        self._nursery = nursery
        self._doomed: deque[trio.CancelScope] = deque()  # status streams of lost nodes, to end
        # (deadline as last pushed, session number, node, session): the earliest first; an
        # entry whose session has ended is dropped when it comes due
        self._deadlines: list[tuple[float, int, Node, Session]] = []
        self._earlier = trio.Event()  # set when a push comes before the one being waited for
        self._departed: dict[str, None] = {}  # LEFT/LOST node ids, the longest gone first
        self.follow_ups = FollowUps()  # the scheduler sets its Lifecycle here
        nursery.start_soon(self._liveness, name="liveness")

    # -- membership ------------------------------------------------------------------------

    def join(self, node_id: str, host: str, port: int) -> Node:
        """Start a new session for `node_id`, whose Agent serves at host:port (validated already).

        Refused only while the node is READY with a live status stream; any other known node
        (stream gone, LOST, LEFT) joins again as a new session.
        """
        node = self.nodes.get(node_id)
        if (
            node is not None
            and node.state is NodeState.READY
            and node.session is not None
            and node.session.stream is not None
        ):
            raise AlreadyExists(
                f"node {node_id} is already joined with a live status stream; "
                "leave first or let the old stream end"
            )
        address = format_address(host, port)
        self._departed.pop(node_id, None)
        if node is None:
            node = self.nodes[node_id] = Node(node_id, host, port)
        elif node.session is not None:
            self._end_session(node, "the node joined again")
        new_generation = (
            node.state is not NodeState.READY or node.address != address or node.generation == 0
        )
        if new_generation and node.generation and node.state is NodeState.READY:
            self._end_generation(node, f"rejoined from another address ({address})")
        node.host, node.port, node.address = host, port, address
        if new_generation:
            self._generation += 1
            node.generation = self._generation
            node.placed = set()  # instances of earlier generations are the Controller's
        node.last_seen_unix = self._clock()
        session = self._start_session(node, trio.current_time() + self.node_timeout)
        self.events.publish(NodeEvent(NodeEventKind.JOINED, node.view()))
        log.info("node %s joined from %s (session %d)", node_id, address, session.number)
        return node

    def _start_session(self, node: Node, deadline: float) -> Session:
        """Make `node` READY in a new session whose liveness deadline is `deadline`."""
        self._sessions += 1
        session = Session(
            number=self._sessions,
            host=node.host,
            port=node.port,
            deadline=deadline,
            limiter=self._limiter(node),
        )
        node.session = session
        node.state = NodeState.READY
        node.metrics = None  # a new session is placeable only once it reports
        node.running = NOTHING_RUNNING
        node.reported = None
        node.listed = {}
        self.table.upsert(node.id)
        self.count_instances(node)
        self.table.update_metrics(node.id, None)
        self.table.set_ready(node.id, True)
        self._push_deadline(node, session)
        self.follow_ups.node_changed(node)
        return session

    def _limiter(self, node: Node) -> TokenBucket:
        """The node's status rate limit, made at its first session and kept: per session, an
        Agent rejoining in a loop (from a new port each time) got a fresh burst every time."""
        if node.limiter is None:
            node.limiter = TokenBucket(self._status_rate, self._status_burst, trio.current_time())
        return node.limiter

    def restore(self, node: Node, *, jitter: float = 0.0) -> None:
        """Take back a node from a previous run. A READY one gets `node_timeout` (+ `jitter` s,
        so a cluster that does not come back is not declared lost in one instant) to rejoin
        from the same address, which keeps its generation and instances; else it is LOST."""
        self.nodes[node.id] = node
        self._generation = max(self._generation, node.generation)
        if node.state is NodeState.READY:
            self._start_session(node, trio.current_time() + self.node_timeout + jitter)
        else:
            self.table.upsert(node.id)
            self._departed_now(node)

    def leave(self, node_id: str) -> None:
        """Graceful leave: LEFT with the node's instances. Idempotent for known nodes."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} never joined this scheduler")
        if node.state is not NodeState.READY:
            return
        self._end_session(node, "the node left the cluster")
        self._end_generation(node, "left the cluster")
        node.state = NodeState.LEFT
        self.follow_ups.node_changed(node)
        self.events.publish(NodeEvent(NodeEventKind.LEFT, node.view()))
        log.info("node %s left (instances: %s)", node_id, ", ".join(node.ids) or "none")
        self._departed_now(node)

    def _lose(self, node: Node, session: Session) -> None:
        if node.session is not session:
            return
        self._end_session(
            node, f"no valid status for {self.node_timeout:g} s: node lost", stream_later=True
        )
        self._end_generation(node, f"was lost (no valid status for {self.node_timeout:g} s)")
        node.state = NodeState.LOST
        self.follow_ups.node_changed(node)
        self.events.publish(NodeEvent(NodeEventKind.LOST, node.view()))
        log.warning(
            "node %s lost: no valid status for %g s (instances: %s)",
            node.id,
            self.node_timeout,
            ", ".join(node.ids) or "none",
        )
        self._departed_now(node)

    def _departed_now(self, node: Node) -> None:
        """Count `node` (LEFT or LOST) among the departed; forget the longest gone beyond
        `departed_retained` (config), so churn (autoscaled nodes with fresh ids) cannot grow
        the scheduler without bound. A forgotten node that comes back joins as a new node.

        What it keeps is what its view shows (last metrics, instance ids, from `placed` and
        `running`); its last instance list and the index of it serve only its session's next
        report, and a rejoin starts them again: up to 10,000 departed nodes, each with an
        Agent's list of hundreds of instances, must not keep those."""
        node.reported = None
        node.listed = {}
        for gone in note_recent(self._departed, node.id, self.departed_retained):
            forgotten = self.nodes.pop(gone)
            self.table.remove(gone)
            self.events.forget_node(gone)
            self.follow_ups.node_forgotten(gone)
            log.info(
                "node %s forgotten: %s for longer than the %d most recently departed nodes",
                gone,
                forgotten.state.name,
                self.departed_retained,
            )

    def _end_session(self, node: Node, reason: str, *, stream_later: bool = False) -> None:
        """End the node's session; its status stream at once, or (`stream_later`) by the sweep."""
        session = node.session
        assert session is not None
        node.session = None
        if session.stream is not None:
            session.stream.ended_because = reason
            if stream_later:
                self._sweep(session.stream.scope)
            else:
                session.stream.scope.cancel()
            session.stream = None
        self.table.set_ready(node.id, False)  # its deadline is dropped when it comes due

    def _sweep(self, scope: trio.CancelScope) -> None:
        """End a lost node's status stream soon, paced, after its LOST event went out.

        The Agent of a lost node is silent, so nobody waits for its stream to end, while the
        Controller waits for the LOST event. In a wave of losses (a rack partitioned, or the
        nodes whose statuses a pause bunched together) ending every stream at once would queue
        ~0.25 ms of grpclib work per stream ahead of the LOST events on the same loop; paced, the
        events go out first (measured with 10,000 nodes: LOST lateness p99 164 -> 37 ms).
        """
        self._doomed.append(scope)
        if len(self._doomed) == 1:
            self._nursery.start_soon(self._end_doomed_streams, name="sweep: lost nodes' streams")

    async def _end_doomed_streams(self) -> None:
        while self._doomed:
            await trio.sleep(SWEEP_STEP)
            for _ in range(min(STREAMS_PER_SWEEP_STEP, len(self._doomed))):
                self._doomed.popleft().cancel()

    def _end_generation(self, node: Node, why: str) -> None:
        """The node's instances and the channel to its Agent are over (LEFT, LOST, moved)."""
        self.follow_ups.generation_ended(node, node.generation, why)

    def _push_deadline(self, node: Node, session: Session) -> None:
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self.nodes) + STALE_DEADLINES:
            self._drop_ended_sessions()
        if not deadlines or session.deadline < deadlines[0][0]:
            self._earlier.set()
        heapq.heappush(deadlines, (session.deadline, session.number, node, session))

    def _drop_ended_sessions(self) -> None:
        """Rebuild the heap without the entries of ended sessions. A session has at most one
        entry, so past 2 x nodes + STALE_DEADLINES at least half are stale: an Agent rejoining
        in a loop cannot make the heap hold a session per join until each deadline comes due
        (amortised O(1) per push)."""
        self._deadlines[:] = [entry for entry in self._deadlines if entry[2].session is entry[3]]
        heapq.heapify(self._deadlines)

    async def _liveness(self) -> None:
        """Declare LOST every node whose session's deadline passes; sleeps until the earliest.

        A due entry whose session has moved its deadline is pushed again with the new one; one
        whose session has ended is dropped."""
        deadlines = self._deadlines
        while True:
            self._earlier = trio.Event()
            with trio.move_on_at(deadlines[0][0] if deadlines else math.inf):
                await self._earlier.wait()
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                _, _, node, session = heapq.heappop(deadlines)
                if node.session is not session:
                    continue
                if session.deadline > now:
                    heapq.heappush(deadlines, (session.deadline, session.number, node, session))
                else:
                    self._lose(node, session)

    # -- status ----------------------------------------------------------------------------

    def ready_node(self, node_id: str) -> Node:
        """The READY node `node_id`, or NotFound saying what to do."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} has not joined: call JoinCluster first")
        if node.state is not NodeState.READY or node.session is None:
            raise NotFound(f"node {node_id} is {node.state.name}: call JoinCluster again first")
        return node

    def attach_stream(
        self, node_id: str, scope: trio.CancelScope
    ) -> tuple[Node, Session, StatusStream]:
        """Make the stream whose handler runs in `scope` the one in charge of `node_id`.

        An older stream of the node is ended by cancelling its scope.
        """
        node = self.ready_node(node_id)
        session = node.session
        assert session is not None
        if session.stream is not None:
            session.stream.ended_because = "a newer status stream for this node replaced it"
            session.stream.scope.cancel()
            log.info("node %s: a new status stream replaces the previous one", node_id)
        stream = session.stream = StatusStream(scope)
        return node, session, stream

    def detach_stream(self, session: Session, stream: StatusStream) -> None:
        """The stream ended (client closed, error, or replaced); the node may join again."""
        if session.stream is stream:
            session.stream = None

    def report(
        self,
        node: Node,
        session: Session,
        metrics: NodeMetrics,
        reports: tuple[InstanceReport, ...] | None = None,
    ) -> None:
        """Apply one valid status: store it, move the liveness deadline, publish STATUS.

        `reports` is the status's instance list (default: `metrics.instances`). It is kept on
        the node, apart from the metrics its STATUS event carries: the event log holds 100,000
        events, and an event's size must not grow with what an Agent chooses to list.
        """
        if node.session is not session:
            raise NotFound(f"node {node.id}: this session has ended; call JoinCluster again")
        self.status_messages += 1
        if reports is None:
            reports = metrics.instances
        node.metrics = metrics
        node.last_seen_unix = self._clock()
        session.deadline = trio.current_time() + self.node_timeout
        self.table.update_metrics(node.id, metrics)
        if node.reported != reports:
            # An Agent may list hundreds of TERMINATED instances for a while: index them once
            # per changed list, not on every placement on the node or every report.
            node.reported = reports
            node.listed = {r.instance_id: r.code for r in reports}
            node.set_running(
                instance_id
                for instance_id, code in node.listed.items()
                if code is not InstanceCode.TERMINATED
            )
            self.follow_ups.instances_reported(node)  # may narrow `running` (its own only)
            self.count_instances(node)
        self.follow_ups.node_reported(node)
        self.events.publish(NodeEvent(NodeEventKind.STATUS, node.view()))

    def count_instances(self, node: Node) -> None:
        """Refresh the node's instance ids (events carry them) and the count placement breaks
        ties with; call after changing `placed` or the reported instances. Unchanged ids keep
        their tuple, which the node's events then share."""
        ids = node.instance_ids()
        if ids != node.ids:
            node.ids = ids
        self.table.set_instance_count(node.id, len(ids))

    def count_by_state(self) -> dict[NodeState, int]:
        counts = dict.fromkeys(NodeState, 0)
        for node in self.nodes.values():
            counts[node.state] += 1
        return counts

    def views(self) -> list[NodeView]:
        return [self.nodes[node_id].view() for node_id in sorted(self.nodes)]
