"""The bridge's asyncio loop: trio-asyncio hosting, with ready callbacks run in batches."""

from __future__ import annotations

import trio

from scheduler._compat import CALLBACKS_PER_CHECKPOINT
from scheduler.grpc_bridge import open_loop


async def _warm_up(loop) -> None:
    """One callback round: open_loop patches a loop that already waits in trio-asyncio's own
    `_main_loop_one`; the batching starts with the loop's next turn."""
    done = trio.Event()
    loop.call_soon(done.set)
    await done.wait()


async def _record_turns(order: list, stop: trio.Event) -> None:
    """A trio task that notes every turn it gets until `stop`."""
    while not stop.is_set():
        order.append("trio")
        await trio.lowlevel.checkpoint()


async def test_ready_callbacks_run_back_to_back():
    # Stock trio-asyncio runs one asyncio callback per trio checkpoint, so a busy trio task
    # would get a turn between any two of these.
    order: list = []
    stop = trio.Event()
    async with open_loop() as loop, trio.open_nursery() as nursery:
        await _warm_up(loop)
        nursery.start_soon(_record_turns, order, stop)
        await trio.sleep(0.01)
        for i in range(10):
            loop.call_soon(order.append, i)
        await trio.sleep(0.01)
        stop.set()
    first = order.index(0)
    assert order[first : first + 10] == list(range(10)), order


async def test_a_long_queue_still_lets_trio_tasks_run():
    order: list = []
    stop = trio.Event()
    count = 3 * CALLBACKS_PER_CHECKPOINT
    async with open_loop() as loop, trio.open_nursery() as nursery:
        await _warm_up(loop)
        nursery.start_soon(_record_turns, order, stop)
        await trio.sleep(0.01)
        for i in range(count):
            loop.call_soon(order.append, i)
        await trio.sleep(0.05)
        stop.set()
    callbacks = [item for item in order if item != "trio"]
    assert callbacks == list(range(count)), "every callback runs, in order"
    span = order[order.index(0) : order.index(count - 1)]
    assert "trio" in span, "the batch is bounded: the trio task had a turn while it drained"


async def test_timers_and_tasks_still_run():
    import asyncio

    fired = trio.Event()
    async with open_loop() as loop:
        loop.call_later(0.02, fired.set)
        with trio.fail_after(2):
            await fired.wait()
        result = await loop.run_aio_coroutine(asyncio.sleep(0.01, result="slept"))
    assert result == "slept"


async def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams():
    # h2 remembers how each closed stream ended (65,536 of them, 7.5 MiB per connection); a
    # Controller's or an Agent's connection lives for months and carries millions of calls.
    # A connection of at most 100 streams at once (an Agent's, both ways; here the client's
    # side, whose h2 the loop patches too) keeps 256; a Controller's (the listener's side of a
    # plaintext peer, allowed 10,000 streams) keeps 1,024.
    from scheduler._compat import CLOSED_STREAMS_REMEMBERED
    from scheduler.grpc_listener import MANY_STREAMS_CLOSED_REMEMBERED
    from tests.conftest import running_scheduler
    from tests.fakes import FakeController, open_channel

    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        controller = FakeController(channel)
        for _ in range(MANY_STREAMS_CLOSED_REMEMBERED + 200):
            await controller.list_nodes()
        h2_connection = channel._protocol.connection._connection  # this client's side
        closed = len(h2_connection._closed_streams)
        assert closed == CLOSED_STREAMS_REMEMBERED == 256, closed
        [served] = scheduler.bridge.listener._open  # the listener's side of the same connection
        closed = len(served.connection._connection._closed_streams)
        assert closed == MANY_STREAMS_CLOSED_REMEMBERED, closed
