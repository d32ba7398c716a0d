"""Faults over real sockets: Agents that die or freeze mid-attempt or after acceptance, a
Controller whose connection goes away mid-Schedule, and a whole cluster of Agents reconnecting
at once to a restarted scheduler (SPEC §2.1, §2.2 steps 4-5).

Only what tests/api/test_scheduling_api.py and tests/test_restart.py do not cover already: there,
faults are polite (a Create stream reset with RST_STREAM, a Schedule stream cancelled, nobody
listening at an Agent's port before the attempt, an Agent in "hang" mode whose Create is cancelled
after attempt_timeout). Here the TCP connection itself dies (aborted, or closed under a call in
flight) or never answers at all, as when a process is killed or frozen.

Localhost only, port 0 (except the restart test, which needs its port back), and every test
under running_scheduler's fail_after guard.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from contextlib import asynccontextmanager

import trio
from grpclib.const import Status

from scheduler._proto import controller_pb2
from scheduler.model import NodeState
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    KillableWorkloadAgent,
    drop_stream,
    event_kind,
    make_channel,
    open_channel,
    open_node,
    open_nodes,
    open_schedule,
    schedule,
    scheduling_request,
    status,
    stop_instance,
    wait_until,
)

GIB = 1 << 30
WAITING, RUNNING, TERMINATED = (
    controller_pb2.Status.WAITING,
    controller_pb2.Status.RUNNING,
    controller_pb2.Status.TERMINATED,
)


def config(attempt_timeout: float = 10.0, **sections):
    """A long attempt_timeout by default: a test passing well before it proves the scheduler
    noticed the fault itself instead of waiting the attempt out."""
    return make_config(
        scheduling={"attempt_timeout": attempt_timeout}, liveness={"node_timeout": 10.0}, **sections
    )


def reservations(scheduler):
    return scheduler.cluster.table.reservations


@asynccontextmanager
async def killable_nodes(channel, scheduler, *specs, journal=None):
    """Nodes from (node_id, mode, metrics) whose WorkloadService can be killed; closed at
    the end."""
    nodes = []
    journal = journal if journal is not None else []
    try:
        for node_id, mode, metrics in specs:
            nodes.append(
                await open_node(
                    channel,
                    scheduler,
                    node_id,
                    KillableWorkloadAgent(node_id, journal, mode),
                    **metrics,
                )
            )
        yield nodes
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.close()


def close_connection(channel, how: str) -> None:
    """End a grpclib channel's TCP connection: "close" (FIN, after flushing) or "abort" (RST,
    as when the Controller's process is killed)."""
    protocol = channel._protocol
    if how == "abort":
        protocol.connection._transport.abort()
    channel.close()


# -- an Agent that dies or freezes mid-attempt --------------------------------------------------


async def test_agent_dying_mid_attempt_moves_to_the_next_node_without_waiting_the_timeout():
    journal = []
    async with running_scheduler(config()) as scheduler, open_channel(scheduler.port) as channel:
        specs = (("n1", "hang", dict(mem_free=6 * GIB)), ("n2", "accept", dict(mem_free=4 * GIB)))
        async with killable_nodes(channel, scheduler, *specs, journal=journal) as [n1, _n2]:
            async with open_schedule(channel, scheduling_request("k-1", memory=64)) as call:
                await wait_until(lambda: n1.workloads.created == ["k-1"])
                assert reservations(scheduler).node_of("k-1") == "n1"
                killed_at = trio.current_time()
                await n1.workloads.kill()
                first = await call.next()
                waited = trio.current_time() - killed_at
                assert first is not None, f"Schedule ended: {call.error!r}"
                assert (first.status.code, first.node_id) == (WAITING, "n2")
                assert waited < 2.0, (
                    f"the next node was tried {waited:.2f} s after n1 died (attempt_timeout 10 s)"
                )
            assert journal == [("n1", "k-1"), ("n2", "k-1")]
            assert reservations(scheduler).node_of("k-1") == "n2", (
                "the dead node's reservation is released, the accepting node's held"
            )
            assert scheduler.instances.attempts["refused"] == 1
            assert scheduler.cluster.nodes["n1"].state is NodeState.READY, (
                "a refused attempt says nothing about the node's liveness (its status stream does)"
            )


