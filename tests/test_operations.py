"""Running the scheduler as a service (SPEC §4): sd_notify, health, reflection, /metrics, logs,
the systemd unit, and signals.

Everything talks over real sockets on 127.0.0.1 (port 0) or AF_UNIX sockets in the test's
temporary directory; every I/O test is guarded by `fail_after`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_asyncio
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from prometheus_client.parser import text_string_to_metric_families

from scheduler import logs
from scheduler._proto import controller_pb2
from scheduler.app import serve
from scheduler.observability import _respond
from scheduler.systemd import Notifier
from tests.conftest import IO_GUARD, make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    drop_stream,
    open_channel,
    open_nodes,
    schedule,
    scheduling_request,
    status,
    wait_until,
)

aio = trio_asyncio.aio_as_trio
REPO = Path(__file__).resolve().parent.parent
UNIT_FILE = REPO / "packaging" / "orka-scheduler.service"
RUNNING = controller_pb2.Status.RUNNING
SUN_PATH_MAX = 100  # bytes: AF_UNIX paths longer than ~107 cannot be bound


# -- helpers -----------------------------------------------------------------------------------


@asynccontextmanager
async def notifying_scheduler(notifier: Notifier, config=None):
    """`running_scheduler`, but serving with the given sd_notify `notifier`."""
    config = config or make_config()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        scheduler = await nursery.start(
            lambda task_status: serve(
                config,
                ssl_context=None,
                shutdown=shutdown,
                notifier=notifier,
                task_status=task_status,
            )
        )
        scheduler.shutdown = shutdown
        try:
            with trio.fail_after(IO_GUARD):
                yield scheduler
        finally:
            shutdown.set()


@pytest.fixture
def notify_path(tmp_path):
    """A path for $NOTIFY_SOCKET in tmp_path (or a short temp dir if tmp_path is too deep)."""
    path = tmp_path / "notify"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="orka-") as short:
        yield os.path.join(short, "notify")


class NotifyListener:
    """What systemd does with $NOTIFY_SOCKET: a bound AF_UNIX datagram socket, read by tests."""

    def __init__(self, address: str) -> None:
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.address = address

    async def __aenter__(self) -> NotifyListener:
        await self.sock.bind(self.address)
        return self

    async def __aexit__(self, *exc) -> None:
        self.sock.close()

    async def receive(self) -> dict[str, str]:
        """The next datagram as {field: value}; `_at` holds trio's clock when it arrived."""
        data = await self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        fields["_at"] = str(trio.current_time())
        return fields

    async def until(self, predicate) -> list[dict[str, str]]:
        """Datagrams up to and including the first for which `predicate(fields)` holds."""
        seen = []
        while True:
            fields = await self.receive()
            seen.append(fields)
            if predicate(fields):
                return seen

    def pending(self) -> list[dict[str, str]]:
        """Datagrams already queued, without waiting."""
        out = []
        while True:
            try:
                data = self.sock._sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n") if line))


class HttpReply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}

    @property
    def text(self) -> str:
        return self.body.decode()


