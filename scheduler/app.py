"""Process wiring: builds the scheduler's parts from a Config and serves them until shutdown.

`serve()` follows trio's serve_listeners shape: `await nursery.start(serve, ...)` returns the
bound port once the listener accepts, and setting `shutdown` ends everything cleanly (stop
accepting, end streams with UNAVAILABLE, exit), so tests need no signals.
"""
from __future__ import annotations

import gc
import logging
import random
import ssl
from dataclasses import dataclass

import trio

from .api.agent import AgentApi
from .api.cluster import ClusterApi
from .api.scheduling import SchedulingApi
from .agents import Agents
from .cluster import Cluster, Node
from .config import Config
from .events import EventLog
from .grpc_bridge import Bridge, open_loop
from .instances import Instances
from .api.standard import health_service, with_reflection
from .model import NodeState, Snapshot
from .observability import make_registry, serve_http
from .store import Restored, Store
from .systemd import Notifier

log = logging.getLogger(__name__)


@dataclass
class Scheduler:
    """The parts of one running scheduler, reachable by tests."""

    config: Config
    events: EventLog
    cluster: Cluster
    instances: Instances
    agents: Agents
    store: Store
    restored: Restored
    port: int = 0
    http_port: int | None = None
    bridge: Bridge | None = None  # while serving

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what an operator glancing at `systemctl status` wants."""
        counts = self.cluster.count_by_state()
        return (f"{counts[NodeState.READY]} nodes ready, {counts[NodeState.LOST]} lost, "
                f"{len(self.instances.statuses())} instances, port {self.port}")


# Young collections every 50,000 allocations instead of 700, full ones rarely: with 10,000 nodes
# the heap holds ~2 M tracked objects and a full pass takes ~1 s (bench/RESULTS.md: ingest +35 %,
# LOST lateness p99 4.7 s -> 0.1 s). Cyclic garbage still goes, just in fewer, larger passes.
GC_THRESHOLDS = (50_000, 20, 1_000)
RESTORE_JITTER = 0.1  # fraction of node_timeout spreading the deadlines of restored nodes


def build(config: Config, agent_ssl: ssl.SSLContext | None = None) -> Scheduler:
    """The scheduler's parts, with the previous run's state loaded from the data directory."""
    store = Store(config.server.data_dir, config.events.retained)
    restored = store.load()
    parts: dict = {}

    def snapshot() -> Snapshot:
        return Snapshot(tuple(parts["cluster"].views()), parts["instances"].statuses())

    events = EventLog(config.events.retained, snapshot, restored.epoch,
                      revision=restored.revision, history=restored.events)
    store.begin(events.epoch, events.revision)
    events.on_publish.append(store.event_published)
    cluster = parts["cluster"] = Cluster(
        events,
        node_timeout=config.liveness.node_timeout,
        status_rate=config.liveness.status_rate,
        status_burst=config.liveness.status_burst,
    )
    cluster.on_node_change.append(lambda node: store.save_node(
        node.id, node.host, node.port, node.state, node.generation, node.last_seen_unix))
    cluster.on_node_forgotten.append(store.delete_node)
    agents = Agents(cluster, agent_ssl, config.tls.trust_domain)
    instances = parts["instances"] = Instances(
        cluster, events, agents,
        strategy=config.scheduling.strategy,
        attempt_timeout=config.scheduling.attempt_timeout,
        max_attempts=config.scheduling.max_attempts,
        store=store,
    )
    return Scheduler(config, events, cluster, instances, agents, store, restored)


def restore(scheduler: Scheduler) -> None:
    """Nodes and placements of the previous run; call once the cluster's tasks run."""
    restored, cluster = scheduler.restored, scheduler.cluster
    if restored.epoch is None:
        return
    jitter = cluster.node_timeout * RESTORE_JITTER
    for row in restored.nodes:
        cluster.restore(Node(row.id, row.host, row.port, row.state, last_seen_unix=row.last_seen,
                             generation=row.generation), jitter=random.uniform(0, jitter))
    for row in restored.placements:
        node = cluster.nodes.get(row.node_id)
        if node is not None:
            scheduler.instances.restore(row.workload, node, row.generation, row.latest)
    log.info("restored epoch %s at revision %d: %d nodes (awaiting rejoin within %g s), "
             "%d placements", restored.epoch, restored.revision, len(restored.nodes),
             cluster.node_timeout, len(restored.placements))


async def serve(
    config: Config,
    *,
    ssl_context: ssl.SSLContext | None,
    authorize=None,
    agent_ssl: ssl.SSLContext | None = None,
    shutdown: trio.Event,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a scheduler until `shutdown` is set; `task_status.started(scheduler)` once listening."""
    scheduler = build(config, agent_ssl)
    notifier = notifier or Notifier()
    server = config.server
    bridge = Bridge(authorize, server.max_message_bytes, max_connections=server.max_connections,
                    handshake_timeout=server.handshake_timeout,
                    message_timeout=server.message_timeout,
                    connection_rate_per_ip=server.connection_rate_per_ip)
    scheduler.bridge = bridge
    health, serving = health_service()
    servables = with_reflection(
        AgentApi(scheduler.cluster).servables(bridge)
        + ClusterApi(scheduler.cluster, scheduler.events).servables(bridge)
        + SchedulingApi(scheduler.instances).servables(bridge)
        + [health]
    )
    registry = make_registry(scheduler.cluster, scheduler.instances, scheduler.events,
                             bridge.connection_statistics)
    async with open_loop(), trio.open_nursery() as nursery:
        await nursery.start(scheduler.store.run)
        await nursery.start(scheduler.cluster.run)
        await nursery.start(scheduler.instances.run)
        restore(scheduler)
        observability = config.observability
        if observability.http_host is not None:
            scheduler.http_port = await nursery.start(
                serve_http, observability.http_host, observability.http_port, registry,
                lambda: not shutdown.is_set())
        async with trio.open_nursery() as grpc:
            scheduler.port = await grpc.start(
                lambda task_status: bridge.serve(
                    servables, config.server.host, config.server.port, ssl_context,
                    shutdown=shutdown, grace=config.server.shutdown_grace,
                    task_status=task_status),
            )
            serving.set(True)
            log.info("listening on %s port %d (%s), epoch %s", config.server.host or "*",
                     scheduler.port,
                     "TLS, client certificates required" if ssl_context else "PLAINTEXT",
                     scheduler.events.epoch)
            gc.freeze()  # start-up objects (modules, descriptors) leave the collector's full passes
            gc.set_threshold(*GC_THRESHOLDS)
            notifier.ready(scheduler.status_line())
            nursery.start_soon(notifier.run, scheduler.status_line)
            task_status.started(scheduler)
            await shutdown.wait()
            serving.set(False)
            notifier.stopping()
            log.info("draining: ending streams, giving them %g s", config.server.shutdown_grace)
        # The listener has drained and closed: end the sessions' and relays' tasks.
        nursery.cancel_scope.cancel()
        scheduler.agents.close()
    scheduler.store.close()
    log.info("stopped")
