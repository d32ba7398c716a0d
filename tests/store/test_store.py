"""The stored state: its encodings (a contract, never pickles), the SQLite backend and the
migration of the previous release's pickled file, and the write queue (coalescing, group
commit, a backend that is unavailable or refuses our leadership)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sqlite3

import pytest
import trio

from scheduler.errors import Unavailable
from scheduler.model import (
    Event,
    InstanceCode,
    InstanceEvent,
    InstanceReport,
    InstanceStatus,
    NodeEvent,
    NodeEventKind,
    NodeMetrics,
    NodeState,
    NodeView,
    Resources,
    Usage,
    Workload,
    WorkloadType,
)
from scheduler.store import FenceLost, SqliteBackend, Store, StoreError, StoreUnavailable, codec
from scheduler.store.codec import NodeRow, PlacementRow

WORKLOAD = Workload(
    "web-1",
    "nginx:1",
    WorkloadType.CONTAINER,
    ("A=1", "B="),
    Resources(cpu=250, memory=None, disk=0),
)
STATUS = InstanceStatus("web-1", InstanceCode.RUNNING, None, Usage(1, 2, 3), "node-1")
VIEW = NodeView(
    "node-1",
    "10.0.0.1:7000",
    NodeState.READY,
    NodeMetrics(
        memory_total=8 << 30,
        memory_free=0,
        cpu_load=12.5,
        cpu_cores=None,
        instances=(InstanceReport("web-1", InstanceCode.WAITING),),
    ),
    ("web-1",),
    1700000000.5,
)


def test_values_round_trip_with_unknown_distinct_from_zero():
    items = [
        (codec.META, codec.encode_meta("e1", 41)),
        (
            codec.node_key("node-1"),
            codec.encode_node(NodeRow("node-1", "::1", 7000, NodeState.LOST, 3, 12.0)),
        ),
        (
            codec.placement_key("web-1"),
            codec.encode_placement(PlacementRow(WORKLOAD, "node-1", 3, STATUS)),
        ),
        (
            codec.placement_key("bare"),
            codec.encode_placement(
                PlacementRow(
                    Workload("bare", "img"),
                    "node-1",
                    3,
                    InstanceStatus("bare", InstanceCode.TERMINATED, "", node_id="node-1"),
                )
            ),
        ),
        (codec.event_key(12), codec.encode_event(Event(12, InstanceEvent(STATUS)))),
        (codec.event_key(7), codec.encode_event(Event(7, NodeEvent(NodeEventKind.JOINED, VIEW)))),
        (
            codec.event_key(9),
            codec.encode_event(
                Event(
                    9,
                    NodeEvent(
                        NodeEventKind.LOST, NodeView("n", "a:1", NodeState.LOST, None, (), 0.0)
                    ),
                )
            ),
        ),
        ("a-key-of-a-newer-version/x", b"\x01"),
    ]
    restored = codec.decode_state(items, retained=10)
    assert restored.epoch == "e1" and restored.revision == 41 + codec.REVISION_SLACK
    assert restored.nodes == [NodeRow("node-1", "::1", 7000, NodeState.LOST, 3, 12.0)]
    placements = {row.workload.instance_id: row for row in restored.placements}
    assert placements["web-1"] == PlacementRow(WORKLOAD, "node-1", 3, STATUS)
    assert placements["bare"].workload.resources is None
    assert placements["bare"].latest.message == "", "an empty message is not an absent one"
    assert [event.revision for event in restored.events] == [7, 9, 12], "in revision order"
    assert restored.events[0].body == NodeEvent(NodeEventKind.JOINED, VIEW)
    assert restored.events[1].body.node.metrics is None
    assert codec.decode_state(items, retained=2).events[0].revision == 9, "the newest retained"


def test_a_newer_format_or_garbage_is_refused_by_name():
    newer = codec.store_pb2.StoredMeta(format=codec.FORMAT + 1, epoch="e").SerializeToString()
    with pytest.raises(codec.FormatError, match="format 2; this version reads up to 1"):
        codec.decode_state([(codec.META, newer)], retained=10)
    with pytest.raises(codec.FormatError, match="nodes/x"):
        codec.decode_state(
            [(codec.META, codec.encode_meta("e", 1)), (codec.node_key("x"), b"\xff\xff\xff")],
            retained=10,
        )


def test_event_keys_sort_in_revision_order():
    keys = [codec.event_key(revision) for revision in (9, 10, 1_000_001, 99)]
    assert sorted(keys) == [codec.event_key(r) for r in (9, 10, 99, 1_000_001)]


# -- SQLite: the previous release's pickled file ------------------------------------------------

LEGACY = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (id TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
    state INTEGER NOT NULL, generation INTEGER NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE placements (instance_id TEXT PRIMARY KEY, node_id TEXT NOT NULL,
    generation INTEGER NOT NULL, workload BLOB NOT NULL, latest BLOB NOT NULL);
CREATE TABLE events (revision INTEGER PRIMARY KEY, event BLOB NOT NULL);
"""


