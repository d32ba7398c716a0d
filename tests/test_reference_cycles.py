"""Every kind of call ends freed by reference counting, not left in a reference cycle.

The scheduler raises the garbage collector's thresholds for throughput (`app.GC_THRESHOLDS`),
so what a call leaves in a cycle waits for a rare full collection: the 25-minute soak's RSS
climbed 66 -> 180 MiB (bench/RESULTS.md). Each test runs calls of one kind, then collects with
`gc.DEBUG_SAVEALL` and asserts that none of the scheduler's objects were found only in cycles.
(The tests' own clients are not judged: their cycles are not the scheduler's memory.)
"""

from __future__ import annotations

import asyncio.selector_events
from contextlib import asynccontextmanager

import grpclib.client
import pytest
from grpclib.exceptions import GRPCError

from scheduler._proto import controller_pb2
from tests.conftest import running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    Node,
    destroy_instance,
    drop_stream,
    make_channel,
    open_channel,
    open_nodes,
    open_schedule,
    saved_cycles,
    scheduling_request,
    status,
    stream_outcome,
    wait_event,
)

RUNNING = controller_pb2.Status.RUNNING
CALLS = 4  # of each kind: one would pass by luck if a collection happened to run in between
SETTLE = 0.3  # s for the scheduler to finish calls the client saw end (its tasks, its relays)


def ours(thing: object) -> bool:
    """One of the scheduler's own objects: of its modules (not a generated message: the tests'
    fake Agents and Controllers make those too), or a call it made to an Agent."""
    if isinstance(thing, grpclib.client.Stream):
        return thing._method_name.startswith("/node_agent.")
    module = type(thing).__module__ or ""
    return module.startswith("scheduler.") and not module.startswith("scheduler._proto")


@asynccontextmanager
async def nothing_left_in_cycles():
    """Fails if the block's calls leave any of the scheduler's objects that only a full
    collection would free (everything else having been freed when it ended)."""
    async with saved_cycles(SETTLE) as found:
        yield
    left = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in found if ours(o)})
    assert left == [], f"left in reference cycles: {left}"


@asynccontextmanager
async def one_node(mode: str = "accept"):
    """A scheduler, a client channel to it and one node whose Agent behaves as `mode`."""
    async with (
        running_scheduler() as scheduler,
        open_channel(scheduler.port) as channel,
        open_nodes(channel, scheduler, ("n1", mode, {})) as [node],
    ):
        yield channel, node


async def test_join_status_stream_and_leave():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent = FakeAgent(channel, "node-1")
        await agent.join()
        async with nothing_left_in_cycles():
            for _ in range(CALLS):
                await agent.join()
                stream = await agent.report()
                await stream.send(status("node-1"))
                await stream.finish()  # the stream ends OK
                await agent.leave()
            for _ in range(CALLS):
                await agent.join()
                await drop_stream(await agent.report())  # reset by the Agent
            for _ in range(CALLS):
                with pytest.raises(GRPCError):
                    await agent.join("Not A Node Id!")  # refused
            # Streams the scheduler ends with ABORTED (the error crosses to the asyncio side in
            # a future, with a traceback through the handler's frames): replaced by a newer
            # stream, ended by a leave, also when the Agent's connection closes right after it
            # leaves, as the simulator's Agents do.
            for _ in range(CALLS):
                await agent.join()
                older = await agent.report()
                newer = await agent.report()  # replaces `older`
                error = await stream_outcome(older)
                assert error is not None and error.status.name == "ABORTED", error
                await agent.leave()  # ends `newer`
                error = await stream_outcome(newer)
                assert error is not None and error.status.name == "ABORTED", error
            for i in range(CALLS):
                agent_channel = await make_channel(scheduler.port)
                leaving = FakeAgent(agent_channel, f"leaving-{i}")
                await leaving.join()
                await leaving.report()
                await leaving.leave()
                agent_channel.close()


async def test_schedule_with_its_create_relay_to_the_end():
    async with one_node() as (channel, _), nothing_left_in_cycles():
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                await call.until(RUNNING)
                assert await destroy_instance(channel, f"web-{i}") is None
                _, error = await call.result()  # TERMINATED, the call ends OK
                assert error is None, error