async def test_a_frozen_agent_costs_one_attempt_timeout_and_blocks_no_other_placement():
    # A frozen (SIGSTOPped) Agent: the kernel still accepts TCP connections, nobody ever reads
    # or answers; not even the HTTP/2 handshake completes.
    timeout = 0.5
    async with (
        running_scheduler(config(attempt_timeout=timeout)) as scheduler,
        open_channel(scheduler.port) as channel,
        trio.open_nursery() as nursery,
    ):
        frozen_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        held = []

        async def accept_and_ignore():
            while True:
                held.append(await frozen_listener.accept())

        nursery.start_soon(accept_and_ignore)
        frozen_port = frozen_listener.socket.getsockname()[1]
        frozen = FakeAgent(channel, "frozen", frozen_port)
        await frozen.join()
        frozen_stream = await frozen.report(mem_free=6 * GIB)
        await wait_until(lambda: scheduler.cluster.nodes["frozen"].metrics is not None)
        async with open_nodes(channel, scheduler, ("n2", "accept", dict(mem_free=4 * GIB))) as [n2]:
            results = {}

            async def place(instance_id: str) -> None:
                started = trio.current_time()
                statuses, error = await schedule(
                    channel, scheduling_request(instance_id), until_code=RUNNING
                )
                results[instance_id] = (statuses[-1].node_id, trio.current_time() - started)

            async with trio.open_nursery() as placements:
                for instance_id in ("f-1", "f-2", "f-3"):
                    placements.start_soon(place, instance_id)
            for instance_id, (node_id, elapsed) in results.items():
                assert node_id == "n2", instance_id
                assert timeout <= elapsed < timeout + 1.5, (
                    f"{instance_id} placed after {elapsed:.2f} s: concurrent attempts on one "
                    f"frozen Agent must each cost one attempt_timeout ({timeout} s), not queue"
                )
            assert held, "the scheduler did dial the frozen Agent"
            assert sorted(n2.workloads.created) == ["f-1", "f-2", "f-3"]
            assert all(reservations(scheduler).node_of(i) == "n2" for i in results), (
                "nothing stays reserved on the frozen node"
            )
        await drop_stream(frozen_stream)
        nursery.cancel_scope.cancel()
        await frozen_listener.aclose()
        for stream in held:
            await stream.aclose()


# -- an Agent whose connection dies after acceptance --------------------------------------------


async def test_relays_ended_by_a_leave_are_info_and_by_a_dying_agent_a_warning(caplog):
    """A node that leaves ends its instances' relays: planned, and the node's own line names
    them, so no WARNING per instance. An Agent whose connection dies while its node is still
    READY is a fault: one WARNING per instance whose Schedule stream it ended."""
    caplog.set_level(logging.INFO, logger="scheduler.instances")

    def relay_endings() -> list[tuple[str, str]]:
        return sorted(
            (r.levelname, r.getMessage().split(":")[0])
            for r in caplog.records
            if "relay ended" in r.getMessage()
        )

    async with running_scheduler(config()) as scheduler, open_channel(scheduler.port) as channel:
        async with killable_nodes(channel, scheduler, ("n1", "accept", {})) as [n1]:
            async with (
                open_schedule(channel, scheduling_request("l-1", memory=64)) as first,
                open_schedule(channel, scheduling_request("l-2", memory=64)) as second,
            ):
                await first.until(RUNNING)
                await second.until(RUNNING)
                await n1.agent.leave()
                for call in (first, second):
                    _, error = await call.result()
                    assert error is not None and error.status is Status.UNAVAILABLE, error
        assert relay_endings() == [("INFO", "instance l-1"), ("INFO", "instance l-2")]

        caplog.clear()
        async with killable_nodes(channel, scheduler, ("n2", "accept", {})) as [n2]:
            async with open_schedule(channel, scheduling_request("k-1", memory=64)) as call:
                await call.until(RUNNING)
                await n2.workloads.kill()
                _, error = await call.result()
            assert error is not None and error.status is Status.UNAVAILABLE, error
        assert relay_endings() == [("WARNING", "instance k-1")]


