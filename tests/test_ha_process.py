"""High availability with real processes and real signals against a real etcd (SPEC §4.1):
kill -9 failover and a restarted old leader staying standby; a leader frozen (SIGSTOP) past
its lease is fenced and never serves beside the new one; SIGTERM resigns within a second; a
Create that reached an Agent just before the leader died is reconciled, never running twice
unnoticed; SIGHUP reloads the etcd client certificate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from scheduler import pki
from scheduler._proto import controller_pb2
from scheduler._proto.etcd import rpc_pb2
from scheduler.etcd import EtcdClient
from scheduler.sim.local_etcd import MemberTls
from tests.etcd_server import EtcdCluster, free_port, pause, resume
from tests.fakes import (
    FakeAgent,
    FakeController,
    RecordingWorkloadAgent,
    destroy_instance,
    drop_stream,
    event_kind,
    make_channel,
    open_schedule,
    scheduling_request,
    status,
)
from tests.test_ha import healthz

ROOT = Path(__file__).resolve().parent.parent
LEASE = 2.0  # s
IO_GUARD = 40  # s per test
RUNNING, TERMINATED = controller_pb2.Status.RUNNING, controller_pb2.Status.TERMINATED


@pytest.fixture
def etcd():
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.close()


class SchedulerProcess:
    """`python -m scheduler serve` with the etcd backend, on free loopback ports."""

    def __init__(
        self, etcd: EtcdCluster, prefix: str, directory: Path, name: str, etcd_tls: str = ""
    ) -> None:
        """`etcd_tls`: more lines of [etcd] (ca, cert, key)."""
        self.port, self.http_port = free_port(), free_port()
        self.name = name
        self.config = directory / f"{name}.toml"
        self.log = directory / f"{name}.log"
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\ndata_dir = "{directory / name}"\n'
            f'shutdown_grace = 1.0\n[observability]\nhttp_listen = "127.0.0.1:{self.http_port}"\n'
            f"[liveness]\nnode_timeout = 5.0\n[scheduling]\nattempt_timeout = 1.0\n"
            f'[store]\nbackend = "etcd"\n'
            f'[etcd]\nendpoints = [{endpoints}]\nprefix = "{prefix}"\nlease_ttl = {LEASE}\n'
            + etcd_tls
        )
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> SchedulerProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scheduler",
                "serve",
                "--insecure",
                "--config",
                str(self.config),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )  # noqa: SIM115
        with trio.fail_after(15):
            while await self.health() is None:
                assert self.process.poll() is None, self.log.read_text()
                await trio.sleep(0.05)
        return self

    async def health(self) -> tuple[int, str] | None:
        """(HTTP status, body) of /healthz; None while it does not answer."""
        try:
            with trio.fail_after(2):
                return await healthz(self.http_port)
        except (trio.BrokenResourceError, OSError, trio.TooSlowError, IndexError, ValueError):
            return None

    async def leads(self) -> bool:
        return (await self.health() or (0, ""))[0] == 200

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def pair(etcd, tmp_path):
    prefix = f"/test-{os.getpid()}-{time.monotonic_ns()}"
    processes = [SchedulerProcess(etcd, prefix, tmp_path, name) for name in ("a", "b")]
    yield processes
    for process in processes:
        resume(process.process) if process.process and process.process.poll() is None else None
        process.stop()


async def wait_for_leader(processes, timeout: float) -> SchedulerProcess:
    """The one process that leads, within `timeout` s; fails if two lead at once."""
    with trio.fail_after(timeout):
        while True:
            leading = [p for p in processes if await p.leads()]
            assert len(leading) <= 1, "two leaders at once"
            if leading:
                return leading[0]
            await trio.sleep(0.02)


async def start_pair(pair) -> tuple[SchedulerProcess, SchedulerProcess]:
    for process in pair:
        await process.start()
    leader = await wait_for_leader(pair, LEASE + 5)
    return leader, next(p for p in pair if p is not leader)


async def join_and_report(leader: SchedulerProcess, agent_port: int):
    """Node node-1 joins `leader` and reports once; (the channel, the open status stream)."""
    channel = await make_channel(leader.port)
    agent = FakeAgent(channel, "node-1", agent_port)
    await agent.join()
    stream = await agent.report()
    await trio.sleep(0.2)  # the status is applied before anything is scheduled
    return channel, stream


async def test_kill_9_a_standby_serves_within_the_lease_and_the_old_leader_stays_standby(pair):
    with trio.fail_after(IO_GUARD):
        leader, standby = await start_pair(pair)
        async with trio_asyncio.open_loop():
            workloads = RecordingWorkloadAgent("node-1")
            agent_port = await workloads.start()
            try:
                channel, stream = await join_and_report(leader, agent_port)
                async with FakeController(channel).watch() as events:
                    head = await events.receive()
                    async with open_schedule(channel, scheduling_request("web-1")) as call:
                        await call.until(RUNNING)  # acknowledged
                        await call.cancel()
                    await trio.sleep(0.1)  # past the 20 ms batch of unacknowledged writes
                await drop_stream(stream)
                channel.close()

                killed = time.monotonic()
                leader.signal(signal.SIGKILL)
                leader.process.wait(timeout=5)
                successor = await wait_for_leader([standby], LEASE + 2)
                assert time.monotonic() - killed <= LEASE + 2
                assert successor is standby

                channel = await make_channel(standby.port)
                async with FakeController(channel).watch(head.epoch, head.revision) as events:
                    first = await events.receive()
                    assert event_kind(first) == "INSTANCE", "resumed without a snapshot"
                    assert first.epoch == head.epoch and first.instance.instance_id == "web-1"
                nodes = await FakeController(channel).list_nodes()
                assert [(n.id, list(n.instance_ids)) for n in nodes] == [("node-1", ["web-1"])]

                await leader.start()  # the old leader comes back: it stands by
                await trio.sleep(0.5)
                assert await leader.health() == (503, f"standby; leader at {standby.address}")
                old = await make_channel(leader.port)
                with pytest.raises(GRPCError) as refused:
                    await FakeAgent(old, "node-1", agent_port).join()
                assert refused.value.status is Status.UNAVAILABLE
                assert f"leader at {standby.address}" in refused.value.message
                old.close()
                channel.close()
            finally:
                await workloads.stop()


async def test_a_leader_frozen_past_its_lease_is_fenced_and_never_serves_beside_the_new_one(
    pair, etcd
):
    with trio.fail_after(IO_GUARD):
        leader, standby = await start_pair(pair)
        async with trio_asyncio.open_loop():
            client = EtcdClient(tuple(("127.0.0.1", m.client_port) for m in etcd.members))
            try:
                prefix = pair[0].config.read_text().split('prefix = "')[1].split('"')[0]
                items, _ = await client.load(f"{prefix}/election/".encode())
                old_key = min(items, key=lambda kv: kv.create_revision)
                assert old_key.value.decode() == leader.address

                pause(leader.process)  # frozen, as by a long GC pause or a stalled VM
                try:
                    await wait_for_leader([standby], LEASE + 2)
                    fenced = await client.txn(
                        rpc_pb2.TxnRequest(
                            compare=[
                                rpc_pb2.Compare(
                                    result=rpc_pb2.Compare.EQUAL,
                                    target=rpc_pb2.Compare.CREATE,
                                    key=old_key.key,
                                    create_revision=old_key.create_revision,
                                )
                            ],
                            success=[
                                rpc_pb2.RequestOp(
                                    request_put=rpc_pb2.PutRequest(
                                        key=f"{prefix}/state/nodes/intruder".encode(), value=b"x"
                                    )
                                )
                            ],
                        )
                    )
                    assert not fenced.succeeded, "the old leader's fenced write is refused"
                finally:
                    resume(leader.process)
                # Back from the freeze: it must never serve beside the new leader.
                channel = await make_channel(leader.port)
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    assert not await leader.leads()
                    with pytest.raises(GRPCError) as refused:
                        await FakeAgent(channel, "node-9", 7000).join()
                    assert refused.value.status is Status.UNAVAILABLE
                    assert await standby.leads()
                    await trio.sleep(0.05)
                channel.close()
                assert "stepped down" in leader.log.read_text()
            finally:
                client.close()


async def test_sigterm_resigns_and_a_standby_serves_within_a_second(pair):
    with trio.fail_after(IO_GUARD):
        leader, standby = await start_pair(pair)
        started = time.monotonic()
        leader.signal(signal.SIGTERM)
        await wait_for_leader([standby], 1.5)
        assert time.monotonic() - started <= 1.0, "a resign hands over within a second"
        assert leader.process.wait(timeout=5) == 0
        assert "resigned the leadership" in leader.log.read_text()


async def test_a_create_that_reached_an_agent_as_the_leader_died_never_runs_twice_unnoticed(pair):
    with trio.fail_after(IO_GUARD):
        leader, standby = await start_pair(pair)
        async with trio_asyncio.open_loop():
            workloads = RecordingWorkloadAgent("node-1", mode="hang")  # Create never answered
            agent_port = await workloads.start()
            try:
                channel, stream = await join_and_report(leader, agent_port)
                async with open_schedule(channel, scheduling_request("job-1")) as call:
                    with trio.fail_after(5):
                        while "job-1" not in workloads.created:
                            await trio.sleep(0.01)
                    leader.signal(signal.SIGKILL)  # dies before the Agent answered
                    _, error = await call.result()
                    assert error is not None, "never acknowledged"
                await drop_stream(stream)
                channel.close()
                await wait_for_leader([standby], LEASE + 2)

                channel = await make_channel(standby.port)
                async with FakeController(channel).watch() as events:
                    assert event_kind(await events.receive()) == "SNAPSHOT"
                    agent = FakeAgent(channel, "node-1", agent_port)
                    await agent.join()  # the Agent rejoins the new leader and reports job-1
                    stream = await agent.open_stream()
                    await stream.send(status("node-1", instances=[("job-1", RUNNING)]))
                    while True:
                        event = await events.receive()
                        if event_kind(event) == "INSTANCE":
                            break
                    assert event.instance.instance_id == "job-1"
                    assert event.instance.node_id == "node-1"
                    assert "not placed by this scheduler" in event.instance.status.message

                    async with open_schedule(channel, scheduling_request("job-1")) as call:
                        _, error = await call.result()
                    assert error is not None and error.status is Status.ALREADY_EXISTS, error
                    assert "runs on node node-1" in error.message
                    assert workloads.created == ["job-1"], "not created a second time"

                    assert await destroy_instance(channel, "job-1") is None
                    assert ("job-1", 1) in workloads.signals, "the KILL reached its Agent"
                    await stream.send(status("node-1", instances=[]))
                    while True:
                        event = await events.receive()
                        if event_kind(event) == "INSTANCE":
                            break
                    assert event.instance.status.code == TERMINATED
                await drop_stream(stream)
                channel.close()
            finally:
                await workloads.stop()


async def test_sighup_reloads_the_etcd_client_certificate(tmp_path):
    # The scheduler's client certificate for etcd is not one etcd accepts (another CA, as
    # after an expiry or a CA change): it cannot campaign and stands by. The operator puts a
    # good certificate in place and sends SIGHUP (systemctl reload): no restart, it leads.
    trusted, other = pki.init_pki(tmp_path / "trusted"), pki.init_pki(tmp_path / "other")
    cluster = EtcdCluster(
        1, tls=MemberTls(trusted.ca, trusted.scheduler.cert, trusted.scheduler.key)
    ).start()
    cert, key = tmp_path / "etcd-client.pem", tmp_path / "etcd-client.key"

    def install(pair: pki.CertPair) -> None:
        for source, target in ((pair.cert, cert), (pair.key, key)):
            shutil.copyfile(source, target.with_suffix(".new"))
            target.with_suffix(".new").replace(target)

    install(other.controller("controller"))
    process = SchedulerProcess(
        cluster,
        "/sighup",
        tmp_path,
        "a",
        etcd_tls=(f'ca = "{trusted.ca}"\ncert = "{cert}"\nkey = "{key}"\n'),
    )
    try:
        with trio.fail_after(IO_GUARD):
            await process.start()
            while "cannot campaign" not in process.log.read_text():
                await trio.sleep(0.05)
            assert await process.health() == (503, "standby; leader at (none yet)")

            install(trusted.controller("controller"))
            process.signal(signal.SIGHUP)
            await wait_for_leader([process], LEASE + 5)
            assert (
                "SIGHUP: reloaded etcd TLS certificates from " + str(cert)
                in process.log.read_text()
            )

            cert.write_text("not a certificate\n")  # a botched rotation: logged, nothing lost
            process.signal(signal.SIGHUP)
            while "etcd certificates NOT reloaded" not in process.log.read_text():
                await trio.sleep(0.05)
            assert f"etcd.cert: {cert} holds no PEM certificate" in process.log.read_text()
            await trio.sleep(LEASE)  # renewals go on with the loaded certificate
            assert await process.leads()
    finally:
        process.stop()
        cluster.close()