async def http(port: int, request_line: str) -> HttpReply:
    """Send one HTTP/1.1 request to 127.0.0.1:port and read the reply to EOF."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{request_line}\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    return HttpReply(raw)


async def scrape(scheduler) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    reply = await http(scheduler.http_port, "GET /metrics HTTP/1.1")
    assert reply.status == 200, reply.status_line
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    assert int(reply.headers["content-length"]) == len(reply.body)
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not in /metrics: {sorted(k for k in samples)}"
    return samples[key]


async def scrape_until(scheduler, name: str, value: float, **labels) -> dict:
    """Scrape until `name{labels}` equals `value` (guarded by the test's fail_after)."""
    while True:
        samples = await scrape(scheduler)
        if samples.get((name, tuple(sorted(labels.items())))) == value:
            return samples
        await trio.sleep(0.01)


async def open_agent(channel, scheduler, node_id: str):
    """A FakeAgent that joined and had one status applied; returns (agent, its stream)."""
    agent = FakeAgent(channel, node_id)
    await agent.join()
    stream = await agent.report()
    await wait_until(lambda: scheduler.cluster.nodes[node_id].metrics is not None)
    return agent, stream


# -- sd_notify -----------------------------------------------------------------------------------


async def test_ready_is_sent_once_listening_with_a_status_naming_the_port(notify_path):
    async with NotifyListener(notify_path) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": notify_path})
        async with notifying_scheduler(notifier) as scheduler:
            first = await listener.receive()
            assert first.get("READY") == "1", f"first datagram is not READY=1: {first}"
            assert f"port {scheduler.port}" in first["STATUS"], first
            assert scheduler.port != 0
            # READY is sent only once.
            later = await listener.receive()
            assert "READY" not in later, later


async def test_watchdog_pings_at_half_the_interval(notify_path):
    async with NotifyListener(notify_path) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
        assert notifier.watchdog_interval == pytest.approx(0.1)
        async with notifying_scheduler(notifier):
            await listener.until(lambda f: f.get("READY") == "1")
            pings = []
            while len(pings) < 5:
                fields = await listener.receive()
                if fields.get("WATCHDOG") == "1":
                    pings.append(float(fields["_at"]))
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert all(0.05 < gap < 0.5 for gap in gaps), f"watchdog gaps {gaps}, want ~0.1 s"
            assert sum(gaps) / len(gaps) == pytest.approx(0.1, abs=0.05), gaps


async def test_status_lines_count_the_nodes_and_stopping_is_sent_on_shutdown(notify_path):
    async with NotifyListener(notify_path) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
        async with notifying_scheduler(notifier) as scheduler:
            ready = await listener.receive()
            assert ready["STATUS"].startswith("0 nodes ready, 0 lost, 0 instances"), ready
            async with open_channel(scheduler.port) as channel:
                await open_agent(channel, scheduler, "node-a")
                await open_agent(channel, scheduler, "node-b")
                await listener.until(
                    lambda f: f.get("STATUS", "").startswith("2 nodes ready, 0 lost")
                )
                scheduler.shutdown.set()
                tail = await listener.until(lambda f: f.get("STOPPING") == "1")
            assert tail[-1]["STATUS"] == "shutting down", tail[-1]
            assert not any("READY" in fields for fields in tail), tail
        # serve() has returned: the watchdog task ended with it, nothing pings any more.
        listener.pending()
        await trio.sleep(0.3)
        assert listener.pending() == []


async def test_abstract_namespace_addresses_work():
    name = f"orka-test-{uuid.uuid4().hex}"
    async with NotifyListener("\0" + name) as listener:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("3 nodes ready")
        with trio.fail_after(IO_GUARD):
            fields = await listener.receive()
    assert fields["READY"] == "1" and fields["STATUS"] == "3 nodes ready"


async def test_without_notify_socket_the_notifier_is_silent(monkeypatch, autojump_clock):
    created = []
    monkeypatch.setattr(
        "scheduler.systemd.socket.socket",
        lambda *args, **kw: created.append(args) or pytest.fail("socket opened"),
    )
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (Notifier({"WATCHDOG_USEC": "200000"}), Notifier()):
        assert notifier.enabled is False
        notifier.ready("x")
        notifier.stopping()
        notifier.notify("WATCHDOG=1")
        with trio.move_on_after(60):
            await notifier.run(lambda: "status")
    assert created == []


def test_watchdog_is_for_another_process_or_disabled():
    other = str(os.getpid() + 1)
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": other}
        ).watchdog_interval
        is None
    )
    assert Notifier(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    ).watchdog_interval == pytest.approx(0.1)
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_an_unreachable_notify_socket_is_a_warning_not_a_crash(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    with caplog.at_level(logging.WARNING, logger="scheduler.systemd"):
        notifier.ready("x")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "sd_notify" in caplog.records[0].getMessage()


# -- grpc.health.v1 ------------------------------------------------------------------------------


async def test_health_check_is_serving_while_running():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        reply = await aio(HealthStub(channel).Check)(HealthCheckRequest())
        assert reply.status == HealthCheckResponse.SERVING


async def test_health_watch_sees_not_serving_when_shutdown_begins():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        send, statuses = trio.open_memory_channel(100)

        async def watch():
            try:
                async with HealthStub(channel).Watch.open() as stream:
                    await stream.send_message(HealthCheckRequest(), end=True)
                    async for reply in stream:
                        send.send_nowait(reply.status)
            except (GRPCError, StreamTerminatedError) as err:
                send.send_nowait(err)
            finally:
                send.close()

        task = trio_asyncio.current_loop.get().create_task(watch())
        try:
            assert await statuses.receive() == HealthCheckResponse.SERVING
            scheduler.shutdown.set()
            after = await statuses.receive()
            assert after == HealthCheckResponse.NOT_SERVING, (
                f"the Watch stream saw {after!r} after shutdown, not NOT_SERVING"
            )
        finally:
            task.cancel()


def test_healthz_answers_503_while_draining():
    registry = None  # /healthz never reads the registry
    reply = HttpReply(
        _respond(b"GET /healthz HTTP/1.1\r\n\r\n", registry, lambda: (False, "draining"))
    )
    assert (reply.status, reply.body) == (503, b"draining\n")


# -- server reflection ---------------------------------------------------------------------------

EXPECTED_SERVICES = {
    "scheduler.agent.LifecycleService",
    "scheduler.agent.StatusUpdateService",
    "scheduler.controller.SchedulingService",
    "scheduler.controller.ClusterService",
    "grpc.health.v1.Health",
}


async def reflect(channel, version: str, **request):
    """One ServerReflectionInfo exchange with reflection `version` ("v1" or "v1alpha")."""
    if version == "v1":
        from grpclib.reflection.v1 import reflection_grpc, reflection_pb2
    else:
        from grpclib.reflection.v1alpha import reflection_grpc, reflection_pb2
    stub = reflection_grpc.ServerReflectionStub(channel)

    async def call():
        async with stub.ServerReflectionInfo.open() as stream:
            await stream.send_message(reflection_pb2.ServerReflectionRequest(**request), end=True)
            return [reply async for reply in stream]

    return await aio(call)()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_every_service(version):
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        [reply] = await reflect(channel, version, list_services="")
        listed = {service.name for service in reply.list_services_response.service}
        missing = EXPECTED_SERVICES - listed
        assert not missing, (
            f"reflection ({version}) does not list {sorted(missing)}; it lists {sorted(listed)}. "
            "the Health servable must be among the servables app.py passes to "
            "with_reflection(), or grpcurl cannot see grpc.health.v1.Health"
        )


async def test_reflection_describes_our_services():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        [reply] = await reflect(
            channel, "v1", file_containing_symbol="scheduler.controller.ClusterService"
        )
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        files = [
            FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]
        services = {f"{f.package}.{s.name}" for f in files for s in f.service}
        assert "scheduler.controller.ClusterService" in services


# -- /metrics and /healthz ------------------------------------------------------------------------


async def test_metrics_parse_and_start_at_zero():
    async with running_scheduler() as scheduler:
        samples = await scrape(scheduler)
        for state in ("ready", "left", "lost"):
            assert metric(samples, "orka_scheduler_nodes", state=state) == 0
        assert metric(samples, "orka_scheduler_status_messages_total") == 0
        assert metric(samples, "orka_scheduler_watchers") == 0
        assert metric(samples, "orka_scheduler_instances") == 0
        assert metric(samples, "orka_scheduler_scheduling_seconds_count") == 0
        for outcome in ("accepted", "refused"):
            assert metric(samples, "orka_scheduler_attempts_total", outcome=outcome) == 0


async def test_status_messages_and_node_states_move_with_real_traffic():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent_a, stream_a = await open_agent(channel, scheduler, "node-a")
        agent_b, stream_b = await open_agent(channel, scheduler, "node-b")
        for i in range(9):
            await stream_a.send(status("node-a", load=float(i)))
        await wait_until(lambda: scheduler.cluster.status_messages == 11)
        samples = await scrape(scheduler)
        assert metric(samples, "orka_scheduler_status_messages_total") == 11
        assert metric(samples, "orka_scheduler_nodes", state="ready") == 2
        revision = metric(samples, "orka_scheduler_event_revision")
        assert revision >= 13  # 2 JOINED + 11 STATUS

        await agent_b.leave()
        samples = await scrape_until(scheduler, "orka_scheduler_nodes", 1, state="ready")
        assert metric(samples, "orka_scheduler_nodes", state="left") == 1
        for stream in (stream_a, stream_b):
            await drop_stream(stream)


async def test_placements_and_attempts_count_schedule_outcomes():
    config = make_config(scheduling={"attempt_timeout": 0.5})
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        _, error = await schedule(channel, scheduling_request("early"))
        assert isinstance(error, GRPCError), error  # no node yet
        async with open_nodes(channel, scheduler, ("node-a", "refuse", {})) as [node]:
            _, error = await schedule(channel, scheduling_request("web-1"))
            assert isinstance(error, GRPCError), error
            node.mode = "accept"
            await schedule(channel, scheduling_request("web-2"), until_code=RUNNING)
            samples = await scrape(scheduler)
        assert metric(samples, "orka_scheduler_placements_total", outcome="no_nodes") == 1
        assert metric(samples, "orka_scheduler_placements_total", outcome="refused") == 1
        assert metric(samples, "orka_scheduler_placements_total", outcome="placed") == 1
        assert metric(samples, "orka_scheduler_attempts_total", outcome="refused") == 1
        assert metric(samples, "orka_scheduler_attempts_total", outcome="accepted") == 1
        assert metric(samples, "orka_scheduler_scheduling_seconds_count") == 1
        assert metric(samples, "orka_scheduler_instances") == 1


async def test_watchers_gauge_follows_open_watches():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        async with FakeController(channel).watch() as events:
            await events.receive()  # the snapshot: the watch is open
            samples = await scrape(scheduler)
            assert metric(samples, "orka_scheduler_watchers") == 1
        await scrape_until(scheduler, "orka_scheduler_watchers", 0)


async def test_healthz_unknown_paths_and_methods():
    async with running_scheduler() as scheduler:
        healthz = await http(scheduler.http_port, "GET /healthz HTTP/1.1")
        assert (healthz.status, healthz.body) == (200, b"ok\n")
        unknown = await http(scheduler.http_port, "GET /nope HTTP/1.1")
        assert unknown.status == 404
        post = await http(scheduler.http_port, "POST /metrics HTTP/1.1")
        assert post.status == 405
        garbage = await http(scheduler.http_port, "HELLO")
        assert garbage.status == 400
        query = await http(scheduler.http_port, "GET /metrics?name[]=x HTTP/1.1")
        assert query.status == 200


# -- logs ----------------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line(capsys, restore_logging):
    logs.setup(level="info", fmt="json")
    log = logging.getLogger("scheduler.test")
    log.info("node %s joined", "node-ä")
    log.debug("not shown at info")
    log.warning("multi\nline")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger("grpclib.server").info("grpclib chatter is quiet")
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["message"] for e in entries] == ["node node-ä joined", "multi\nline", "failed"]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["logger"] == "scheduler.test"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry
    assert [e["level"] for e in entries] == ["info", "warning", "error"]
    assert "ValueError: boom" in entries[2]["exception"]


