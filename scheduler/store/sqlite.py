"""The SQLite backend: one table of (key, value) in `<data_dir>/state.sqlite3`, WAL mode.

One scheduler per data directory (an flock guards it). Commits are synchronous, without
fsync (`synchronous=NORMAL`): ~35 µs a transaction plus ~7 µs a row on the bench machine, so
durable writes share transactions like etcd's (`state.Store`'s group commit). The file of the
previous release (schema "1":
pickled dataclasses in four tables) is migrated once, on first start, reading nothing but the
scheduler's own domain dataclasses (`_OwnClassesOnly`): a pickle naming any other class is
refused, so a tampered file cannot run code.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import logging
import os
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from .. import model
from . import codec
from .codec import NodeRow, PlacementRow
from .state import Batch, StoreError

T = TypeVar("T")

log = logging.getLogger(__name__)

FILE_NAME = "state.sqlite3"
SCHEMA = "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
LEGACY_SCHEMA = "1"  # the previous release's pickled tables, migrated on first start
LEGACY_TABLES = ("meta", "nodes", "placements", "events")


class SqliteBackend:
    """The state table of one data directory."""

    inline = True

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / FILE_NAME
        self._lock = open(directory / "scheduler.lock", "a+")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(
                f"another scheduler is using {directory}; give each its own server.data_dir"
            ) from None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        try:
            self._migrate_legacy()
        except BaseException:
            self.close()
            raise
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()
        self._lock.close()

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(self._db.execute("SELECT key, value FROM state").fetchall())

    async def commit(self, batch: Batch) -> None:
        self.commit_now(batch)

    def commit_now(self, batch: Batch) -> None:
        """Apply one batch in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            # One write per key, so the order between keys does not matter: two statements,
            # each prepared once for the whole batch.
            writes = batch.writes.items()
            db.executemany(
                "DELETE FROM state WHERE key = ?", [(k,) for k, v in writes if v is None]
            )
            db.executemany(
                "INSERT OR REPLACE INTO state VALUES (?, ?)",
                [(k, v) for k, v in writes if v is not None],
            )
            if batch.trim_before is not None:
                db.execute(
                    "DELETE FROM state WHERE key >= ? AND key < ?",
                    (codec.EVENTS, codec.event_key(batch.trim_before)),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- the previous release's file -------------------------------------------------------

    def _migrate_legacy(self) -> None:
        """Rewrite a schema-1 file (pickled rows) into the state table, in one transaction."""
        tables = {
            name
            for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "placements" not in tables:
            return
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta and meta.get("schema") != LEGACY_SCHEMA:
            raise StoreError(
                f"{self.path} has schema {meta.get('schema')!r}, which this "
                "version cannot read; move the file away to start afresh"
            )
        db = self._db
        try:
            writes = dict(_legacy_writes(db, meta))
        except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError) as err:
            raise StoreError(
                f"cannot migrate {self.path} (state of the previous release): "
                f"{err}; move the file away to start afresh"
            ) from None
        db.execute("BEGIN")
        try:
            db.execute(SCHEMA)
            db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", writes.items())
            for table in LEGACY_TABLES:
                db.execute(f"DROP TABLE IF EXISTS {table}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        log.info(
            "migrated %s from the previous release's format: %d records", self.path, len(writes)
        )


def _legacy_writes(db: sqlite3.Connection, meta: dict[str, str]) -> Iterator[tuple[str, bytes]]:
    if "epoch" not in meta:
        return
    yield codec.META, codec.encode_meta(meta["epoch"], int(meta.get("revision", "0")))
    for id_, host, port, state, generation, last_seen in db.execute(
        "SELECT id, host, port, state, generation, last_seen FROM nodes"
    ):
        yield (
            codec.node_key(id_),
            codec.encode_node(
                NodeRow(id_, host, port, model.NodeState(state), generation, last_seen)
            ),
        )
    for workload, node_id, generation, latest in db.execute(
        "SELECT workload, node_id, generation, latest FROM placements"
    ):
        workload = _unpickle(workload, model.Workload)
        if isinstance(workload.type, int):  # the previous release kept the wire's number
            workload = dataclasses.replace(workload, type=model.WorkloadType(workload.type))
        row = PlacementRow(workload, node_id, generation, _unpickle(latest, model.InstanceStatus))
        yield codec.placement_key(row.workload.instance_id), codec.encode_placement(row)
    for revision, blob in db.execute("SELECT revision, event FROM events"):
        event = _unpickle(blob, model.Event)
        yield codec.event_key(revision), codec.encode_event(event)


class _OwnClassesOnly(pickle.Unpickler):
    """Unpickles the scheduler's domain dataclasses and enums, and refuses anything else."""

    ALLOWED = frozenset(
        {
            "Event",
            "NodeEvent",
            "InstanceEvent",
            "NodeView",
            "NodeMetrics",
            "InstanceReport",
            "InstanceStatus",
            "Usage",
            "Workload",
            "Resources",
            "NodeState",
            "NodeEventKind",
            "InstanceCode",
        }
    )

    def find_class(self, module: str, name: str) -> type:
        if module == model.__name__ and name in self.ALLOWED:
            cls: type = getattr(model, name)
            return cls
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle(blob: bytes, expected: type[T]) -> T:
    value = _OwnClassesOnly(io.BytesIO(blob)).load()
    if not isinstance(value, expected):
        raise TypeError(f"expected a {expected.__name__}, found a {type(value).__name__}")
    return value
