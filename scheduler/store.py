"""Durable state in the data directory: sqlite3 in WAL mode, so a restart loses nothing that was
acknowledged.

Writes that acknowledge something (a placement, a Destroy) are committed before the call
returns; the others (node changes, events, instance statuses) are committed together every
`COMMIT_INTERVAL` while `run()` runs (else at the end of the current trio tick), so a wave of
10,000 LOST nodes is a few commits, not 20,000. A crash loses at most that interval of them:
nothing anyone was promised, and what the restarted scheduler re-learns from rejoining Agents.

What is kept:
- the epoch, and a revision checkpoint: a restart continues the same epoch past every revision
  the previous run may have handed out, so watchers resume without a snapshot;
- nodes (id, address, state, generation) on every join, leave and loss;
- placements (instance → node, generation, workload, latest status): committed before the
  Controller hears of an acceptance, updated on every instance status, deleted (committed)
  before a Destroy is acknowledged;
- every non-STATUS event (JOINED, LEFT, LOST, instance statuses), bounded by `events.retained`.
STATUS events are not written: there are thousands a second, and a watcher may skip them anyway.

Rows are pickled domain dataclasses; the file is the scheduler's own (mode 0600) and a schema
version guards against reading another version's rows.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .model import Event, InstanceStatus, NodeEvent, NodeEventKind, NodeState, Workload

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"  # bump when the tables or the pickled dataclasses change incompatibly
REVISION_SLACK = 1_000_000  # revisions a run may hand out (STATUS events) past its checkpoint
CHECKPOINT_EVERY = 100_000  # revisions between checkpoint writes; must stay below REVISION_SLACK
FILE_NAME = "state.sqlite3"
COMMIT_INTERVAL = 0.02  # s between commits of writes that acknowledge nothing (at most 50/s)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL, state INTEGER NOT NULL,
    generation INTEGER NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS placements (
    instance_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, generation INTEGER NOT NULL,
    workload BLOB NOT NULL, latest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (revision INTEGER PRIMARY KEY, event BLOB NOT NULL);
"""


class StoreError(Exception):
    """The data directory cannot be used (locked by another scheduler, unreadable)."""


@dataclass
class NodeRow:
    id: str
    host: str
    port: int
    state: NodeState
    generation: int
    last_seen: float


@dataclass
class PlacementRow:
    workload: Workload
    node_id: str
    generation: int
    latest: InstanceStatus


