"""Durable state: what a restarted scheduler, or a newly elected leader, continues from.

`state.Store` queues writes and commits them to a backend: `sqlite.SqliteBackend` (one host,
the data directory) or `etcd.EtcdBackend` (several schedulers, one leader; every write fenced
on the leadership). `codec` is the stored layout, a versioned contract (protos/store.proto).
"""

from .codec import NodeRow, PlacementRow, Restored
from .sqlite import SqliteBackend
from .state import COMMIT_INTERVAL, Batch, FenceLost, Store, StoreError, StoreUnavailable

__all__ = [
    "COMMIT_INTERVAL",
    "Batch",
    "FenceLost",
    "NodeRow",
    "PlacementRow",
    "Restored",
    "SqliteBackend",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