# The previous release kept the wire's number as the workload type; migration makes it the enum.
LEGACY_WORKLOAD = dataclasses.replace(WORKLOAD, type=0)


def _legacy_file(directory, workload_blob=None) -> None:
    """A data directory as the previous release left it (pickled rows, schema "1")."""
    os.makedirs(directory, exist_ok=True)
    db = sqlite3.connect(directory / "state.sqlite3")
    db.executescript(LEGACY)
    dump = lambda value: pickle.dumps(value, pickle.HIGHEST_PROTOCOL)  # noqa: E731
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema", "1"), ("epoch", "old-epoch"), ("revision", "500")],
    )
    db.execute("INSERT INTO nodes VALUES ('node-1', '10.0.0.1', 7000, 0, 2, 5.0)")
    db.execute(
        "INSERT INTO placements VALUES ('web-1', 'node-1', 2, ?, ?)",
        (workload_blob or dump(LEGACY_WORKLOAD), dump(STATUS)),
    )
    db.execute(
        "INSERT INTO events VALUES (501, ?)",
        (dump(Event(501, NodeEvent(NodeEventKind.JOINED, VIEW))),),
    )
    db.commit()
    db.close()


def test_the_previous_release_file_is_migrated_once(tmp_path):
    _legacy_file(tmp_path)
    backend = SqliteBackend(tmp_path)
    try:
        restored = Store(backend, retained=10).load()
    finally:
        backend.close()
    assert restored.epoch == "old-epoch" and restored.revision == 500 + codec.REVISION_SLACK
    assert restored.nodes == [NodeRow("node-1", "10.0.0.1", 7000, NodeState.READY, 2, 5.0)]
    assert restored.placements == [PlacementRow(WORKLOAD, "node-1", 2, STATUS)]
    assert [e.body for e in restored.events] == [NodeEvent(NodeEventKind.JOINED, VIEW)]
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    values = [value for (value,) in db.execute("SELECT value FROM state")]
    db.close()
    assert tables == {"state"}, "the pickled tables are gone"
    assert not any(value.startswith(b"\x80") for value in values), "no pickle is left"


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_naming_another_class_is_refused_not_run(tmp_path):
    _legacy_file(tmp_path, workload_blob=pickle.dumps(_Boom()))
    with pytest.raises(StoreError, match="refusing to unpickle posix.system|refusing to unpickle"):
        SqliteBackend(tmp_path)
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM placements").fetchone() == (1,), "left as it was"
    db.close()
    SqliteBackend(tmp_path / "other").close()  # the lock was released with the refusal


# -- the write queue ----------------------------------------------------------------------------


class ScriptedBackend:
    """A backend in memory whose commits succeed, are unavailable, or lose the fence."""

    inline = False

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.batches: list[dict[str, bytes | None]] = []
        self.failure: Exception | None = None

    def items(self):
        return list(self.data.items())

    async def commit(self, batch) -> None:
        await trio.sleep(0.001)
        if self.failure is not None:
            raise self.failure
        self.batches.append(dict(batch.writes))
        for key, value in batch.writes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        if batch.trim_before is not None:
            end = codec.event_key(batch.trim_before)
            for key in [k for k in self.data if codec.EVENTS <= k < end]:
                del self.data[key]


