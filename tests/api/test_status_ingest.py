"""Status messages that arrive together, in one read: applied in order up to the first one
refused, none after it; and none from a stream once another replaced it.

The bridge applies a stream's statuses where it decodes them (issue 15); these tests pin what a
trio task per message did before, over real sockets: a raw HTTP/2 client writes several gRPC
messages in one DATA frame, so the scheduler reads them in one go.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import h2.events
import pytest
import trio

from scheduler._proto import agent_pb2
from tests.conftest import make_config, running_scheduler
from tests.fakes import (
    FakeAgent,
    FakeController,
    event_kind,
    open_channel,
    saved_cycles,
    status,
    wait_event,
)
from tests.raw_h2 import RawH2, prefix

STATUS_PATH = "/scheduler.agent.StatusUpdateService/UpdateNodeStatus"
GARBAGE = b"\xff\xff\xff\xff"  # not a NodeStatus
INVALID_ARGUMENT = "3"
ABORTED = "10"
MiB = 1 << 20


def framed(*bodies: bytes) -> bytes:
    """gRPC messages back to back, as one DATA frame carries them."""
    return b"".join(prefix(len(body)) + body for body in bodies)


def good(free_mib: int) -> bytes:
    return status("node-1", mem_free=free_mib * MiB).SerializeToString()


async def statuses_until(events, marker: str) -> list[tuple[str, int]]:
    """(node id, memory free in MiB) of every STATUS event before `marker` JOINED."""
    seen = []
    while True:
        event = await events.receive()
        assert not isinstance(event, Exception), event
        kind = event_kind(event)
        if kind == "JOINED" and event.node.node.id == marker:
            return seen
        if kind == "STATUS":
            seen.append((event.node.node.id, event.node.node.memory_free // MiB))


async def ended(client: RawH2, stream_id: int) -> tuple[str | None, str]:
    await client.read(5, until=lambda _: client.status(stream_id) is not None)
    return client.status(stream_id), client.message(stream_id)


@asynccontextmanager
async def status_stream_of_a_node(config=None):
    """A scheduler, node-1 joined, a Controller watching, and a raw status stream opened (no
    message sent yet): yields (grpclib channel, events, raw client, stream id)."""
    async with running_scheduler(config) as scheduler, open_channel(scheduler.port) as channel:
        async with FakeController(channel).watch() as events:
            await FakeAgent(channel, "node-1").join()
            client = await RawH2.open(scheduler.port)
            try:
                yield channel, events, client, client.request(STATUS_PATH)
            finally:
                await client.aclose()


BAD = {
    "invalid value": (
        status("node-1", mem_total=1 * MiB, mem_free=2 * MiB).SerializeToString(),
        "memory.free",
    ),
    "another node": (status("node-2").SerializeToString(), "belongs to node node-1"),
    "undecodable": (GARBAGE, "scheduler.agent.NodeStatus"),
}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("half_close", [False, True], ids=["open", "half-closed"])
async def test_a_bad_status_in_one_read_keeps_those_before_it_and_drops_those_after(
    bad, half_close
):
    body, named = BAD[bad]
    async with status_stream_of_a_node() as (channel, events, client, stream_id):
        await FakeAgent(channel, "node-2").join()
        client.h2.send_data(
            stream_id, framed(good(1), good(2), body, good(3), good(4)), end_stream=half_close
        )
        await client.flush()
        code, message = await ended(client, stream_id)
        assert code == INVALID_ARGUMENT and named in message, (code, message)
        await FakeAgent(channel, "marker").join()
        assert await statuses_until(events, "marker") == [("node-1", 1), ("node-1", 2)], (
            "the statuses before the bad one are applied, in order; none after it"
        )
        [node] = [n for n in await FakeController(channel).list_nodes() if n.id == "node-1"]
        assert node.memory_free == 2 * MiB
        await FakeAgent(channel, "node-1").join()  # the stream is over: the node may join again


async def test_statuses_a_stream_sends_after_a_newer_stream_replaced_it_are_not_applied():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        agent, controller = FakeAgent(channel, "node-1"), FakeController(channel)
        async with controller.watch() as events:
            await agent.join()
            client = await RawH2.open(scheduler.port)
            older = client.request(STATUS_PATH)
            client.h2.send_data(older, framed(good(1)))
            await client.flush()
            assert (await wait_event(events, "STATUS", "node-1")).node.node.memory_free == MiB
            # One write: the newer stream's first status, then more from the older one. Read
            # together, whichever the scheduler takes first, the older stream's are applied only
            # while it is still in charge.
            newer = client.request(STATUS_PATH)
            client.h2.send_data(newer, framed(good(2)))
            client.h2.send_data(older, framed(good(7), good(8)))
            await client.flush()
            code, message = await ended(client, older)
            assert code == ABORTED and "replaced" in message, (code, message)
            client.h2.send_data(newer, framed(good(3)))
            await client.flush()
            await FakeAgent(channel, "marker").join()
            seen = [free for _, free in await statuses_until(events, "marker")]
            assert seen in ([2, 3], [7, 8, 2, 3]), seen
            assert client.status(newer) is None, "the newer stream goes on"
            await client.aclose()


async def test_a_throttled_status_in_one_read_waits_and_keeps_its_place():
    rate, burst = 10.0, 2
    config = make_config(liveness={"status_rate": rate, "status_burst": burst})
    async with status_stream_of_a_node(config) as (channel, events, client, stream_id):
        started = trio.current_time()
        client.h2.send_data(stream_id, framed(*(good(i) for i in range(1, 7))), end_stream=True)
        await client.flush()
        await client.read(5, until=lambda _: client.status(stream_id) is not None)
        took = trio.current_time() - started
        assert client.status(stream_id) == "0", client.message(stream_id)
        replies = [e for e in client.events if isinstance(e, h2.events.DataReceived)]
        assert replies and replies[0].data[5:] == agent_pb2.Empty().SerializeToString()
        await FakeAgent(channel, "marker").join()
        assert [free for _, free in await statuses_until(events, "marker")] == [1, 2, 3, 4, 5, 6], (
            "delayed, never dropped or reordered"
        )
        assert took >= 0.75 * (6 - burst) / rate, took


async def test_leaving_while_a_status_waits_for_the_rate_limit_drops_it():
    config = make_config(liveness={"status_rate": 1.0, "status_burst": 1})
    async with status_stream_of_a_node(config) as (channel, events, client, stream_id):
        client.h2.send_data(stream_id, framed(good(1), good(2), good(3)))
        await client.flush()
        assert (await wait_event(events, "STATUS", "node-1")).node.node.memory_free == MiB
        await FakeAgent(channel, "node-1").leave()  # 2 and 3 wait for the node's rate limit
        code, message = await ended(client, stream_id)
        assert code == ABORTED and "left" in message, (code, message)
        await trio.sleep(2.5)  # past the wait of both
        await FakeAgent(channel, "marker").join()
        assert await statuses_until(events, "marker") == []


async def test_a_stream_ended_by_a_refused_status_leaves_nothing_for_the_garbage_collector():
    # The refusal is raised on the bridge's reader and re-raised by the stream's trio task:
    # nothing of it may tie the call and its messages into a cycle (they would wait for a full
    # collection, which the GC thresholds make rare). (Undecodable
    # bytes, refused by the bridge itself, still leave one: the inbox keeps the GRPCError whose
    # traceback holds the frame that holds the call; so it was before, left to issue 15 point 4.)
    from scheduler.grpc_bridge import Call

    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        await FakeAgent(channel, "node-1").join()
        client = await RawH2.open(scheduler.port)
        async with saved_cycles(0.2) as found:
            for bad in (BAD["invalid value"][0], BAD["another node"][0]):
                stream_id = client.request(STATUS_PATH)
                client.h2.send_data(stream_id, framed(good(1), bad, good(2)))
                await client.flush()
                code, _ = await ended(client, stream_id)
                assert code == INVALID_ARGUMENT
        calls = [o for o in found if isinstance(o, Call)]
        statuses = [o for o in found if isinstance(o, agent_pb2.NodeStatus)]
        assert calls == [] and statuses == [], (
            f"{len(calls)} ended calls and {len(statuses)} statuses left in reference cycles"
        )
        await client.aclose()
