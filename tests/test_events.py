"""scheduler.events: the revisioned event log and its watchers (SPEC §2.3).

Driven directly, no sockets; waits use trio's MockClock (`autojump_clock`), so "nothing more
arrives" is checked without real sleeps.
"""

from __future__ import annotations

import tracemalloc

import pytest
import trio

from scheduler.events import COALESCE_BACKLOG, EventLog, Watcher
from scheduler.model import (
    InstanceCode,
    InstanceEvent,
    InstanceStatus,
    NodeEvent,
    NodeEventKind,
    NodeMetrics,
    NodeState,
    NodeView,
    Snapshot,
)

SNAPSHOT = Snapshot((NodeView("snap-node", "10.0.0.9:7000", NodeState.READY, None, (), 0.0),), ())


def make_log(retained: int = 100_000) -> EventLog:
    return EventLog(retained, lambda: SNAPSHOT)


def node(kind: NodeEventKind, node_id: str, free: int = 0) -> NodeEvent:
    metrics = (
        NodeMetrics(memory_total=1 << 30, memory_free=free)
        if kind is NodeEventKind.STATUS
        else None
    )
    state = {NodeEventKind.LEFT: NodeState.LEFT, NodeEventKind.LOST: NodeState.LOST}.get(
        kind, NodeState.READY
    )
    return NodeEvent(kind, NodeView(node_id, "10.0.0.1:7000", state, metrics, (), 0.0))


def instance(instance_id: str, code: InstanceCode = InstanceCode.RUNNING) -> InstanceEvent:
    return InstanceEvent(InstanceStatus(instance_id, code, node_id="node-a"))


async def drain(watcher: Watcher) -> list:
    """Every event the watcher can read without waiting."""
    events = []
    while True:
        with trio.move_on_after(1) as idle:
            events.append(await watcher.next())
        if idle.cancelled_caught:
            return events


def describe(event) -> tuple:
    body = event.body
    if isinstance(body, NodeEvent):
        return (event.revision, body.kind.name, body.node.id)
    if isinstance(body, InstanceEvent):
        return (event.revision, "INSTANCE", body.status.instance_id)
    return (event.revision, "SNAPSHOT")


# -- revisions and replay --------------------------------------------------------------------


def test_revisions_grow_by_one_per_event_within_an_epoch():
    log = make_log()
    published = [log.publish(node(NodeEventKind.JOINED, f"n{i}")) for i in range(5)]
    published.append(log.publish(instance("i-1")))
    assert [e.revision for e in published] == [1, 2, 3, 4, 5, 6]
    assert log.revision == 6
    assert log.epoch and log.epoch != make_log().epoch, "each incarnation has its own epoch"


async def test_replay_after_a_revision_returns_exactly_the_missed_events_in_order(autojump_clock):
    log = make_log()
    published = [
        log.publish(node(NodeEventKind.JOINED, "a")),
        log.publish(node(NodeEventKind.STATUS, "a")),
        log.publish(instance("i-1")),
        log.publish(node(NodeEventKind.STATUS, "a", free=1)),
        log.publish(node(NodeEventKind.LEFT, "a")),
        log.publish(node(NodeEventKind.JOINED, "b")),
    ]
    watcher = Watcher(log, log.epoch, 2)
    got = await drain(watcher)
    assert [describe(e) for e in got] == [describe(e) for e in published[2:]]
    assert got == published[2:], "replayed events must be the very events published"


async def test_replay_from_zero_with_the_current_epoch_returns_everything(autojump_clock):
    log = make_log()
    published = [log.publish(node(NodeEventKind.JOINED, f"n{i}")) for i in range(3)]
    assert await drain(Watcher(log, log.epoch, 0)) == published


async def test_a_watcher_at_the_head_waits_then_gets_live_events(autojump_clock):
    log = make_log()
    log.publish(node(NodeEventKind.JOINED, "a"))
    watcher = Watcher(log, log.epoch, 1)
    assert await drain(watcher) == [], "a watcher at the head gets nothing until an event"
    async with trio.open_nursery() as nursery:
        got = []

        async def read_two():
            got.append(await watcher.next())
            got.append(await watcher.next())

        nursery.start_soon(read_two)
        await trio.sleep(5)
        assert got == []
        first = log.publish(node(NodeEventKind.STATUS, "a"))
        second = log.publish(node(NodeEventKind.LEFT, "a"))
    assert got == [first, second]