async def test_agent_connection_dying_after_acceptance_is_unavailable_and_the_instance_placeable():
    async with running_scheduler(config()) as scheduler, open_channel(scheduler.port) as channel:
        async with killable_nodes(channel, scheduler, ("n1", "accept", {})) as [n1]:
            async with FakeController(channel).watch() as events:
                async with open_schedule(channel, scheduling_request("s-1", memory=64)) as call:
                    await call.until(RUNNING)
                    port = n1.workloads.port
                    await n1.workloads.kill()
                    statuses, error = await call.result()
                assert [(s.status.code, s.node_id) for s in statuses] == [
                    (WAITING, "n1"),
                    (RUNNING, "n1"),
                ]
                assert error is not None and error.status is Status.UNAVAILABLE, error
                assert error.message.startswith("instance s-1 on node n1: "), error.message
                assert "s-1" not in reservations(scheduler)

                # The Agent comes back on the same port (restarted by systemd): the scheduler's
                # channel to the node must reconnect rather than keep the dead connection.
                restarted = KillableWorkloadAgent("n1")
                n1.workloads = restarted
                await restarted.start(port)
                statuses, error = await schedule(
                    channel, scheduling_request("s-1", memory=64), until_code=RUNNING
                )
                assert error is None and statuses[-1].node_id == "n1", error
                assert restarted.created == ["s-1"], "placed again, on the restarted Agent"
                assert await stop_instance(channel, "s-1") is None, (
                    "signals reach the restarted Agent over the new connection"
                )
                codes = []
                while TERMINATED not in codes:
                    event = await events.receive()
                    assert not isinstance(event, Exception), event
                    if event_kind(event) == "INSTANCE":
                        codes.append(event.instance.status.code)
                assert codes == [WAITING, RUNNING, WAITING, RUNNING, TERMINATED]


# -- the Controller's connection goes away mid-Schedule -----------------------------------------


async def _controller_disconnects_mid_attempt(how: str) -> None:
    async with running_scheduler(config()) as scheduler, open_channel(scheduler.port) as channel:
        spec = ("n1", "hang", dict(mem_total=GIB, mem_free=512 * (1 << 20)))
        async with killable_nodes(channel, scheduler, spec) as [n1]:
            controller = await make_channel(scheduler.port)  # its own connection
            async with open_schedule(controller, scheduling_request("c-1", memory=512)):
                await wait_until(lambda: n1.workloads.created == ["c-1"])
                assert reservations(scheduler).node_of("c-1") == "n1"
                close_connection(controller, how)
                with trio.fail_after(3):
                    await wait_until(lambda: n1.workloads.cancelled == ["c-1"])
                    await wait_until(lambda: "c-1" not in reservations(scheduler))
                    await wait_until(lambda: scheduler.instances.placements["cancelled"] == 1)
            assert scheduler.instances._placing == set(), "no attempt may linger for c-1"
            n1.mode = "accept"
            statuses, error = await schedule(
                channel, scheduling_request("c-1", memory=512), until_code=RUNNING
            )
            assert error is None and statuses[-1].node_id == "n1", (
                "the whole node is free again: the same instance fits"
            )


async def test_controller_connection_closed_mid_attempt_cancels_it_and_releases():
    await _controller_disconnects_mid_attempt("close")


async def test_controller_connection_aborted_mid_attempt_cancels_it_and_releases():
    await _controller_disconnects_mid_attempt("abort")


async def test_controller_connection_aborted_after_acceptance_leaves_the_instance_running():
    async with running_scheduler(config()) as scheduler, open_channel(scheduler.port) as channel:
        async with killable_nodes(channel, scheduler, ("n1", "accept", {})) as [n1]:
            async with FakeController(channel).watch() as events:
                controller = await make_channel(scheduler.port)  # its own connection
                async with open_schedule(controller, scheduling_request("w-1")) as call:
                    await call.until(RUNNING)
                    follower = scheduler.instances._instances["w-1"].follower
                    close_connection(controller, "abort")
                    with trio.fail_after(3):
                        await wait_until(lambda: follower.gone)
                assert n1.workloads.cancelled == [], "the instance keeps running"
                assert scheduler.instances._instances["w-1"].ended == ""
                assert await stop_instance(channel, "w-1") is None
                seen = []
                while TERMINATED not in seen:
                    event = await events.receive()
                    assert not isinstance(event, Exception), event
                    if event_kind(event) == "INSTANCE":
                        seen.append(event.instance.status.code)
                assert seen == [WAITING, RUNNING, TERMINATED], (
                    "the statuses keep reaching WatchEvents after the Controller is gone"
                )


# -- a whole cluster reconnecting to a restarted scheduler --------------------------------------

