"""Prometheus `/metrics` and `/healthz` on a loopback HTTP port, served from trio.

The core keeps plain integer counters (a status message costs one `+= 1`, no lock); a custom
collector reads them at scrape time. Only the scheduling latency is a real histogram.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192  # an HTTP request head we accept; scrapers send a few hundred bytes
REQUEST_TIMEOUT = 5.0  # s for a client to send its request head
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class SchedulerCollector:
    """Reads the counters of the process and, while it leads, of its core at scrape time."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def collect(self):
        scheduler = self.scheduler
        yield GaugeMetricFamily(
            "orka_scheduler_leader",
            "1 while this scheduler leads, else 0",
            value=1 if scheduler.leading else 0,
        )
        yield CounterMetricFamily(
            "orka_scheduler_leadership_changes",
            "Leaderships this scheduler won (terms started)",
            value=scheduler.leadership_changes,
        )
        bridge = scheduler.bridge
        connections = bridge.connection_statistics() if bridge is not None else None
        if connections is not None:
            yield from connection_metrics(connections)
        core = scheduler.core
        if core is None:
            return
        cluster, instances, events = core.cluster, core.instances, core.events
        nodes = GaugeMetricFamily("orka_scheduler_nodes", "Nodes by state", labels=["state"])
        for state, count in cluster.count_by_state().items():
            nodes.add_metric([state.name.lower()], count)
        yield nodes
        yield CounterMetricFamily(
            "orka_scheduler_status_messages",
            "Valid node status messages applied",
            value=cluster.status_messages,
        )
        placements = CounterMetricFamily(
            "orka_scheduler_placements", "Schedule requests by outcome", labels=["outcome"]
        )
        for outcome, count in instances.placements.items():
            placements.add_metric([outcome], count)
        yield placements
        attempts = CounterMetricFamily(
            "orka_scheduler_attempts", "Create attempts on Agents by outcome", labels=["outcome"]
        )
        for outcome, count in instances.attempts.items():
            attempts.add_metric([outcome], count)
        yield attempts
        yield GaugeMetricFamily(
            "orka_scheduler_instances",
            "Instances known (placed, not destroyed)",
            value=len(instances.statuses()),
        )
        yield GaugeMetricFamily(
            "orka_scheduler_watchers", "Connected WatchEvents streams", value=events.watchers
        )
        # Counted, not revision - first + 1: revisions jump after a restart (see events.py).
        yield GaugeMetricFamily(
            "orka_scheduler_event_log_size", "Events retained for replay", value=len(events)
        )
        yield GaugeMetricFamily(
            "orka_scheduler_event_revision", "Revision of the newest event", value=events.revision
        )


CONNECTIONS_CLOSED = (
    "refused",
    "refused_rate",
    "closed_idle",
    "closed_handshakes",
    "closed_agent_excess",
    "rapid_reset_goaways",
    "header_block_goaways",
    "protocol_errors",
)  # the listener's counts: why a connection ended early


def connection_metrics(statistics: dict[str, int]):
    """The gRPC listener's connections, and those it refused or closed to stay within bounds."""
    open_ = GaugeMetricFamily("orka_scheduler_connections", "gRPC connections", labels=["state"])
    open_.add_metric(["open"], statistics["connections"])
    open_.add_metric(["handshaking"], statistics["pending_handshakes"])
    yield open_
    yield GaugeMetricFamily(
        "orka_scheduler_connections_limit",
        "Connections served at once (server.max_connections, as lowered "
        "to the file-descriptor limit)",
        value=statistics["max_connections"],
    )
    closed = CounterMetricFamily(
        "orka_scheduler_connections_ended",
        "Connections refused or closed by the listener's limits",
        labels=["reason"],
    )
    for reason in CONNECTIONS_CLOSED:
        closed.add_metric([reason], statistics[reason])
    yield closed


class Hooks:
    """Connects each leadership's core to the process's histograms when its term starts."""

    def __init__(self, scheduling: Histogram, commits: Histogram) -> None:
        self._scheduling = scheduling
        self._commits = commits

    def term_started(self, core) -> None:
        core.instances.on_placed.append(self._scheduling.observe)
        core.store.on_commit.append(self._commits.observe)


def make_registry(scheduler) -> tuple[CollectorRegistry, Hooks]:
    """A registry with the process's metrics (`scheduler`: app.Scheduler), and its hooks."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SchedulerCollector(scheduler))
    latency = Histogram(
        "orka_scheduler_scheduling_seconds",
        "Time from a Schedule request to an Agent's acceptance",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    commits = Histogram(
        "orka_scheduler_store_commit_seconds",
        "Time of one commit of the durable state (an etcd Txn, a SQLite "
        "transaction) made by the committer",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    return registry, Hooks(latency, commits)


async def serve_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: Callable[[], tuple[bool, str]],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET /metrics and GET /healthz until cancelled; report the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", bound)
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = await _read_head(stream)
                if head is None:
                    return
                await stream.send_all(_respond(head, registry, health))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            return b"TOO LARGE"
    return data


def _respond(
    head: bytes, registry: CollectorRegistry, health: Callable[[], tuple[bool, str]]
) -> bytes:
    request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    if len(parts) != 3:
        return _response(400, "text/plain", b"bad request\n")
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"only GET\n")
    if path == "/metrics":
        body = generate_latest(registry)
        return _response(200, CONTENT_TYPE_LATEST, body if method == "GET" else b"")
    if path == "/healthz":
        ok, text = health()
        return _response(200 if ok else 503, "text/plain", text.encode() + b"\n")
    return _response(404, "text/plain", b"not found: try /metrics or /healthz\n")


def _response(status: int, content_type: str, body: bytes) -> bytes:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        405: "Method Not Allowed",
        503: "Service Unavailable",
    }[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
