"""Process wiring: builds the scheduler's parts from a Config and serves them until shutdown.

`serve()` follows trio's serve_listeners shape: `await nursery.start(serve, ...)` returns once
the listener accepts (and, with SQLite, once the scheduler leads), and setting `shutdown` ends
everything cleanly (stop accepting, end streams with UNAVAILABLE, exit), so tests need no
signals.

The gRPC listener, the HTTP endpoint and the health service live as long as the process. The
*core* (event log, cluster, instances, Agent links, store) lives for one *term*, one leadership:
it is built from the stored state when the term starts and torn down when it ends, and the
bridge routes the scheduler's services to it meanwhile. With `store.backend = "sqlite"` there
is one term, the whole process. With "etcd" the process campaigns (`leadership.Election`), and
while it does not lead it answers as a standby, its warm copy of the state kept by a `Mirror`.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from . import etcd
from ._proto import agent_grpc, controller_grpc
from .agents import Agents
from .api.agent import AgentApi
from .api.cluster import ClusterApi
from .api.scheduling import SchedulingApi
from .api.standard import health_service, with_reflection
from .cluster import Cluster, Node, open_cluster
from .cluster.registry import format_address
from .config import Config
from .events import EventLog
from .grpc_bridge import Bridge, Limits, open_loop
from .instances import Instances, open_instances
from .leadership import Election, Term
from .lifecycle import Lifecycle
from .memory import release_freed_memory
from .model import NodeState, Snapshot
from .observability import Hooks, make_registry, serve_http
from .store import Restored, SqliteBackend, Store
from .store.etcd import EtcdBackend, Mirror
from .systemd import Notifier
from .tls_setup import etcd_tls

log = logging.getLogger(__name__)

RESTORE_JITTER = 0.1  # fraction of node_timeout spreading the deadlines of restored nodes
FINAL_COMMIT_TIMEOUT = 1.0  # s for the last commit of a leader that shuts down (then resigns)
ROUTED = (
    agent_grpc.LifecycleServiceBase,
    agent_grpc.StatusUpdateServiceBase,
    controller_grpc.ClusterServiceBase,
    controller_grpc.SchedulingServiceBase,
)


@dataclass
class Core:
    """The parts of one leadership, built from the stored state."""

    events: EventLog
    cluster: Cluster
    instances: Instances
    agents: Agents
    store: Store
    restored: Restored

    def routes(self) -> dict:
        return {
            **AgentApi(self.cluster).routes(),
            **ClusterApi(self.cluster, self.events).routes(),
            **SchedulingApi(self.instances).routes(),
        }


@dataclass
class Scheduler:
    """One scheduler process, reachable by tests: `core` while it leads, else None."""

    config: Config
    port: int = 0
    http_port: int | None = None
    advertise: str = ""
    core: Core | None = None
    leader: Callable[[], str] = lambda: ""  # the leader's advertise address ("" if none)
    leadership_changes: int = 0  # terms this process won
    shutdown: trio.Event = field(default_factory=trio.Event)
    bridge: Bridge | None = None  # its gRPC listener's statistics are the process's metrics

    @property
    def leading(self) -> bool:
        return self.core is not None

    def _core(self) -> Core:
        if self.core is None:
            raise LookupError("this scheduler does not lead (standby)")
        return self.core

    # The parts of the current leadership, for tests and tools.
    events = property(lambda self: self._core().events)
    cluster = property(lambda self: self._core().cluster)
    instances = property(lambda self: self._core().instances)
    agents = property(lambda self: self._core().agents)
    store = property(lambda self: self._core().store)
    restored = property(lambda self: self._core().restored)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what an operator glancing at `systemctl status` wants."""
        if self.core is None:
            return f"standby, leader at {self.leader() or '(none yet)'}, port {self.port}"
        counts = self.core.cluster.count_by_state()
        return (
            f"{counts[NodeState.READY]} nodes ready, {counts[NodeState.LOST]} lost, "
            f"{len(self.core.instances.statuses())} instances, port {self.port}"
        )

    def health(self) -> tuple[bool, str]:
        """(healthy, text) for /healthz: only a leader that is not draining is healthy."""
        if self.shutdown.is_set():
            return False, "draining"
        if self.core is None:
            return False, f"standby; leader at {self.leader() or '(none yet)'}"
        return True, "ok"


