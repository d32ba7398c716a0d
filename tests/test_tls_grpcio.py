"""SPEC §3 with the official grpcio client: proof that real gRPC peers interoperate with the
scheduler's mTLS listener (ALPN h2, host name checks against its SANs, client certificates) and
get the statuses SPEC §3 promises.

grpcio's sync API blocks, so every call runs in `trio.to_thread.run_sync` with a deadline of
its own; the scheduler runs in the test's trio loop (see test_tls_api.py for its wiring). Unlike
grpclib, grpcio hosts check the scheduler certificate's host name: the target must be one of its
SANs (127.0.0.1 and localhost are).
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
import trio

from scheduler import security
from scheduler._proto import agent_pb2, controller_pb2
from scheduler.pki import CertPair
from tests.fakes import status, wait_until
from tests.test_tls_api import TD, Pki, make_leaf, make_pki, tls_scheduler

CALL_TIMEOUT = 5.0  # s: deadline of every grpcio call: a hung call fails, no thread leaks
# grpcio keeps one subchannel pool per process by default; a local pool keeps every test's
# connections (and their backoff after a refused handshake) to itself.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

JOIN = "/scheduler.agent.LifecycleService/JoinCluster"
LEAVE = "/scheduler.agent.LifecycleService/LeaveCluster"
UPDATE = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
LIST_NODES = "/scheduler.controller.ClusterService/ListNodes"
WATCH = "/scheduler.controller.ClusterService/WatchEvents"
SCHEDULE = "/scheduler.controller.SchedulingService/Schedule"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}, encoded by hand (no grpc_health)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls-grpcio"))


# --- grpcio clients ----------------------------------------------------------------------------


def credentials(pki: Pki, pair: CertPair | None) -> grpc.ChannelCredentials:
    """Trust the cluster CA; present `pair` (None: no client certificate)."""
    if pair is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pair.key.read_bytes(),
        certificate_chain=pair.cert.read_bytes(),
    )


@contextmanager
def grpc_channel(port: int, pki: Pki | None, pair: CertPair | None, host: str = "127.0.0.1"):
    """A grpcio channel to the scheduler; `pki=None` makes it plaintext."""
    target = f"{host}:{port}"
    if pki is None:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(target, credentials(pki, pair), options=CHANNEL_OPTIONS)
    with channel:
        yield channel


def unary(channel: grpc.Channel, path: str, request, reply_type):
    call = channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply_type.FromString,
    )
    return call(request, timeout=CALL_TIMEOUT)


def first_reply(channel: grpc.Channel, path: str, request, reply_type):
    """The first message of a server-streaming call (the call is then cancelled)."""
    call = channel.unary_stream(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply_type.FromString,
    )
    replies = call(request, timeout=CALL_TIMEOUT)
    try:
        return next(replies)
    finally:
        replies.cancel()


def list_nodes(channel: grpc.Channel) -> list[controller_pb2.Node]:
    return list(unary(channel, LIST_NODES, controller_pb2.Empty(), controller_pb2.NodeList).nodes)


def join(channel: grpc.Channel, node_id: str, port: int = 7000) -> agent_pb2.Empty:
    return unary(channel, JOIN, agent_pb2.ConnectionRequest(id=node_id, port=port), agent_pb2.Empty)


async def in_thread(function: Callable, *args):
    """Run a blocking grpcio call in a thread (it carries its own deadline)."""
    return await trio.to_thread.run_sync(function, *args)


async def rpc_error(function: Callable, *args) -> grpc.RpcError:
    """Run `function` in a thread; it must fail with a gRPC error, which is returned."""
    try:
        result = await in_thread(function, *args)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected a gRPC error, got {result!r}")


_END = object()


class StatusStream:
    """An UpdateNodeStatus call fed from a queue: it stays open (not half-closed) until `close`.

    grpcio reads the request iterator in its own thread; the call's outcome is `future`.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._queue: queue.Queue = queue.Queue()
        call = channel.stream_unary(
            UPDATE,
            request_serializer=agent_pb2.NodeStatus.SerializeToString,
            response_deserializer=agent_pb2.Empty.FromString,
        )
        self.future = call.future(self._requests())

    def _requests(self) -> Iterator[agent_pb2.NodeStatus]:
        while (item := self._queue.get()) is not _END:
            yield item

    def send(self, message: agent_pb2.NodeStatus) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(_END)

    async def outcome(self) -> grpc.RpcError | agent_pb2.Empty:
        """Wait for the call to end; its error, or the reply if OK."""

        def wait():
            try:
                return self.future.result(timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                return error

        return await in_thread(wait)


@contextmanager
def status_stream(channel: grpc.Channel):
    stream = StatusStream(channel)
    try:
        yield stream
    finally:
        stream.close()
        stream.future.cancel()


async def applied(scheduler, stream: StatusStream, node_id: str, load: float) -> None:
    stream.send(status(node_id, load=load))
    await wait_until(
        lambda: (
            node_id in scheduler.cluster.nodes
            and scheduler.cluster.nodes[node_id].metrics is not None
            and scheduler.cluster.nodes[node_id].metrics.cpu_load == load
        )
    )


def assert_status(error: grpc.RpcError, code: grpc.StatusCode, *words: str) -> None:
    assert isinstance(error, grpc.RpcError), error
    assert error.code() is code, (error.code(), error.details())
    for word in words:
        assert word in (error.details() or ""), (word, error.details())


def bad_pair(pki: Pki, which: str) -> CertPair | None:
    return {
        "no certificate": None,
        "another CA": pki.other_ca.agent("node-1"),
        "expired": pki.expired,
    }[which]


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_grpcio_agent_and_controller_over_mtls(pki, host):
    async with tls_scheduler(pki) as scheduler:
        with (
            grpc_channel(scheduler.port, pki, pki.agent("node-1"), host) as agent,
            grpc_channel(scheduler.port, pki, pki.controller, host) as controller,
        ):
            await in_thread(join, agent, "node-1")
            with status_stream(agent) as stream:
                await applied(scheduler, stream, "node-1", 12.5)
                nodes = await in_thread(list_nodes, controller)
                assert [(node.id, node.cpu_load) for node in nodes] == [("node-1", 12.5)]
                first = await in_thread(
                    first_reply,
                    controller,
                    WATCH,
                    controller_pb2.WatchRequest(),
                    controller_pb2.ClusterEvent,
                )
                assert first.WhichOneof("event") == "snapshot", first
                stream.close()
                assert await stream.outcome() == agent_pb2.Empty()


@pytest.mark.parametrize("which", ["no certificate", "another CA", "expired"])
async def test_grpcio_bad_client_certificate_is_unavailable(pki, which):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, bad_pair(pki, which)) as channel:
            error = await rpc_error(list_nodes, channel)
        assert_status(error, grpc.StatusCode.UNAVAILABLE)
        with grpc_channel(scheduler.port, pki, pki.controller) as channel:  # the listener is fine
            assert await in_thread(list_nodes, channel) == []


