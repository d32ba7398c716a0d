"""Restart without loss (durable state in the data directory): in-process restarts over real
sockets, and a scheduler process SIGKILLed mid-traffic and started again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from grpclib.const import Status

from scheduler._proto import controller_pb2
from scheduler.model import NodeState
from scheduler.store import SqliteBackend, Store, StoreError
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    RecordingWorkloadAgent,
    drop_stream,
    open_channel,
    open_schedule,
    scheduling_request,
    status,
    stop_instance,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
RUNNING, TERMINATED = controller_pb2.Status.RUNNING, controller_pb2.Status.TERMINATED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_for(data_dir: str, port: int, node_timeout: float = 5.0):
    return make_config(
        server={"listen": f"127.0.0.1:{port}", "data_dir": data_dir},
        liveness={"node_timeout": node_timeout},
        scheduling={"attempt_timeout": 1.0},
    )


@asynccontextmanager
async def agent_with_workloads(channel, node_id: str):
    """A fake Agent (status + lifecycle client) whose WorkloadService outlives the scheduler."""
    workloads = RecordingWorkloadAgent("accept")
    port = await workloads.start()
    try:
        yield FakeAgent(channel, node_id, port), workloads
    finally:
        await workloads.stop()


async def run_and_place(config, channel, agent, instance_ids, memory=None):
    """Serve one run of a scheduler: the Agent joins and reports, the instances are placed and
    their Controller goes away; return (epoch, revision) at the end of the run."""
    async with running_scheduler(config) as scheduler:
        await agent.join()
        stream = await agent.report()
        await wait_until(lambda: scheduler.cluster.nodes[agent.node_id].metrics is not None)
        for instance_id in instance_ids:
            request = scheduling_request(instance_id, memory=memory)
            async with open_schedule(channel, request) as call:
                await call.until(RUNNING)
                await call.cancel()
        head = scheduler.events.epoch, scheduler.events.revision
    await drop_stream(stream)
    return head


async def test_restart_keeps_epoch_nodes_placements_and_stop_still_works():
    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    async with open_channel(port) as channel:
        async with agent_with_workloads(channel, "node-1") as (agent, workloads):
            epoch, revision = await run_and_place(
                config_for(data_dir, port), channel, agent, ["web-1"], memory=64
            )

            async with running_scheduler(config_for(data_dir, port)) as second:
                assert second.events.epoch == epoch, "the same epoch continues"
                assert second.events.revision > revision
                node = second.cluster.nodes["node-1"]
                assert node.state is NodeState.READY and "web-1" in node.placed
                assert [s.instance_id for s in second.instances.statuses()] == ["web-1"]
                # A watcher resumes where it was: no snapshot, then what happens next.
                async with FakeController(channel).watch(epoch, revision) as events:
                    await agent.join()  # the Agent rejoins from the same address
                    event = await events.receive()
                    assert event.WhichOneof("event") == "node", event
                    assert controller_pb2.NodeEvent.Kind.Name(event.node.kind) == "JOINED"
                    assert list(event.node.node.instance_ids) == ["web-1"]
                assert await stop_instance(channel, "web-1") is None, "placed before the restart"
                assert workloads.signals == [("web-1", 0)]
                error = await _schedule_error(channel, "web-1")
                assert error is not None and error.status is Status.ALREADY_EXISTS, error


async def _schedule_error(channel, instance_id):
    async with open_schedule(channel, scheduling_request(instance_id, memory=64)) as call:
        _, error = await call.result()
    return error


async def test_a_node_that_does_not_rejoin_is_lost_with_its_instances():
    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    async with open_channel(port) as channel:
        async with agent_with_workloads(channel, "node-1") as (agent, workloads):
            await run_and_place(config_for(data_dir, port), channel, agent, ["web-1"])
            async with running_scheduler(config_for(data_dir, port, node_timeout=0.5)) as second:
                async with FakeController(channel).watch() as events:
                    snapshot = await events.receive()
                    assert [n.id for n in snapshot.snapshot.nodes] == ["node-1"]
                    with trio.fail_after(3):
                        while True:
                            event = await events.receive()
                            if (
                                event.WhichOneof("event") == "node"
                                and controller_pb2.NodeEvent.Kind.Name(event.node.kind) == "LOST"
                            ):
                                break
                    assert list(event.node.node.instance_ids) == ["web-1"]
                assert second.cluster.nodes["node-1"].state is NodeState.LOST
                error = await stop_instance(channel, "web-1")
                assert error is not None and error.status is Status.UNAVAILABLE, error


async def test_reports_reconcile_restored_instances_and_announce_unknown_ones():
    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    async with open_channel(port) as channel:
        async with agent_with_workloads(channel, "node-1") as (agent, workloads):
            await run_and_place(config_for(data_dir, port), channel, agent, ["a-1", "b-1"])
            async with running_scheduler(config_for(data_dir, port)) as second:
                async with FakeController(channel).watch() as events:
                    await events.receive()  # snapshot
                    await agent.join()
                    # a-1 still runs, b-1 is gone, x-9 was never placed here.
                    stream = await agent.open_stream()
                    await stream.send(status("node-1", instances=[("a-1", 1), ("x-9", 1)]))
                    seen = {}
                    with trio.fail_after(3):
                        while len(seen) < 2:
                            event = await events.receive()
                            if event.WhichOneof("event") == "instance":
                                seen[event.instance.instance_id] = event.instance
                    await drop_stream(stream)
                assert seen["b-1"].status.code == TERMINATED
                assert "vanished" in seen["b-1"].status.message
                assert seen["x-9"].node_id == "node-1"
                assert "not placed" in seen["x-9"].status.message
                latest = {s.instance_id: s.code.name for s in second.instances.statuses()}
                assert latest == {"a-1": "RUNNING", "b-1": "TERMINATED"}


def test_a_second_scheduler_on_the_same_data_dir_is_refused(tmp_path):
    first = SqliteBackend(tmp_path)
    try:
        with pytest.raises(StoreError, match="another scheduler is using"):
            SqliteBackend(tmp_path)
    finally:
        first.close()


async def test_sigkill_mid_traffic_then_restart_loses_no_acknowledged_placement(tmp_path):
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "data"}"\n'
        '[observability]\nhttp_listen = ""\n[liveness]\nnode_timeout = 5.0\n'
    )
    command = [sys.executable, "-m", "scheduler", "serve", "--insecure", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    async def start():
        process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        with trio.fail_after(10):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return process
                except OSError:
                    await trio.sleep(0.05)

    process = await start()
    try:
        async with open_channel(port) as channel:
            async with agent_with_workloads(channel, "node-1") as (agent, workloads):
                await agent.join()
                stream = await agent.report()

                async def reported():  # the status is applied before the first Schedule
                    nodes = await FakeController(channel).list_nodes()
                    return bool(nodes) and nodes[0].memory_total > 0

                with trio.fail_after(5):
                    while not await reported():
                        await trio.sleep(0.01)
                placed = []
                for index in range(5):
                    async with open_schedule(channel, scheduling_request(f"k-{index}")) as call:
                        await call.until(RUNNING)
                        placed.append(f"k-{index}")
                        await call.cancel()
                head = await _watch_head(channel)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=5)
                await drop_stream(stream)
                process = await start()
                async with FakeController(channel).watch(head.epoch, head.revision) as watch:
                    await agent.join()
                    event = await watch.receive()
                    assert event.WhichOneof("event") == "node", "resumed without a snapshot"
                    assert event.epoch == head.epoch and event.revision > head.revision
                    assert controller_pb2.NodeEvent.Kind.Name(event.node.kind) == "JOINED"
                nodes = await FakeController(channel).list_nodes()
                assert [(n.id, n.state) for n in nodes] == [("node-1", controller_pb2.Node.READY)]
                assert sorted(nodes[0].instance_ids) == placed
                for instance_id in placed:
                    assert await stop_instance(channel, instance_id) is None, instance_id
                assert sorted(i for i, _ in workloads.signals) == placed
    finally:
        process.kill()
        process.wait(timeout=5)


async def _watch_head(channel):
    """(epoch, revision) of the scheduler's newest event, as a watcher sees it."""
    async with FakeController(channel).watch() as events:
        return await events.receive()