@asynccontextmanager
async def open_core(
    config: Config,
    store: Store,
    agent_ssl: ssl.SSLContext | None,
    leading: Callable[[], bool] = lambda: True,
) -> AsyncIterator[Core]:
    """A leadership's parts, continuing the state `store` holds; `leading()` False once the
    leadership is over (no Agent is called then). Their tasks end when the block exits."""
    restored = store.load()
    parts: dict = {}

    def snapshot() -> Snapshot:
        return Snapshot(tuple(parts["cluster"].views()), parts["instances"].statuses())

    events = EventLog(
        config.events.retained,
        snapshot,
        restored.epoch,
        revision=restored.revision,
        history=restored.events,
        persist=store.event_published,
    )
    agents = Agents(agent_ssl, config.tls.trust_domain, leading)
    liveness = config.liveness
    async with (
        open_cluster(
            events,
            node_timeout=liveness.node_timeout,
            status_rate=liveness.status_rate,
            status_burst=liveness.status_burst,
            departed_retained=liveness.departed_retained,
        ) as cluster,
        open_instances(
            cluster,
            events,
            agents,
            strategy=config.scheduling.strategy,
            attempt_timeout=config.scheduling.attempt_timeout,
            max_attempts=config.scheduling.max_attempts,
            store=store,
            finished_retained=config.scheduling.finished_retained,
        ) as instances,
    ):
        parts.update(cluster=cluster, instances=instances)
        cluster.follow_ups = Lifecycle(store, agents, instances)
        yield Core(events, cluster, instances, agents, store, restored)


def restore(core: Core) -> None:
    """Nodes and placements of the previous run or leader; call once the cluster's tasks run."""
    restored, cluster = core.restored, core.cluster
    if restored.epoch is None:
        return
    jitter = cluster.node_timeout * RESTORE_JITTER
    for row in restored.nodes:
        cluster.restore(
            Node(
                row.id,
                row.host,
                row.port,
                row.state,
                last_seen_unix=row.last_seen,
                generation=row.generation,
            ),
            jitter=random.uniform(0, jitter),
        )
    for placement in restored.placements:
        node = cluster.nodes.get(placement.node_id)
        if node is not None:
            core.instances.restore(placement.workload, node, placement.generation, placement.latest)
    log.info(
        "restored epoch %s at revision %d: %d nodes (awaiting rejoin within %g s), %d placements",
        restored.epoch,
        restored.revision,
        len(restored.nodes),
        cluster.node_timeout,
        len(restored.placements),
    )


def advertised_address(config: Config, port: int) -> str:
    """`server.advertise`, else the listen address with the bound port; for a listen on every
    interface, this host's name (what peers of a cluster usually resolve)."""
    if config.server.advertise:
        return config.server.advertise
    host = config.server.host
    if host in ("", "::", "0.0.0.0"):
        host = socket.gethostname()
    return format_address(host, port)


class Leader:
    """Runs terms: builds the core, routes calls to it, and tears it down when the term ends."""

    def __init__(
        self,
        scheduler: Scheduler,
        bridge: Bridge,
        serving,
        hooks: Hooks,
        agent_ssl: ssl.SSLContext | None,
        stop: trio.Event,
    ) -> None:
        self._scheduler = scheduler
        self._bridge = bridge
        self._serving = serving
        self._hooks = hooks
        self._agent_ssl = agent_ssl
        self._stop = stop  # set after the listener drained: flush, resign, return
        self.started = trio.Event()  # set when the first term serves

    async def lead(self, backend, term: Term | None = None, mirror: Mirror | None = None) -> None:
        """Serve one term until `stop` (then return) or until the term is cancelled."""
        scheduler, config = self._scheduler, self._scheduler.config
        store = Store(backend, config.events.retained)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            if term is not None:
                assert mirror is not None, "an etcd term comes with its mirror"
                store.on_fence_lost.append(term.end)
                # Everything every earlier leader wrote comes before our term record.
                await mirror.wait_for(await backend.open_term(scheduler.advertise))
            leading = term.valid if term is not None else (lambda: True)
            async with open_core(config, store, self._agent_ssl, leading) as core:
                try:
                    await store.begin(core.events.epoch, core.events.revision)
                    restore(core)
                    self._hooks.term_started(core)
                    scheduler.core = core
                    scheduler.leadership_changes += 1
                    self._bridge.route(core.routes(), leading)
                    self._serving.set(True)
                    if term is None:
                        log.info(
                            "state in %s: epoch %s, revision %d",
                            config.server.data_dir,
                            core.events.epoch,
                            core.events.revision,
                        )
                    else:
                        log.info(
                            "became leader (epoch %s, revision %d), advertised as %s",
                            core.events.epoch,
                            core.events.revision,
                            scheduler.advertise,
                        )
                    self.started.set()
                    await self._stop.wait()
                    with trio.move_on_after(FINAL_COMMIT_TIMEOUT):
                        await store.commit_durably()
                finally:  # no call reaches the core while its tasks end
                    self._step_down(term)
            nursery.cancel_scope.cancel()

    def _step_down(self, term: Term | None) -> None:
        """Synchronous, so it runs in full even inside a cancelled term: no call in flight and
        no Agent call outlives this."""
        core, self._scheduler.core = self._scheduler.core, None
        why = (
            f"stepped down: {term.ended}"
            if term is not None and term.ended
            else "stepped down: the leadership ended"
        )
        self._bridge.unroute(why)
        self._serving.set(False)
        if core is not None:
            core.agents.close()