async def test_schedule_the_controller_hangs_up_on():
    # What the Controller does with follow=False: it hangs up after the acceptance; the relay
    # goes on until the instance ends.
    async with one_node() as (channel, _), nothing_left_in_cycles():
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                await call.until(RUNNING)
                await call.cancel()
        for i in range(CALLS):
            assert await destroy_instance(channel, f"web-{i}") is None


async def test_a_create_stream_the_agent_breaks():
    async with one_node("die") as (channel, _), nothing_left_in_cycles():
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                await call.result()


async def test_watch_and_list_nodes():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller, agent = FakeController(channel), FakeAgent(channel, "node-1")
        async with nothing_left_in_cycles():
            for _ in range(CALLS):
                await controller.list_nodes()
            for _ in range(CALLS):
                async with controller.watch() as events:
                    await agent.join()
                    await wait_event(events, "JOINED", "node-1")
                await agent.leave()


async def test_signals_the_agent_refuses_or_cannot_take():
    async with one_node() as (channel, node):
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                await call.until(RUNNING)
                await call.cancel()
        node.workloads._running.clear()  # the Agent forgot them: NOT_FOUND
        async with nothing_left_in_cycles():
            for i in range(CALLS // 2):
                await destroy_instance(channel, f"web-{i}")
        await node.workloads.stop()  # and now it is gone: UNAVAILABLE
        node.workloads._server = None
        async with nothing_left_in_cycles():
            for i in range(CALLS // 2, CALLS):
                await destroy_instance(channel, f"web-{i}")


async def test_a_schedule_no_node_takes():
    async with one_node("refuse") as (channel, _), nothing_left_in_cycles():
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                _, error = await call.result()
                assert error is not None


def transports(found: list, scheduler_port: int, agent_ports: set[int]) -> list[str]:
    """The scheduler's socket transports among `found`: the listener's (its own port on our
    side) and its channels to Agents (an Agent's port on the other side). The tests' clients
    and fake Agents keep theirs in cycles of their own: not judged."""
    return [
        f"{kind} {transport.get_extra_info('peername')}"
        for transport in found
        if isinstance(transport, asyncio.selector_events._SelectorSocketTransport)
        for kind, ours in (
            ("listener", transport.get_extra_info("sockname")[1] == scheduler_port),
            ("to an Agent", transport.get_extra_info("peername")[1] in agent_ports),
        )
        if ours
    ]


async def test_connections_that_close():
    # Both directions: Controllers' connections the listener accepted, and the channels the
    # scheduler opened to Agents, closed when their node left. (CPython 3.11's transport keeps
    # a bound method of itself after the connection is lost: one cycle per closed connection.)
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent_ports: set[int] = set()
        async with saved_cycles(SETTLE) as found:
            # grpclib's server forgets a closed connection's handler, which holds its transport,
            # once ten more connections came: the first ones are then freed, or left in cycles.
            for _ in range(3 * CALLS):
                other = await make_channel(scheduler.port)
                try:
                    await FakeController(other).list_nodes()
                finally:
                    other.close()
            for i in range(CALLS):
                node = Node(channel, f"n{i}")
                await node.start(scheduler)
                agent_ports.add(node.agent.port)
                async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                    await call.until(RUNNING)  # the scheduler has dialed the node's Agent
                    await call.cancel()
                await node.agent.leave()  # its channels close
                await node.close()
        assert transports(found, scheduler.port, agent_ports) == []


async def test_an_error_the_asyncio_side_never_takes():
    # The asyncio side is cancelled just as the handler fails (an Agent that leaves as it
    # disconnects, in the soak): the error stays in the call's future, and its traceback runs
    # through the bridge's `_run`, whose frame held that future.
    import trio
    import trio_asyncio

    from scheduler.errors import Aborted
    from scheduler.grpc_bridge import Bridge, Call

    async def handler(call: Call) -> None:
        raise Aborted("status stream ended: the node left the cluster")

    async with trio_asyncio.open_loop() as loop:
        async with saved_cycles(0.0) as found:
            for _ in range(CALLS):
                future = loop.create_future()
                call = Call("/scheduler.agent.MembershipService/UpdateNodeStatus", "::1", None)
                await Bridge()._run(handler, call, future, trio.CancelScope())
                assert future.exception() is not None
                del future, call
        left = sorted({type(o).__qualname__ for o in found if type(o).__name__ != "function"})
        assert not {"Call", "Future", "GRPCError"} & set(left), left
