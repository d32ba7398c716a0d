"""High availability against a real etcd (SPEC §4.1), in process: two schedulers on one etcd
elect one leader; the standby's answers; resign on shutdown and the Controller's watch resumed
on the new leader without a snapshot; every acknowledged placement known after the failover;
etcd unavailable (logged once, not per retry); TLS to etcd with client certificates.
Process-level tests (SIGKILL, SIGSTOP fencing, SIGTERM, SIGHUP) are in test_ha_process.py."""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager

import grpc
import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1 import health_grpc, health_pb2

from scheduler import pki
from scheduler._proto import agent_pb2, controller_pb2
from scheduler.app import serve
from scheduler.model import NodeState
from scheduler.sim.local_etcd import MemberTls
from tests.conftest import make_config
from tests.etcd_server import EtcdCluster, free_port
from tests.fakes import (
    FakeAgent,
    FakeController,
    RecordingWorkloadAgent,
    aio,
    drop_stream,
    event_kind,
    open_channel,
    open_schedule,
    scheduling_request,
    stop_instance,
    wait_event,
    wait_until,
)

IO_GUARD = 30  # s: an HA test waits for leases, never longer than this
LEASE = 2.0  # s: short, so failovers in tests are quick
RUNNING = controller_pb2.Status.RUNNING


@pytest.fixture(scope="module")
def etcd():
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.close()


def ha_config(etcd: EtcdCluster, prefix: str, lease_ttl: float = LEASE):
    return make_config(
        store={"backend": "etcd"},
        etcd={"endpoints": etcd.endpoints, "prefix": prefix, "lease_ttl": lease_ttl},
        liveness={"node_timeout": 5.0},
        scheduling={"attempt_timeout": 1.0},
    )


def new_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def schedulers(configs):
    """Serve each config (each its own listener, HTTP port and data_dir); yield them."""
    async with trio.open_nursery() as nursery:
        running = []
        for config in configs:
            shutdown = trio.Event()
            scheduler = await nursery.start(
                lambda task_status, c=config, s=shutdown: serve(
                    c, ssl_context=None, shutdown=s, task_status=task_status
                )
            )
            running.append(scheduler)
        try:
            with trio.fail_after(IO_GUARD):
                yield running
        finally:
            for scheduler in running:
                scheduler.shutdown.set()


async def the_leader(schedulers_, timeout: float = LEASE + 3):
    with trio.fail_after(timeout):
        while True:
            leading = [s for s in schedulers_ if s.leading]
            if leading:
                assert len(leading) == 1, "two leaders at once"
                return leading[0]
            await trio.sleep(0.01)


async def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET `path` on the scheduler's HTTP endpoint at 127.0.0.1:port."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode().strip()


async def healthz(port: int) -> tuple[int, str]:
    return await http_get(port, "/healthz")