async def test_grpcio_certificate_without_uri_san_is_unauthenticated(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.no_uri) as channel:
            error = await rpc_error(join, channel, "node-1")
        assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "no URI SAN")
        assert not scheduler.cluster.nodes


async def test_grpcio_plaintext_client_is_unavailable(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, None, None) as channel:
            error = await rpc_error(list_nodes, channel)
        assert_status(error, grpc.StatusCode.UNAVAILABLE)
        with grpc_channel(scheduler.port, pki, pki.controller) as channel:
            assert await in_thread(list_nodes, channel) == []


async def test_grpcio_wrong_server_name_is_refused_by_the_client(pki):
    """grpcio checks host names: a name the scheduler's certificate lacks fails on the client."""
    async with tls_scheduler(pki) as scheduler:
        target = f"127.0.0.1:{scheduler.port}"
        options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "not-the-scheduler")]
        with grpc.secure_channel(target, credentials(pki, pki.controller), options) as channel:
            error = await rpc_error(list_nodes, channel)
        assert_status(error, grpc.StatusCode.UNAVAILABLE)


async def test_grpcio_agent_cannot_join_as_another_node(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as channel:
            error = await rpc_error(join, channel, "node-2")
        assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "agent 'node-1'", "'node-2'")
        assert not scheduler.cluster.nodes


async def test_grpcio_status_stream_for_another_node_is_refused_while_open(pki):
    """The stream is not half-closed: grpcio still gets the status (grpclib clients do not)."""
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as channel:
            await in_thread(join, channel, "node-1")
            with status_stream(channel) as stream:
                stream.send(status("node-2", load=99.0))
                error = await stream.outcome()
        assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "agent 'node-1'", "'node-2'")
        assert "node-2" not in scheduler.cluster.nodes


async def test_grpcio_status_stream_switching_node_mid_stream_is_refused(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as channel:
            await in_thread(join, channel, "node-1")
            with status_stream(channel) as stream:
                await applied(scheduler, stream, "node-1", 5.0)
                stream.send(status("node-2", load=99.0))
                error = await stream.outcome()
        # Every id must be the certificate's node (SPEC §2.1): PERMISSION_DENIED naming both.
        assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "node-1", "node-2")
        assert "node-2" not in scheduler.cluster.nodes