@pytest.mark.parametrize("case", ["wrong epoch", "empty epoch", "ahead of head", "older than ring"])
async def test_an_unresumable_position_gets_a_snapshot_first(autojump_clock, case):
    log = make_log(retained=10)
    for i in range(25):  # revisions 16..25 are retained
        log.publish(node(NodeEventKind.STATUS, "a", free=i))
    epoch, after = {
        "wrong epoch": ("0123456789abcdef", 20),
        "empty epoch": ("", 20),
        "ahead of head": (log.epoch, 26),
        "older than ring": (log.epoch, 14),
    }[case]
    watcher = Watcher(log, epoch, after)
    first = await watcher.next()
    assert first.body is SNAPSHOT
    assert first.revision == 25, "a snapshot is stamped with the head revision"
    live = log.publish(node(NodeEventKind.JOINED, "b"))
    assert await drain(watcher) == [live], "after the snapshot: live events only"


async def test_the_oldest_retained_position_still_replays(autojump_clock):
    log = make_log(retained=10)
    published = [log.publish(node(NodeEventKind.STATUS, "a", free=i)) for i in range(25)]
    assert log.first_retained == 16
    got = await drain(Watcher(log, log.epoch, 15))
    assert got == published[15:], "after_revision = first_retained - 1 is resumable"


async def test_a_watcher_behind_the_ring_gets_an_in_band_snapshot(autojump_clock):
    log = make_log(retained=10)
    log.publish(node(NodeEventKind.JOINED, "a"))
    watcher = Watcher(log, log.epoch, 0)
    assert describe(await watcher.next()) == (1, "JOINED", "a")
    for i in range(30):  # the watcher does not read meanwhile
        log.publish(node(NodeEventKind.STATUS, "a", free=i))
    snapshot = await watcher.next()
    assert snapshot.body is SNAPSHOT and snapshot.revision == 31
    live = log.publish(node(NodeEventKind.LEFT, "a"))
    assert await drain(watcher) == [live]


def test_an_event_is_freed_as_it_leaves_the_ring():
    # Held until the list was compacted (every `retained` events), the ring swung between
    # `retained` events and twice as many: the memory of `retained` more events at its top.
    retained = 2_000
    log = make_log(retained)
    tracemalloc.start()
    try:
        # JOINED events: the log keeps them all (superseded STATUS events it may let go of)
        for i in range(retained):
            log.publish(node(NodeEventKind.JOINED, f"node-{i % 10}"))
        full, _ = tracemalloc.get_traced_memory()
        for i in range(retained, 2 * retained - 1):  # just short of the next compaction
            log.publish(node(NodeEventKind.JOINED, f"node-{i % 10}"))
        later, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(log) == retained
    # What may stay of an event that left: its list slot and its revision (~55 bytes with the
    # lists' growth); the event itself, with its NodeView, is ~300.
    assert later - full < 100 * retained, f"{later - full} bytes more than with {retained} events"


def test_retained_must_be_positive():
    with pytest.raises(ValueError, match="retained"):
        EventLog(0, lambda: SNAPSHOT)


# -- coalescing ------------------------------------------------------------------------------


def _busy_history(log: EventLog) -> list:
    """STATUS floods of two nodes with membership and instance events in between."""
    published = [
        log.publish(node(NodeEventKind.JOINED, "a")),
        log.publish(node(NodeEventKind.JOINED, "b")),
    ]
    for i in range(3 * COALESCE_BACKLOG):
        published.append(log.publish(node(NodeEventKind.STATUS, "ab"[i % 2], free=i)))
        if i % 500 == 250:
            published.append(log.publish(instance(f"i-{i}")))
            published.append(log.publish(node(NodeEventKind.JOINED, f"c{i}")))
        if i % 500 == 499:
            published.append(log.publish(node(NodeEventKind.LEFT, f"c{i - 249}")))
            published.append(log.publish(node(NodeEventKind.LOST, "b")))
            published.append(log.publish(node(NodeEventKind.JOINED, "b")))
    # A node with a single STATUS: never superseded, so never skipped.
    published.append(log.publish(node(NodeEventKind.STATUS, "c", free=1)))
    for i in range(20):  # the tail, within COALESCE_BACKLOG of the head
        published.append(log.publish(node(NodeEventKind.STATUS, "a", free=10_000 + i)))
    return published