def test_text_logs_name_level_and_logger(capsys, restore_logging):
    logs.setup(level="warning", fmt="text")
    logging.getLogger("scheduler.test").info("hidden")
    logging.getLogger("scheduler.test").warning("shown")
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING scheduler\.test: shown", line
    )


async def test_a_join_logs_one_line_and_statuses_log_none(caplog):
    caplog.set_level(logging.INFO)
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        caplog.clear()
        agent = FakeAgent(channel, "node-logged")
        await agent.join()
        joined = [r for r in caplog.records if "node-logged" in r.getMessage()]
        assert len(joined) == 1, [r.getMessage() for r in joined]
        assert joined[0].levelno == logging.INFO and "joined" in joined[0].getMessage()

        caplog.clear()
        stream = await agent.open_stream()
        for i in range(20):
            await stream.send(status("node-logged", load=float(i)))
        await wait_until(lambda: scheduler.cluster.status_messages == 20)
        noisy = [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in caplog.records
            if r.levelno >= logging.INFO
            and (r.name.startswith("scheduler") or r.levelno >= logging.WARNING)
        ]
        assert noisy == [], f"20 status messages logged: {noisy}"
        await drop_stream(stream)


# -- the systemd unit ----------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_file_runs_a_sandboxed_notify_service_with_a_watchdog():
    unit = read_unit(UNIT_FILE)
    assert {"Unit", "Service", "Install"} <= set(unit)
    service = unit["Service"]

    def one(key):
        assert key in service, f"[Service] lacks {key}="
        return service[key][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") in ("main", "all")
    assert float(one("WatchdogSec")) > 0
    assert one("StateDirectory") == "orka-scheduler"
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("PrivateTmp") == "yes"
    reload = one("ExecReload")
    assert "HUP" in reload and "$MAINPID" in reload, reload
    assert " serve" in one("ExecStart")
    assert one("KillSignal") in ("SIGTERM", "TERM")
    # Graceful stop must fit in the stop timeout (default shutdown_grace is 5 s).
    assert float(one("TimeoutStopSec")) > 5
    assert "AF_UNIX" in one("RestrictAddressFamilies")  # sd_notify needs it
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    # ExecStart names the installed path; verify checks it exists, so point it at one that does.
    text = re.sub(
        r"(?m)^ExecStart=\S+", f"ExecStart={sys.executable} -m scheduler", UNIT_FILE.read_text()
    )
    unit = tmp_path / "orka-scheduler.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=IO_GUARD,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "orka-scheduler.service" in line
    ]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# -- the process: signals -------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\n'
        'shutdown_grace = 1.0\n[observability]\nhttp_listen = "127.0.0.1:0"\n'
        'log_format = "json"\n'
    )
    return config


