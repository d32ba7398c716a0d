"""The bridge's `Inbound` with a `handle` function: each message handled once, in order, on the
asyncio side while the trio side waits for it, else on the trio side; never once the trio side
stopped reading."""

from __future__ import annotations

import trio
import trio_asyncio

from scheduler.grpc_bridge import DRAIN_BEFORE_CHECKPOINT, Inbound, open_loop

aio = trio_asyncio.aio_as_trio


class Recorder:
    """A `handle` that notes each message and the trio task it ran in; holds those in `hold`."""

    def __init__(self, hold=()) -> None:
        self.seen: list[tuple[int, str]] = []
        self.hold = set(hold)

    def __call__(self, message: int):
        self.seen.append((message, trio.lowlevel.current_task().name))
        return ("held", message) if message in self.hold else None


async def put_all(inbox: Inbound, *messages: int) -> None:
    async def put() -> None:
        for message in messages:
            assert await inbox.put(message, 1)

    await aio(put)()


async def test_messages_are_handled_where_they_are_put_while_the_trio_side_waits():
    async with open_loop(), trio.open_nursery() as nursery:
        inbox, handle = Inbound(), Recorder()
        inbox.handle = handle
        received = []

        async def reader() -> None:
            try:
                received.append(await inbox.receive())
            except trio.EndOfChannel:
                received.append("end")

        nursery.start_soon(reader, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        await put_all(inbox, 1, 2, 3)
        assert [m for m, _ in handle.seen] == [1, 2, 3]
        assert all(task != "reader" for _, task in handle.seen), handle.seen
        assert received == [], "the trio side is not woken for messages handled already"
        inbox.close()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert received == ["end"]


async def test_messages_after_a_held_one_wait_for_the_trio_side_and_keep_their_order():
    async with open_loop(), trio.open_nursery() as nursery:
        inbox, handle = Inbound(), Recorder(hold={2})
        inbox.handle = handle
        busy = trio.Event()
        received = []

        async def reader() -> None:
            received.append(await inbox.receive())
            await busy.wait()  # dealing with what was held
            while True:
                try:
                    received.append(await inbox.receive())
                except trio.EndOfChannel:
                    return

        nursery.start_soon(reader, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        await put_all(inbox, 1, 2, 3, 4)
        await trio.testing.wait_all_tasks_blocked()
        assert received == [("held", 2)]
        assert [m for m, _ in handle.seen] == [1, 2], "3 and 4 wait: 2 is not dealt with yet"
        busy.set()
        await trio.testing.wait_all_tasks_blocked()
        assert handle.seen[2:] == [(3, "reader"), (4, "reader")]
        await put_all(inbox, 5)
        assert handle.seen[4][0] == 5 and handle.seen[4][1] != "reader", (
            "once the trio side waits again, messages are handled where they are put"
        )
        inbox.close()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert received == [("held", 2)]


async def test_no_message_is_handled_once_the_trio_side_was_cancelled():
    async with open_loop(), trio.open_nursery() as nursery:
        inbox, handle = Inbound(), Recorder()
        inbox.handle = handle
        scope = trio.CancelScope()

        async def reader() -> None:
            with scope:
                await inbox.receive()

        nursery.start_soon(reader, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        await put_all(inbox, 1)
        scope.cancel()  # the reader has not run yet: it still sits in `receive`
        await put_all(inbox, 2, 3)
        assert [m for m, _ in handle.seen] == [1], handle.seen
        await trio.testing.wait_all_tasks_blocked()
        assert scope.cancelled_caught
        assert [m for m, _ in handle.seen] == [1], handle.seen
        inbox.abandon()


async def test_a_long_read_handled_where_it_is_put_lets_other_callbacks_run():
    async with open_loop() as loop, trio.open_nursery() as nursery:
        inbox, handle = Inbound(capacity=1000), Recorder()
        inbox.handle = handle
        nursery.start_soon(inbox.receive, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        count = 3 * DRAIN_BEFORE_CHECKPOINT

        async def put() -> None:
            loop.call_soon(lambda: handle.seen.append((-1, "another callback")))
            for message in range(count):
                assert await inbox.put(message, 1)

        await aio(put)()
        order = [m for m, _ in handle.seen]
        assert order.index(-1) <= DRAIN_BEFORE_CHECKPOINT, order
        assert [m for m in order if m >= 0] == list(range(count))
        nursery.cancel_scope.cancel()


async def test_the_producer_waits_for_room_and_fails_once_the_trio_side_abandons():
    with trio.fail_after(5):
        async with open_loop(), trio.open_nursery() as nursery:
            inbox = Inbound(capacity=2)
            results: list[bool] = []

            async def produce() -> None:
                async def put() -> None:
                    for message in range(5):
                        results.append(await inbox.put(message, 1))

                await aio(put)()

            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            assert results == [True, True] and len(inbox) == 2, "the third waits for room"
            assert await inbox.receive() == 0
            await trio.testing.wait_all_tasks_blocked()
            assert results == [True, True, True] and len(inbox) == 2, "one taken, one more put"
            inbox.abandon()
            await trio.testing.wait_all_tasks_blocked()
            assert results == [True, True, True, False, False]
            assert len(inbox) == 0, "what waited is dropped"


async def test_the_end_and_the_sources_error_reach_a_waiting_reader_once():
    with trio.fail_after(5):
        async with open_loop(), trio.open_nursery() as nursery:
            inbox = Inbound()
            outcomes: list[object] = []

            async def reader() -> None:
                for _ in range(3):
                    try:
                        outcomes.append(await inbox.receive())
                    except (trio.EndOfChannel, ValueError) as end:
                        outcomes.append(type(end).__name__)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await put_all(inbox, 7)
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == [7], "handed to the waiting reader"
            inbox.close(ValueError("the source broke"))
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == [7, "ValueError", "EndOfChannel"]
            assert not await aio(inbox.put)(8, 1), "nothing is accepted after the end"


async def test_a_reader_parked_when_the_inbox_is_abandoned_gets_closed_resource_error():
    async with open_loop(), trio.open_nursery() as nursery:
        inbox = Inbound()
        raised: list[BaseException] = []

        async def reader() -> None:
            try:
                await inbox.receive()
            except trio.ClosedResourceError as error:
                raised.append(error)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        inbox.abandon()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert len(raised) == 1
