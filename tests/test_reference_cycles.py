"""Every kind of call ends freed by reference counting, not left in a reference cycle.

The scheduler raises the garbage collector's thresholds for throughput (`app.GC_THRESHOLDS`),
so what a call leaves in a cycle waits for a rare full collection: the 25-minute soak's RSS
climbed 66 -> 180 MiB (bench/RESULTS.md). Each test runs calls of one kind, then collects with
`gc.DEBUG_SAVEALL` and asserts that none of the scheduler's objects were found only in cycles.
(The tests' own clients are not judged: their cycles are not the scheduler's memory.)
"""
from __future__ import annotations

import gc
from contextlib import contextmanager

import grpclib.client
import pytest
import trio
from grpclib.exceptions import GRPCError

from scheduler._proto import controller_pb2
from tests.conftest import running_scheduler
from tests.fakes import FakeAgent, FakeController, destroy_instance, drop_stream, open_channel, \
    open_nodes, open_schedule, scheduling_request, status, wait_event

RUNNING = controller_pb2.Status.RUNNING
CALLS = 4  # of each kind: one would pass by luck if a collection happened to run in between


def ours(thing: object) -> bool:
    """One of the scheduler's own objects: of its modules (not a generated message: the tests'
    fake Agents and Controllers make those too), or a call it made to an Agent."""
    if isinstance(thing, grpclib.client.Stream):
        return thing._method_name.startswith("/node_agent.")
    module = type(thing).__module__ or ""
    return module.startswith("scheduler.") and not module.startswith("scheduler._proto")


@contextmanager
def garbage():
    """Yields a list that, at the end of the block, holds the scheduler's objects that only a
    full collection would have freed (everything else having been freed when it ended)."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage if ours(o)}))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def settle() -> None:
    """Time for the scheduler to finish the calls the client saw end (its tasks, its relays)."""
    await trio.sleep(0.3)


async def test_join_status_stream_and_leave():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent = FakeAgent(channel, "node-1")
        await agent.join()
        with garbage() as left:
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
            await settle()
        assert left == [], left


async def test_schedule_with_its_create_relay_to_the_end():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "accept", {})):
        with garbage() as left:
            for i in range(CALLS):
                async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                    await call.until(RUNNING)
                    assert await destroy_instance(channel, f"web-{i}") is None
                    _, error = await call.result()  # TERMINATED, the call ends OK
                    assert error is None, error
            await settle()
        assert left == [], left


async def test_schedule_the_controller_hangs_up_on():
    # What the Controller does with follow=False: it hangs up after the acceptance; the relay
    # goes on until the instance ends.
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "accept", {})):
        with garbage() as left:
            for i in range(CALLS):
                async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                    await call.until(RUNNING)
                    await call.cancel()
            for i in range(CALLS):
                assert await destroy_instance(channel, f"web-{i}") is None
            await settle()
        assert left == [], left


async def test_a_create_stream_the_agent_breaks():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "die", {})):
        with garbage() as left:
            for i in range(CALLS):
                async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                    await call.result()
            await settle()
        assert left == [], left


async def test_watch_and_list_nodes():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller, agent = FakeController(channel), FakeAgent(channel, "node-1")
        with garbage() as left:
            for _ in range(CALLS):
                await controller.list_nodes()
            for _ in range(CALLS):
                async with controller.watch() as events:
                    await agent.join()
                    await wait_event(events, "JOINED", "node-1")
                await agent.leave()
            await settle()
        assert left == [], left


async def test_signals_the_agent_refuses_or_cannot_take():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel, \
            open_nodes(channel, scheduler, ("n1", "accept", {})) as [node]:
        for i in range(CALLS):
            async with open_schedule(channel, scheduling_request(f"web-{i}")) as call:
                await call.until(RUNNING)
                await call.cancel()
        node.workloads._running.clear()  # the Agent forgot them: NOT_FOUND
        with garbage() as left:
            for i in range(CALLS // 2):
                await destroy_instance(channel, f"web-{i}")
            await settle()
        assert left == [], left
        await node.workloads.stop()  # and now it is gone: UNAVAILABLE
        node.workloads._server = None
        with garbage() as left:
            for i in range(CALLS // 2, CALLS):
                await destroy_instance(channel, f"web-{i}")
            await settle()
        assert left == [], left