@asynccontextmanager
async def serve_process(tmp_path: Path, notify_path: str):
    """`orka-scheduler serve --insecure` in a subprocess under a systemd-like environment
    ($NOTIFY_SOCKET, $WATCHDOG_USEC); yields (process, listener, port) once READY=1 arrived."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": "400000",
    }
    env.pop("WATCHDOG_PID", None)
    with trio.fail_after(IO_GUARD):
        async with NotifyListener(notify_path) as listener:
            with open(tmp_path / "stderr", "wb") as err:
                process = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "scheduler",
                        "serve",
                        "--insecure",
                        "--config",
                        str(write_config(tmp_path)),
                    ],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            try:
                ready = (await listener.until(lambda f: f.get("READY") == "1"))[-1]
                port = int(re.search(r"port (\d+)", ready["STATUS"]).group(1))
                yield process, listener, port
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def test_the_process_is_ready_when_listening_and_stops_cleanly_on_sigterm(
    tmp_path, notify_path
):
    async with serve_process(tmp_path, notify_path) as (process, listener, port):
        (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
        await listener.until(lambda f: f.get("WATCHDOG") == "1")  # Notifier() read the env
        process.send_signal(signal.SIGTERM)
        await listener.until(lambda f: f.get("STOPPING") == "1")
        assert await process.wait() == 0
    messages = [
        json.loads(line)["message"] for line in (tmp_path / "stderr").read_text().splitlines()
    ]
    assert any("received SIGTERM" in m for m in messages), messages
    assert messages[-1] == "stopped", messages


async def test_the_process_survives_a_reload(tmp_path, notify_path):
    """The unit's ExecReload sends SIGHUP; with --insecure there is nothing to reload, but the
    service must not die of it."""
    async with serve_process(tmp_path, notify_path) as (process, listener, port):
        process.send_signal(signal.SIGHUP)
        await trio.sleep(0.3)
        assert process.poll() is None, (
            f"SIGHUP (systemctl reload) killed `serve --insecure` (returncode "
            f"{process.returncode}): cmd_serve must start reload_on_sighup with or without "
            "TLS, or SIGHUP keeps its default action (terminate)"
        )
        await listener.until(lambda f: f.get("WATCHDOG") == "1")  # still alive and pinging
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def test_process_tuning_belongs_to_the_serve_command_not_to_serve():
    # gc tuning is process-wide: `app.serve`, which every integration test and embedder calls,
    # leaves the collector as it was; `orka-scheduler serve` tunes it once it has started.
    import gc

    from scheduler import cli

    before = gc.get_threshold(), gc.get_freeze_count()
    async with running_scheduler(make_config()):
        pass
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
    source = Path(cli.__file__).read_text()
    start, end = source.index("def cmd_serve"), source.index("async def _wait_for_signals")
    serve_command = source[start:end]
    assert "await serving.start(" in serve_command and "tune_gc()" in serve_command
    try:
        cli.tune_gc()
        assert gc.get_threshold() == cli.GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before[0])