async def serve(
    config: Config,
    *,
    ssl_context: ssl.SSLContext | None,
    authorize=None,
    agent_ssl: ssl.SSLContext | None = None,
    etcd_ssl: ssl.SSLContext | None = None,
    shutdown: trio.Event,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a scheduler until `shutdown` is set; `task_status.started(scheduler)` once listening
    (with SQLite: once leading). `etcd_ssl`: TLS to etcd (`tls_setup.etcd_tls`, kept to be
    reloaded on SIGHUP); None: made from the [etcd] files, if set."""
    scheduler = Scheduler(config, shutdown=shutdown)
    notifier = notifier or Notifier()
    server = config.server
    bridge = scheduler.bridge = Bridge(
        authorize,
        Limits(
            max_connections=server.max_connections,
            handshake_timeout=server.handshake_timeout,
            message_timeout=server.message_timeout,
            max_message_bytes=server.max_message_bytes,
            connection_rate_per_ip=server.connection_rate_per_ip,
            controller_streams=server.controller_streams,
        ),
    )
    health, serving = health_service()
    serving.set(False)  # NOT_SERVING until this scheduler leads
    servables = with_reflection([bridge.routed(base) for base in ROUTED] + [health])
    registry, hooks = make_registry(scheduler)
    stop_leading = trio.Event()
    leader = Leader(scheduler, bridge, serving, hooks, agent_ssl, stop_leading)
    sqlite = config.store.backend == "sqlite"
    backend = SqliteBackend(config.server.data_dir) if sqlite else None
    client = None
    try:
        async with open_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(_close_at_exit, lambda: client)
            nursery.start_soon(release_freed_memory)
            if not sqlite:
                client = etcd.EtcdClient(config.etcd.addresses, etcd_ssl or etcd_tls(config))
                mirror = Mirror(client, config.etcd.prefix)
                # Not awaited: while etcd cannot be reached the process listens and answers as
                # a standby; a term waits for the copy to hold its own term record anyway.
                nursery.start_soon(mirror.run)
            observability = config.observability
            if observability.http_host is not None:
                scheduler.http_port = await nursery.start(
                    serve_http,
                    observability.http_host,
                    observability.http_port,
                    registry,
                    scheduler.health,
                )
            async with trio.open_nursery() as leading:
                if sqlite:  # leads before it listens: no call finds it without a core
                    leading.start_soon(leader.lead, backend)
                    await leader.started.wait()
                async with trio.open_nursery() as grpc:
                    scheduler.port = await grpc.start(
                        lambda task_status: bridge.serve(
                            servables,
                            config.server.host,
                            config.server.port,
                            ssl_context,
                            shutdown=shutdown,
                            grace=config.server.shutdown_grace,
                            task_status=task_status,
                        ),
                    )
                    scheduler.advertise = advertised_address(config, scheduler.port)
                    log.info(
                        "listening on %s port %d (%s)",
                        config.server.host or "*",
                        scheduler.port,
                        "TLS, client certificates required" if ssl_context else "PLAINTEXT",
                    )
                    if not sqlite:
                        assert client is not None  # made above, with the mirror
                        _follow(scheduler, bridge, mirror)
                        election = Election(
                            client, mirror.election, config.etcd.lease_ttl, scheduler.advertise
                        )
                        leading.start_soon(
                            election.run,
                            lambda term: leader.lead(
                                EtcdBackend(client, mirror, term.leader), term, mirror
                            ),
                        )
                    notifier.ready(scheduler.status_line())
                    nursery.start_soon(notifier.run, scheduler.status_line)
                    task_status.started(scheduler)
                    await shutdown.wait()
                    serving.set(False)
                    notifier.stopping()
                    log.info(
                        "draining: ending streams, giving them %g s", config.server.shutdown_grace
                    )
                # The listener has drained and closed: the last commit, resign; a standby
                # just stops campaigning.
                stop_leading.set()
                if not scheduler.leading:
                    leading.cancel_scope.cancel()
                leading.cancel_scope.deadline = trio.current_time() + 2 * FINAL_COMMIT_TIMEOUT
            nursery.cancel_scope.cancel()
    finally:
        if backend is not None:
            backend.close()
    log.info("stopped")


async def _close_at_exit(client: Callable[[], etcd.EtcdClient | None]) -> None:
    """Close the etcd client's channels when the nursery ends (its loop is still open then)."""
    try:
        await trio.sleep_forever()
    finally:
        opened = client()
        if opened is not None:
            opened.close()


def _follow(scheduler: Scheduler, bridge: Bridge, mirror: Mirror) -> None:
    """Standby answers name the leader that etcd's election shows (never this process)."""

    def leader() -> str:
        address = mirror.leader
        return "" if address == scheduler.advertise and not scheduler.leading else address

    def changed(address: str) -> None:
        # Not while shutting down: our own resignation is no news for a standby to report.
        if (
            not scheduler.leading
            and not scheduler.shutdown.is_set()
            and address != scheduler.advertise
        ):
            log.info("standby, leader at %s", address or "(none yet)")

    scheduler.leader = leader
    bridge.leader = leader
    mirror.on_leader_change.append(changed)
    changed(mirror.leader)