async def test_placements_accepted_together_are_one_commit_and_statuses_coalesce():
    backend = ScriptedBackend()
    store = Store(backend, retained=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.begin("epoch", 1)
        backend.batches.clear()
        for code in (InstanceCode.WAITING, InstanceCode.RUNNING):  # the newest status wins
            store.update_placement(WORKLOAD, "node-1", 1, InstanceStatus("web-1", code))
        async with trio.open_nursery() as placing:
            for number in range(20):
                placing.start_soon(
                    store.save_placement, Workload(f"p-{number}", "img"), "n", 1, STATUS
                )
        assert len(backend.batches) == 1, "accepted in the same tick: one commit"
        assert len(backend.batches[0]) == 21
        restored = codec.decode_state(backend.items(), 10)
        assert {r.workload.instance_id: r.latest.code for r in restored.placements}[
            "web-1"
        ] is InstanceCode.RUNNING
        nursery.cancel_scope.cancel()


async def test_on_sqlite_placements_accepted_together_share_one_transaction(tmp_path):
    # A transaction's fixed cost is most of a placement's commit: those accepted in the same
    # tick wait for one, and each is on disk (another connection reads it) when it returns.
    backend = SqliteBackend(tmp_path)
    store = Store(backend, retained=10)
    reader = sqlite3.connect(backend.path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.begin("epoch", 1)
            before = store.commits
            seen = []

            async def place(number: int) -> None:
                await store.save_placement(Workload(f"p-{number}", "img"), "n", 1, STATUS)
                seen.append(
                    reader.execute(
                        "SELECT COUNT(*) FROM state WHERE key = ?",
                        (codec.placement_key(f"p-{number}"),),
                    ).fetchone()[0]
                )

            async with trio.open_nursery() as placing:
                for number in range(20):
                    placing.start_soon(place, number)
            assert store.commits - before == 1, "accepted in the same tick: one transaction"
            assert seen == [1] * 20, "each durable when its writer goes on"
            await store.save_placement(WORKLOAD, "node-1", 1, STATUS)
            assert store.commits - before == 2, "a later one: its own"
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
        backend.close()


async def test_events_beyond_retained_are_trimmed():
    backend = ScriptedBackend()
    store = Store(backend, retained=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for revision in range(1, 8):
            store.event_published(Event(revision, InstanceEvent(STATUS)))
            store.event_published(Event(revision + 100, NodeEvent(NodeEventKind.STATUS, VIEW)))
            await store.commit_durably()
        nursery.cancel_scope.cancel()
    assert sorted(k for k in backend.data if k.startswith(codec.EVENTS)) == [
        codec.event_key(r) for r in (5, 6, 7)
    ], "STATUS never stored; the newest 3 kept"


async def test_an_unavailable_backend_keeps_every_write_and_refuses_durable_ones_clearly():
    backend = ScriptedBackend()
    store = Store(backend, retained=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.begin("epoch", 1)
        backend.failure = StoreUnavailable("no etcd endpoint answered")
        store.save_node("node-1", "h", 1, NodeState.READY, 1, 0.0)
        with pytest.raises(Unavailable, match="state store unavailable: no etcd endpoint"):
            await store.save_placement(WORKLOAD, "node-1", 1, STATUS)
        store.save_node("node-1", "h", 1, NodeState.LOST, 1, 0.0)  # newer than the failed one
        backend.failure = None
        await store.commit_durably()
        restored = codec.decode_state(backend.items(), 10)
        assert restored.placements == [PlacementRow(WORKLOAD, "node-1", 1, STATUS)]
        assert [row.state for row in restored.nodes] == [NodeState.LOST], "newest write wins"
        nursery.cancel_scope.cancel()


async def test_a_refused_fence_ends_leadership_and_fails_the_writer():
    backend = ScriptedBackend()
    backend.failure = FenceLost("the leader key is gone")
    store = Store(backend, retained=10)
    lost = []
    store.on_fence_lost.append(lost.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with pytest.raises(Unavailable, match="stepped down: the leader key is gone"):
            await store.save_placement(WORKLOAD, "node-1", 1, STATUS)
        nursery.cancel_scope.cancel()
    assert lost == ["the leader key is gone"]