@pytest.mark.parametrize("path", [SCHEDULE, WATCH, LIST_NODES])
async def test_grpcio_agent_certificate_cannot_call_controller_services(pki, path):
    requests = {
        SCHEDULE: (controller_pb2.SchedulingRequest(), controller_pb2.WorkloadStatus),
        WATCH: (controller_pb2.WatchRequest(), controller_pb2.ClusterEvent),
        LIST_NODES: (controller_pb2.Empty(), controller_pb2.NodeList),
    }
    request, reply_type = requests[path]
    call = unary if path == LIST_NODES else first_reply
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as channel:
            error = await rpc_error(call, channel, path, request, reply_type)
    assert_status(
        error,
        grpc.StatusCode.PERMISSION_DENIED,
        "agent 'node-1'",
        path,
        "Agents may call only scheduler.agent services",
    )


async def test_grpcio_controller_certificate_cannot_call_agent_services(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.controller) as channel:
            error = await rpc_error(join, channel, "node-1")
            assert_status(
                error,
                grpc.StatusCode.PERMISSION_DENIED,
                "controller 'controller'",
                JOIN,
                "Controllers may call only scheduler.controller services",
            )
            with status_stream(channel) as stream:  # refused on its headers, stream left open
                stream.send(status("node-1"))
                error = await stream.outcome()
            assert_status(
                error, grpc.StatusCode.PERMISSION_DENIED, "controller 'controller'", UPDATE
            )
        assert not scheduler.cluster.nodes


@pytest.mark.parametrize("who", ["agent", "controller"])
async def test_grpcio_health_is_open_to_every_cluster_member(pki, who):
    pair = pki.agent("node-1") if who == "agent" else pki.controller
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pair) as channel:
            check = channel.unary_unary(
                HEALTH_CHECK,
                request_serializer=lambda _: b"",
                response_deserializer=lambda data: data,
            )
            reply = await in_thread(functools.partial(check, None, timeout=CALL_TIMEOUT))
        assert reply == SERVING, reply


async def test_grpcio_refused_clients_do_not_disturb_a_good_agent(pki):
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as good:
            await in_thread(join, good, "node-1")
            with status_stream(good) as stream:
                await applied(scheduler, stream, "node-1", 1.0)
                for load, which in enumerate(["no certificate", "another CA", "expired"], 2):
                    with grpc_channel(scheduler.port, pki, bad_pair(pki, which)) as bad:
                        error = await rpc_error(join, bad, "node-1")
                    assert_status(error, grpc.StatusCode.UNAVAILABLE)
                    await applied(scheduler, stream, "node-1", float(load))
                with grpc_channel(scheduler.port, pki, pki.agent("node-2")) as impostor:
                    error = await rpc_error(join, impostor, "node-1")
                    assert_status(error, grpc.StatusCode.PERMISSION_DENIED)
                    with status_stream(impostor) as bad_stream:
                        bad_stream.send(status("node-1", load=99.0))
                        error = await bad_stream.outcome()
                    assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "'node-1'")
                await applied(scheduler, stream, "node-1", 10.0)
                stream.close()
                assert await stream.outcome() == agent_pb2.Empty()


async def test_grpcio_after_a_certificate_reload(pki, tmp_path):
    """A stream opened before `reload` carries on; new grpcio connections accept the new
    certificate (its SANs name 127.0.0.1 and localhost, which grpcio checks)."""
    rotated = make_leaf(pki.paths, tmp_path / "rotated", uri=f"spiffe://{TD}/scheduler")
    async with tls_scheduler(pki) as scheduler:
        with grpc_channel(scheduler.port, pki, pki.agent("node-1")) as agent:
            await in_thread(join, agent, "node-1")
            with status_stream(agent) as stream:
                await applied(scheduler, stream, "node-1", 1.0)
                security.reload(scheduler.server_ssl, pki.ca, rotated.cert, rotated.key)
                await applied(scheduler, stream, "node-1", 2.0)
                with grpc_channel(scheduler.port, pki, pki.controller, "localhost") as controller:
                    nodes = await in_thread(list_nodes, controller)
                assert [(node.id, node.cpu_load) for node in nodes] == [("node-1", 2.0)]
                await applied(scheduler, stream, "node-1", 3.0)
                stream.close()
                assert await stream.outcome() == agent_pb2.Empty()