async def test_writes_that_acknowledge_nothing_are_committed_together(tmp_path, autojump_clock):
    # Node changes and events are committed every COMMIT_INTERVAL while Store.run() runs: a
    # wave of 100 joins (or 10,000 losses) is one transaction, not one per node.
    import sqlite3

    from scheduler.store import COMMIT_INTERVAL

    store = Store(SqliteBackend(tmp_path / "data"), retained=100)
    reader = sqlite3.connect(store.backend.path)

    def committed() -> int:
        return reader.execute("SELECT COUNT(*) FROM state WHERE key LIKE 'nodes/%'").fetchone()[0]

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for number in range(100):
                store.save_node(f"node-{number}", "10.0.0.1", 7000, NodeState.READY, 1, 0.0)
            await trio.sleep(COMMIT_INTERVAL / 2)
            assert committed() == 0, "not before the interval"
            await trio.sleep(COMMIT_INTERVAL)
            assert committed() == 100, "all of them in the next commit"
            store.save_node("late", "10.0.0.1", 7000, NodeState.READY, 1, 0.0)
            nursery.cancel_scope.cancel()
        assert committed() == 101, "what is queued when run() ends is committed then"
    finally:
        reader.close()
        store.backend.close()


async def test_a_forgotten_node_is_not_restored():
    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    config = config_for(data_dir, port).replace(liveness={"departed_retained": 1})
    async with open_channel(port) as channel:
        async with running_scheduler(config) as scheduler:
            for node_id in ("node-a", "node-b"):
                agent = FakeAgent(channel, node_id)
                await agent.join()
                await agent.leave()
            assert set(scheduler.cluster.nodes) == {"node-b"}, "node-a departed first"
        async with running_scheduler(config_for(data_dir, port)) as second:
            assert {n: node.state for n, node in second.cluster.nodes.items()} == {
                "node-b": NodeState.LEFT
            }


async def test_the_event_log_size_after_a_restart_counts_retained_events():
    # The revisions jump past every one the previous run may have used (checkpoint +
    # 1,000,000): revision - first retained + 1 counted that gap, not the events retained.
    from tests.test_operations import metric, scrape

    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    async with open_channel(port) as channel:
        async with agent_with_workloads(channel, "node-1") as (agent, _):
            await run_and_place(config_for(data_dir, port), channel, agent, ["web-1"])
            async with running_scheduler(config_for(data_dir, port)) as second:
                retained = len(second.events)
                assert 0 < retained < 100 and second.events.revision >= 1_000_000
                samples = await scrape(second)
                assert metric(samples, "orka_scheduler_event_log_size") == retained


async def test_the_retention_bounds_come_from_the_config():
    data_dir, port = tempfile.mkdtemp(prefix="orka-restart-"), free_port()
    config = config_for(data_dir, port).replace(
        liveness={"departed_retained": 7}, scheduling={"finished_retained": 9}
    )
    async with running_scheduler(config) as scheduler:
        assert scheduler.cluster.departed_retained == 7
        assert scheduler.instances.finished_retained == 9