async def test_one_leads_and_the_standby_names_it_to_every_client(etcd):
    prefix = new_prefix()
    async with schedulers([ha_config(etcd, prefix), ha_config(etcd, prefix)]) as (a, b):
        leader = await the_leader([a, b])
        standby = b if leader is a else a
        await trio.sleep(0.2)
        assert not standby.leading, "exactly one leads"
        assert leader.advertise == f"127.0.0.1:{leader.port}"
        await wait_until(lambda: standby.leader() == leader.advertise)

        async with open_channel(standby.port) as channel:
            with pytest.raises(GRPCError) as refused:
                await FakeAgent(channel, "node-1").join()
            assert refused.value.status is Status.UNAVAILABLE
            assert f"leader at {leader.advertise}" in refused.value.message
            with pytest.raises(GRPCError) as listing:
                await FakeController(channel).list_nodes()
            assert listing.value.status is Status.UNAVAILABLE
            check = health_grpc.HealthStub(channel).Check
            reply = await aio(check)(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        async with open_channel(leader.port) as channel:
            await FakeAgent(channel, "node-1").join()  # the leader serves
            check = aio(health_grpc.HealthStub(channel).Check)
            reply = await check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        assert await healthz(leader.http_port) == (200, "ok")
        assert await healthz(standby.http_port) == (503, f"standby; leader at {leader.advertise}")

        # The official client sees the same: UNAVAILABLE and the trailing metadata.
        def with_grpcio() -> tuple:
            with grpc.insecure_channel(
                f"127.0.0.1:{standby.port}", options=[("grpc.enable_http_proxy", 0)]
            ) as channel:
                join = channel.unary_unary(
                    "/scheduler.agent.LifecycleService/JoinCluster",
                    request_serializer=agent_pb2.ConnectionRequest.SerializeToString,
                    response_deserializer=agent_pb2.Empty.FromString,
                )
                check = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                health = check(health_pb2.HealthCheckRequest(), timeout=5).status
                try:
                    join(agent_pb2.ConnectionRequest(id="node-2", port=7000), timeout=5)
                except grpc.RpcError as err:
                    return err.code(), dict(err.trailing_metadata()), health
            return None, {}, health

        code, trailers, health = await trio.to_thread.run_sync(with_grpcio)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert trailers.get("orka-leader") == leader.advertise
        assert health == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_resign_hands_over_within_a_second_and_nothing_acknowledged_is_lost(etcd):
    prefix = new_prefix()
    configs = [ha_config(etcd, prefix), ha_config(etcd, prefix)]
    async with trio_asyncio.open_loop():
        workloads = RecordingWorkloadAgent("node-1", mode="accept")
        agent_port = await workloads.start()
        try:
            await _resign_and_resume(configs, workloads, agent_port)
        finally:
            await workloads.stop()


async def _resign_and_resume(configs, workloads, agent_port):
    if True:
        async with schedulers(configs) as (a, b):
            leader = await the_leader([a, b])
            standby = b if leader is a else a
            async with open_channel(leader.port) as channel:
                agent = FakeAgent(channel, "node-1", agent_port)
                await agent.join()
                stream = await agent.report()
                await wait_until(lambda: leader.cluster.nodes["node-1"].metrics is not None)
                async with FakeController(channel).watch() as events:
                    snapshot = await events.receive()
                    epoch, seen = snapshot.epoch, snapshot.revision
                    for instance_id in ("web-1", "web-2"):
                        async with open_schedule(channel, scheduling_request(instance_id)) as call:
                            await call.until(RUNNING)
                            await call.cancel()
                    await FakeAgent(channel, "node-2", 7002).join()
                    await wait_event(events, "JOINED", "node-2")
                await drop_stream(stream)

            started = time.monotonic()
            leader.shutdown.set()
            successor = await the_leader([standby], timeout=3)
            assert time.monotonic() - started <= 1.0, "a resign hands over within a second"

            async with open_channel(successor.port) as channel:
                async with FakeController(channel).watch(epoch, seen) as events:
                    kinds = []
                    with trio.fail_after(5):
                        while ("JOINED", "node-2") not in kinds:
                            event = await events.receive()
                            assert not isinstance(event, Exception), event
                            assert event.epoch == epoch, "the epoch continues"
                            kinds.append(
                                (
                                    event_kind(event),
                                    event.node.node.id
                                    if event.WhichOneof("event") == "node"
                                    else event.instance.instance_id,
                                )
                            )
                    assert "SNAPSHOT" not in [kind for kind, _ in kinds], kinds
                    placed = [name for kind, name in kinds if kind == "INSTANCE"]
                    assert sorted(set(placed), key=placed.index) == ["web-1", "web-2"], kinds
                nodes = {n.id: n for n in await FakeController(channel).list_nodes()}
                assert sorted(nodes["node-1"].instance_ids) == ["web-1", "web-2"]
                agent = FakeAgent(channel, "node-1", agent_port)
                await agent.join()  # the Agent rejoins the new leader from the same address
                assert await stop_instance(channel, "web-1") is None
                assert ("web-1", 0) in workloads.signals


async def test_etcd_unavailable_loses_nothing_acknowledged_and_says_so():
    private = EtcdCluster(1).start()
    try:
        async with trio_asyncio.open_loop():
            workloads = RecordingWorkloadAgent("node-1")
            agent_port = await workloads.start()
            try:
                await _etcd_goes_away(private, workloads, agent_port)
            finally:
                await workloads.stop()
    finally:
        private.close()


async def _etcd_goes_away(private, workloads, agent_port):
    async with schedulers([ha_config(private, new_prefix())]) as (scheduler,):
        await the_leader([scheduler])
        async with open_channel(scheduler.port) as channel:
            agent = FakeAgent(channel, "node-1", agent_port)
            await agent.join()
            stream = await agent.report()
            await wait_until(lambda: scheduler.cluster.nodes["node-1"].metrics is not None)
            async with open_schedule(channel, scheduling_request("web-1")) as call:
                await call.until(RUNNING)  # acknowledged: durable in etcd
                await call.cancel()

            private.stop()  # etcd is gone
            async with open_schedule(channel, scheduling_request("web-2")) as call:
                _, error = await call.result()
            assert error is not None and error.status is Status.UNAVAILABLE, error
            assert "state store unavailable" in error.message, error.message
            with trio.fail_after(2):  # the unrecorded Create is cancelled
                await wait_until(lambda: "web-2" in workloads.cancelled)
            with trio.fail_after(LEASE + 1):  # it steps down at its renew deadline
                await wait_until(lambda: not scheduler.leading)
            with pytest.raises(GRPCError) as refused:
                await FakeController(channel).list_nodes()
            assert refused.value.status is Status.UNAVAILABLE
            await drop_stream(stream)

            private.start()  # etcd is back: a leader again, with what it acknowledged
            for member in private.members:
                member.wait_ready()
            await the_leader([scheduler], timeout=10)
            nodes = await FakeController(channel).list_nodes()
            assert [(n.id, list(n.instance_ids)) for n in nodes] == [("node-1", ["web-1"])]


async def test_three_members_a_dead_endpoint_is_skipped_and_big_commits_are_chunked():
    # The member the scheduler talks to (a follower of etcd's own Raft) dies: keep-alives,
    # Txns and the Watch move on to the next endpoint, and the leader keeps leading. (When
    # etcd's own leader dies, calls fail until etcd elects another: the etcd-unavailable case.)
    # A commit larger than etcd's 128 operations per Txn is split, in order.
    cluster = EtcdCluster(3).start()
    try:
        raft_leader = await trio.to_thread.run_sync(cluster.leader)
        cluster.members.sort(key=lambda member: member is raft_leader)  # a follower first
        async with schedulers([ha_config(cluster, new_prefix())]) as (scheduler,):
            await the_leader([scheduler], timeout=10)
            store = scheduler.store
            for number in range(300):
                store.save_node(f"n-{number}", "10.0.0.1", 7000, NodeState.LEFT, 1, 0.0)
            await store.commit_durably()
            assert await _mirrored(scheduler, 300)

            cluster.members[0].stop()  # the first endpoint, the one in use
            async with open_channel(scheduler.port) as channel:
                await FakeAgent(channel, "node-1", 7000).join()
                with trio.fail_after(3 * LEASE):
                    await wait_until(lambda: scheduler.store.commits > 0)
                    before = scheduler.store.commits
                    store.save_node("late", "10.0.0.1", 7000, NodeState.LEFT, 1, 0.0)
                    await scheduler.store.commit_durably()
                assert scheduler.store.commits > before
                await trio.sleep(LEASE)  # several renewals later it still leads
                assert scheduler.leading and scheduler.leadership_changes == 1
                _, metrics = await http_get(scheduler.http_port, "/metrics")
                assert "orka_scheduler_leader 1.0" in metrics
                assert "orka_scheduler_leadership_changes_total 1.0" in metrics
                assert "orka_scheduler_store_commit_seconds_count" in metrics
    finally:
        cluster.close()


async def _mirrored(scheduler, count: int) -> bool:
    with trio.fail_after(5):
        while sum(key.startswith("nodes/") for key, _ in scheduler.store.backend.items()) < count:
            await trio.sleep(0.01)
    return True


async def test_loading_reads_every_key_page_by_page_at_one_revision(etcd):
    from scheduler._proto.etcd import rpc_pb2
    from scheduler.etcd import RANGE_PAGE, EtcdClient

    prefix = new_prefix().encode() + b"/"
    count = 2 * RANGE_PAGE + 500
    async with trio_asyncio.open_loop():
        client = EtcdClient(tuple(("127.0.0.1", m.client_port) for m in etcd.members))
        try:
            for start in range(0, count, 100):
                await client.txn(
                    rpc_pb2.TxnRequest(
                        success=[
                            rpc_pb2.RequestOp(
                                request_put=rpc_pb2.PutRequest(
                                    key=prefix + f"k{number:05d}".encode(), value=b"v"
                                )
                            )
                            for number in range(start, min(start + 100, count))
                        ]
                    )
                )
            items, revision = await client.load(prefix)
        finally:
            client.close()
    assert len(items) == count and len({kv.key for kv in items}) == count
    assert all(kv.mod_revision <= revision for kv in items)


async def test_a_refused_fenced_write_ends_the_leadership_at_once(etcd):
    # The leader key vanishes behind the leader's back (as when its lease expired): the very
    # next write is refused, the leader steps down without waiting for its renew deadline, and
    # the call that needed the write gets UNAVAILABLE saying why.
    async with trio_asyncio.open_loop():
        workloads = RecordingWorkloadAgent("node-1")
        agent_port = await workloads.start()
        try:
            async with schedulers([ha_config(etcd, new_prefix(), lease_ttl=30.0)]) as (scheduler,):
                await the_leader([scheduler])
                async with open_channel(scheduler.port) as channel:
                    agent = FakeAgent(channel, "node-1", agent_port)
                    await agent.join()
                    stream = await agent.report()
                    await wait_until(lambda: scheduler.cluster.nodes["node-1"].metrics is not None)
                    key = scheduler.core.store.backend._fence.key
                    await trio.to_thread.run_sync(etcd.delete, key)
                    started = time.monotonic()
                    async with open_schedule(channel, scheduling_request("web-1")) as call:
                        _, error = await call.result()
                    assert error is not None and error.status is Status.UNAVAILABLE, error
                    assert "stepped down" in error.message and "fenced" in error.message
                    with trio.fail_after(2):  # the unrecorded Create is cancelled
                        await wait_until(lambda: "web-1" in workloads.cancelled)
                    await wait_until(lambda: not scheduler.leading)
                    assert time.monotonic() - started < 5, "at once, not at a renew deadline"
                    await drop_stream(stream)
        finally:
            await workloads.stop()


@pytest.fixture(scope="module")
def etcd_pki(tmp_path_factory):
    """A PKI from scheduler.pki: etcd serves with its scheduler certificate (SAN 127.0.0.1)
    and requires client certificates from its CA; the Controller certificate is one."""
    return pki.init_pki(tmp_path_factory.mktemp("etcd-tls") / "pki")


@pytest.fixture(scope="module")
def tls_etcd(etcd_pki):
    cluster = EtcdCluster(
        1, tls=MemberTls(etcd_pki.ca, etcd_pki.scheduler.cert, etcd_pki.scheduler.key)
    ).start()
    yield cluster
    cluster.close()


def tls_ha_config(etcd: EtcdCluster, prefix: str, paths: pki.PkiPaths):
    client = paths.controller("controller")
    return make_config(
        store={"backend": "etcd"},
        etcd={
            "endpoints": etcd.endpoints,
            "prefix": prefix,
            "lease_ttl": LEASE,
            "ca": str(paths.ca),
            "cert": str(client.cert),
            "key": str(client.key),
        },
        liveness={"node_timeout": 5.0},
    )


def etcd_version(etcd: EtcdCluster, context: ssl.SSLContext) -> dict:
    with urllib.request.urlopen(
        f"{etcd.endpoints[0]}/version", context=context, timeout=5
    ) as reply:
        return json.load(reply)


async def test_over_tls_to_etcd_with_client_certificates_a_leader_commits_and_a_standby_follows(
    tls_etcd, etcd_pki
):
    # etcd requires a client certificate: without one nothing gets through.
    client = etcd_pki.controller("controller")
    anonymous = ssl.create_default_context(cafile=etcd_pki.ca)
    with pytest.raises(OSError):  # ssl.SSLError or a reset: the handshake is refused
        await trio.to_thread.run_sync(etcd_version, tls_etcd, anonymous)
    authenticated = ssl.create_default_context(cafile=etcd_pki.ca)
    authenticated.load_cert_chain(client.cert, client.key)
    assert "etcdserver" in await trio.to_thread.run_sync(etcd_version, tls_etcd, authenticated)

    prefix = new_prefix()
    configs = [tls_ha_config(tls_etcd, prefix, etcd_pki) for _ in range(2)]
    assert all(endpoint.startswith("https://") for endpoint in configs[0].etcd.endpoints)
    async with schedulers(configs) as (a, b):
        leader = await the_leader([a, b])  # Campaign and LeaseKeepAlive over TLS
        standby = b if leader is a else a
        for number in range(3):
            leader.store.save_node(f"n-{number}", "10.0.0.1", 7000, NodeState.LEFT, 1, 0.0)
        await leader.store.commit_durably()  # a fenced Txn over TLS
        assert await _mirrored(leader, 3)  # the Watch over TLS
        await wait_until(lambda: standby.leader() == leader.advertise)  # the standby's too
        assert await healthz(standby.http_port) == (503, f"standby; leader at {leader.advertise}")


async def test_etcd_unreachable_at_start_is_logged_once_not_per_attempt(caplog):
    # Schedulers started before etcd (a boot, an outage) retry several times a second; the
    # journal gets one line per problem, not one per attempt.
    config = make_config(
        store={"backend": "etcd"},
        etcd={"endpoints": [f"http://127.0.0.1:{free_port()}"], "lease_ttl": LEASE},
    )
    with caplog.at_level(logging.INFO):
        async with schedulers([config]) as (scheduler,):
            await trio.sleep(1.5)  # ~3 campaigns, ~7 loads retried
            assert not scheduler.leading
            assert await healthz(scheduler.http_port) == (503, "standby; leader at (none yet)")
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    campaigns = [line for line in lines if line.startswith("cannot campaign: etcd did not answer")]
    assert len(campaigns) == 1, lines
    assert sum(line.startswith("cannot load the state from etcd") for line in lines) == 1, lines