async def test_a_far_behind_watcher_skips_only_superseded_status(autojump_clock):
    log = make_log()
    published = _busy_history(log)
    head = log.revision
    latest = {}
    for event in published:
        if isinstance(event.body, NodeEvent) and event.body.kind is NodeEventKind.STATUS:
            latest[event.body.node.id] = event.revision

    got = await drain(Watcher(log, log.epoch, 0))

    expected = [
        e
        for e in published
        if not (
            isinstance(e.body, NodeEvent)
            and e.body.kind is NodeEventKind.STATUS
            and head - e.revision >= COALESCE_BACKLOG
            and latest[e.body.node.id] > e.revision
        )
    ]
    assert [describe(e) for e in got] == [describe(e) for e in expected]
    assert len(got) < len(published), "a far-behind watcher should have skipped something"
    never_skipped = [
        e
        for e in published
        if not (isinstance(e.body, NodeEvent) and e.body.kind is NodeEventKind.STATUS)
    ]
    assert [e for e in got if e in never_skipped] == never_skipped, (
        "JOINED/LEFT/LOST and instance events are never skipped"
    )
    tail = [e for e in published if head - e.revision < COALESCE_BACKLOG]
    assert got[-len(tail) :] == tail, "within COALESCE_BACKLOG of the head every event arrives"
    assert [e.revision for e in got] == sorted({e.revision for e in got}), "in revision order"


async def test_a_watcher_close_to_the_head_gets_every_status(autojump_clock):
    log = make_log()
    watcher = Watcher(log, log.epoch, 0)
    got, published = [], []
    for i in range(3 * COALESCE_BACKLOG):
        published.append(log.publish(node(NodeEventKind.STATUS, "a", free=i)))
        if i % 100 == 99:  # reads in batches, never COALESCE_BACKLOG behind
            got.extend(await drain(watcher))
    got.extend(await drain(watcher))
    assert got == published


async def test_a_watcher_just_under_the_backlog_gets_every_status(autojump_clock):
    log = make_log()
    watcher = Watcher(log, log.epoch, 0)
    published = [
        log.publish(node(NodeEventKind.STATUS, "a", free=i)) for i in range(COALESCE_BACKLOG)
    ]  # first event is COALESCE_BACKLOG - 1 behind
    assert await drain(watcher) == published


async def test_a_reconnecting_watcher_far_behind_still_sees_the_latest_status(autojump_clock):
    log = make_log()
    log.publish(node(NodeEventKind.JOINED, "a"))
    for i in range(2 * COALESCE_BACKLOG):
        log.publish(node(NodeEventKind.STATUS, "a", free=i))
    last_a = log.publish(node(NodeEventKind.STATUS, "a", free=123))
    for i in range(2 * COALESCE_BACKLOG):
        log.publish(node(NodeEventKind.STATUS, "b", free=i))
    got = await drain(Watcher(log, log.epoch, 1))
    a_statuses = [e for e in got if e.body.node.id == "a"]
    assert a_statuses == [last_a], "superseded STATUS of a skipped, its latest one kept"


async def test_the_log_lets_go_of_status_no_watcher_can_get_any_more(autojump_clock):
    # Beyond COALESCE_BACKLOG of the head only each node's latest STATUS can still be handed
    # out: 100,000 retained reports of a fleet were ~60 MB that no watcher would ever see.
    log = make_log()
    joined = [log.publish(node(NodeEventKind.JOINED, n)) for n in "abc"]
    published = list(joined)
    for i in range(10 * COALESCE_BACKLOG):
        published.append(log.publish(node(NodeEventKind.STATUS, "ab"[i % 2], free=i)))
    only_c = log.publish(node(NodeEventKind.STATUS, "c", free=1))
    published.append(only_c)
    for i in range(COALESCE_BACKLOG):
        published.append(log.publish(node(NodeEventKind.STATUS, "ab"[i % 2], free=-i)))
    assert len(log) <= 3 * COALESCE_BACKLOG, f"{len(log)} held of {len(published)}"
    held = log._events[log._start :]
    far = [e for e in held if log.revision - e.revision >= COALESCE_BACKLOG]
    superseded = [e for e in far if e.body.node.id in "ab" and e.body.kind is NodeEventKind.STATUS]
    assert len(superseded) <= COALESCE_BACKLOG, "only those since the last sweep"
    assert [e for e in far if e not in superseded] == [*joined, only_c], "all the rest is held"
    got = await drain(Watcher(log, log.epoch, 0))
    tail = [e for e in published if log.revision - e.revision < COALESCE_BACKLOG]
    assert got == [*joined, only_c, *tail], "a watcher from the start gets what it always got"
    assert log.first_retained == 1, "and may still resume from the very start"