AGENTS = 300
RECONNECT_BUDGET = 5.0  # s for every Agent to rejoin and report after the restart


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _rejoin_all(port: int, node_ids: list[str]) -> tuple[list, list, list]:
    """Each Agent on its own connection, all at once: join, open a stream, send one status.
    Returns (channels, open streams, errors as (node id, error))."""
    channels, streams, errors = [], [], []

    async def one(index: int, node_id: str) -> None:
        channel = await make_channel(port)
        channels.append(channel)
        agent = FakeAgent(channel, node_id, port=20_000 + index)
        try:
            with trio.fail_after(RECONNECT_BUDGET):
                await agent.join()
                stream = await agent.open_stream()
                streams.append(stream)
                await stream.send(status(node_id, mem_free=index))
        except BaseException as err:  # a timeout or a refusal: both are failures here
            if not isinstance(err, (Exception, trio.TooSlowError)):
                raise
            errors.append((node_id, err))

    async with trio.open_nursery() as nursery:
        for index, node_id in enumerate(node_ids):
            nursery.start_soon(one, index, node_id)
    return channels, streams, errors


async def _close_all(channels, streams) -> None:
    for stream in streams:
        await drop_stream(stream)
    for channel in channels:
        channel.close()


async def test_hundreds_of_agents_reconnecting_at_once_after_a_restart():
    data_dir, port = tempfile.mkdtemp(prefix="orka-faults-"), free_port()
    node_ids = [f"node-{index:03d}" for index in range(AGENTS)]
    restart_config = make_config(
        server={"listen": f"127.0.0.1:{port}", "data_dir": data_dir},
        liveness={"node_timeout": 10.0},
    )
    async with open_channel(port) as channel:
        async with running_scheduler(restart_config) as first:
            channels, streams, errors = await _rejoin_all(port, node_ids)
            assert errors == [], f"{len(errors)} of {AGENTS} first joins failed: {errors[:3]}"
            await wait_until(
                lambda: all(first.cluster.nodes[n].metrics is not None for n in node_ids)
            )
            generations = {n: first.cluster.nodes[n].generation for n in node_ids}
        await _close_all(channels, streams)

        async with running_scheduler(restart_config) as second:
            async with FakeController(channel).watch() as events:
                snapshot = await events.receive()
                assert len(snapshot.snapshot.nodes) == AGENTS
                started = trio.current_time()
                channels, streams, errors = await _rejoin_all(port, node_ids)
                assert errors == [], (
                    f"{len(errors)} of {AGENTS} Agents failed to rejoin: {errors[:3]}"
                )
                with trio.fail_after(RECONNECT_BUDGET):
                    await wait_until(
                        lambda: all(second.cluster.nodes[n].metrics is not None for n in node_ids)
                    )
                elapsed = trio.current_time() - started
                assert elapsed < RECONNECT_BUDGET, (
                    f"{AGENTS} Agents took {elapsed:.2f} s to rejoin and report"
                )
                kinds = []
                while True:
                    try:
                        event = events.receive_nowait()
                    except trio.WouldBlock:
                        break
                    assert not isinstance(event, Exception), event
                    kinds.append(event_kind(event))
                assert kinds.count("JOINED") == AGENTS and "LOST" not in kinds, {
                    kind: kinds.count(kind) for kind in set(kinds)
                }
            moved = {
                n: (generations[n], second.cluster.nodes[n].generation)
                for n in node_ids
                if second.cluster.nodes[n].generation != generations[n]
            }
            assert moved == {}, f"rejoining from the same address must keep the generation: {moved}"
            nodes = await FakeController(channel).list_nodes()
            assert [n.id for n in nodes] == node_ids
            assert {n.state for n in nodes} == {controller_pb2.Node.READY}
            assert [n.memory_free for n in nodes] == list(range(AGENTS)), (
                "every Agent's status was applied to its own node"
            )
            await _close_all(channels, streams)


async def test_an_asyncio_error_report_is_logged_not_fatal(caplog):
    # trio-asyncio's default handler re-raises asyncio's error reports (e.g. grpclib's
    # "Unclosed connection" from a collected channel) into its nursery: that ended the whole
    # scheduler in a soak. The bridge's loop logs them instead.
    from scheduler.grpc_bridge import open_loop

    async with open_loop() as loop:
        loop.call_exception_handler({"message": "Unclosed connection: Channel(...)"})
        await trio.sleep(0.05)  # the default handler would have raised by now
    assert any("Unclosed connection" in r.getMessage() for r in caplog.records)