@dataclass
class Restored:
    """What the previous run left: empty on a first start."""

    epoch: str | None = None
    revision: int = 0
    nodes: list[NodeRow] = field(default_factory=list)
    placements: list[PlacementRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Store:
    """The scheduler's sqlite file. One scheduler per data directory (an flock guards it)."""

    def __init__(self, data_dir: str | os.PathLike[str], retained: int) -> None:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / FILE_NAME
        self._lock = open(directory / "scheduler.lock", "a+")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"another scheduler is using {directory}; give each its own "
                             "server.data_dir") from None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self._db.executescript(SCHEMA)
        self._retained = retained
        self._checkpoint = 0
        self._pending: list[tuple[str, tuple]] = []  # writes waiting for the next commit
        self._flush_scheduled = False
        self._wake: trio.Event | None = None  # set while run() commits periodically

    def close(self) -> None:
        self.flush()
        self._db.close()
        self._lock.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued writes every COMMIT_INTERVAL while there are any; flush when ended."""
        self._wake = trio.Event()
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                await trio.sleep(COMMIT_INTERVAL)
                self._wake = trio.Event()  # writes from here on wait for the next commit
                self.flush()
        finally:
            self._wake = None
            self.flush()

    def _write(self, sql: str, params: tuple) -> None:
        """Queue a write for the next periodic commit (or the end of this trio tick)."""
        self._pending.append((sql, params))
        if self._wake is not None:
            self._wake.set()
            return
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        try:
            trio.lowlevel.current_trio_token().run_sync_soon(self.flush)
        except RuntimeError:  # not inside trio (tools, tests): write at once
            self.flush()

    def _write_now(self, sql: str, params: tuple) -> None:
        """Commit this write (and everything queued before it) before returning."""
        self._pending.append((sql, params))
        self.flush()

    def flush(self) -> None:
        """Commit every queued write in one transaction."""
        self._flush_scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._db.execute("BEGIN")
        try:
            for sql, params in pending:
                self._db.execute(sql, params)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> Restored:
        """The previous run's state; a schema mismatch starts afresh (and says so)."""
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta and meta.get("schema") != SCHEMA_VERSION:
            log.warning("state in %s has schema %s, not %s: starting with an empty state",
                        self.path, meta.get("schema"), SCHEMA_VERSION)
            self._db.executescript("DELETE FROM meta; DELETE FROM nodes; DELETE FROM placements;"
                                   " DELETE FROM events;")
            meta = {}
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        if "epoch" not in meta:
            return Restored()
        events = [pickle.loads(blob) for (blob,) in self._db.execute(
            "SELECT event FROM events ORDER BY revision DESC LIMIT ?", (self._retained,))]
        events.reverse()
        last_event = events[-1].revision if events else 0
        checkpoint = int(meta.get("revision", "0"))
        restored = Restored(
            epoch=meta["epoch"],
            revision=max(checkpoint + REVISION_SLACK, last_event),
            nodes=[NodeRow(id, host, port, NodeState(state), generation, last_seen)
                   for id, host, port, state, generation, last_seen in self._db.execute(
                       "SELECT id, host, port, state, generation, last_seen FROM nodes")],
            placements=[PlacementRow(pickle.loads(workload), node_id, generation,
                                     pickle.loads(latest))
                        for workload, node_id, generation, latest in self._db.execute(
                            "SELECT workload, node_id, generation, latest FROM placements")],
            events=events,
        )
        return restored

    def begin(self, epoch: str, revision: int) -> None:
        """Record the epoch and a checkpoint for this run (before it serves anything)."""
        self._write("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
        self._write_checkpoint(revision)
        self.flush()

    # -- writing ---------------------------------------------------------------------------

    def event_published(self, event: Event) -> None:
        """Keep non-STATUS events; move the revision checkpoint ahead of STATUS floods."""
        if event.revision >= self._checkpoint + CHECKPOINT_EVERY:
            self._write_checkpoint(event.revision)
        body = event.body
        if isinstance(body, NodeEvent) and body.kind is NodeEventKind.STATUS:
            return
        self._write("INSERT OR REPLACE INTO events VALUES (?, ?)",
                    (event.revision, pickle.dumps(event, pickle.HIGHEST_PROTOCOL)))
        if event.revision % 1024 == 0:  # trim now and then, not on every event
            self._write("DELETE FROM events WHERE revision <= (SELECT revision FROM events "
                        "ORDER BY revision DESC LIMIT 1 OFFSET ?)", (self._retained,))

    def _write_checkpoint(self, revision: int) -> None:
        self._checkpoint = revision
        self._write("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (str(revision),))

    def save_node(self, node_id: str, host: str, port: int, state: NodeState, generation: int,
                  last_seen: float) -> None:
        self._write("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?)",
                    (node_id, host, port, state.value, generation, last_seen))

    def delete_node(self, node_id: str) -> None:
        self._write("DELETE FROM nodes WHERE id = ?", (node_id,))

    def save_placement(self, workload: Workload, node_id: str, generation: int,
                       latest: InstanceStatus) -> None:
        """Durable before returning: the Controller hears of the acceptance right after."""
        self._write_now("INSERT OR REPLACE INTO placements VALUES (?, ?, ?, ?, ?)",
                        (workload.instance_id, node_id, generation,
                         pickle.dumps(workload, pickle.HIGHEST_PROTOCOL),
                         pickle.dumps(latest, pickle.HIGHEST_PROTOCOL)))

    def update_placement(self, latest: InstanceStatus) -> None:
        self._write("UPDATE placements SET latest = ? WHERE instance_id = ?",
                    (pickle.dumps(latest, pickle.HIGHEST_PROTOCOL), latest.instance_id))

    def delete_placement(self, instance_id: str) -> None:
        """Durable before returning: Destroy is acknowledged right after."""
        self._write_now("DELETE FROM placements WHERE instance_id = ?", (instance_id,))
