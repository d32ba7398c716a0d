"""The etcd backend: the state under `<prefix>/state/`, every write fenced on the leadership.

Layout under `[etcd] prefix` (values: `codec`, protos/store.proto):
  <prefix>/election/<lease id>   etcd's election (v3election): the leader's key and each
                                 standby's; value = the advertise address
  <prefix>/state/<codec key>     meta, nodes/…, placements/…, events/…, term

Every commit is a Txn whose only condition is that our leader key still exists with the create
revision it had when we were elected: once the lease expired, or another scheduler leads, the
Txn is refused and the leader steps down (`FenceLost`). A Txn holds at most `MAX_TXN_OPS`
operations (etcd's default limit), so a larger batch is several Txns, in order: each key
appears once per batch, so a batch applied in part and then again is still right.

`Mirror` keeps every scheduler's warm copy of the state (leader and standbys alike) through one
etcd Watch of the prefix, and knows who leads from the election keys it sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from .._proto import store_pb2
from .._proto.etcd import kv_pb2, rpc_pb2, v3election_pb2
from ..errors import RemoteError
from ..logs import Repeating
from . import codec
from .state import Batch, FenceLost, StoreUnavailable

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: operations per Txn
WATCH_RETRY = 0.2  # s before a broken watch is opened again (on the next endpoint)
TERM = "term"  # state key each new leader writes first: who leads, and a revision to wait for


class WatchStream(Protocol):
    """One etcd Watch being read; `cancel()` ends it."""

    async def receive(self) -> rpc_pb2.WatchResponse: ...

    def cancel(self) -> None: ...


class EtcdKV(Protocol):
    """What the backend and the mirror need of an etcd client (`scheduler.etcd.EtcdClient`)."""

    @property
    def endpoint(self) -> str: ...

    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse: ...

    async def load(self, prefix: bytes) -> tuple[list[kv_pb2.KeyValue], int]: ...

    def watch(self, prefix: bytes, start_revision: int) -> WatchStream: ...

    def next_endpoint(self) -> None: ...


class EtcdBackend:
    """The state as one leader writes it: fenced Txns through an EtcdClient."""

    inline = False

    def __init__(self, client: EtcdKV, mirror: Mirror, leader: v3election_pb2.LeaderKey) -> None:
        self._client = client
        self._mirror = mirror
        self._prefix = mirror.state_prefix
        self._fence = rpc_pb2.Compare(
            result=rpc_pb2.Compare.EQUAL,
            target=rpc_pb2.Compare.CREATE,
            key=leader.key,
            create_revision=leader.rev,
        )

    def items(self) -> list[tuple[str, bytes]]:
        return list(self._mirror.values.items())

    async def commit(self, batch: Batch) -> None:
        prefix = self._prefix
        ops = [
            rpc_pb2.RequestOp(
                request_delete_range=rpc_pb2.DeleteRangeRequest(key=prefix + key.encode())
            )
            if value is None
            else rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=prefix + key.encode(), value=value)
            )
            for key, value in batch.writes.items()
        ]
        if batch.trim_before is not None:
            ops.append(
                rpc_pb2.RequestOp(
                    request_delete_range=rpc_pb2.DeleteRangeRequest(
                        key=prefix + codec.EVENTS.encode(),
                        range_end=prefix + codec.event_key(batch.trim_before).encode(),
                    )
                )
            )
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self._txn(ops[start : start + MAX_TXN_OPS])

    async def _txn(self, ops: list[rpc_pb2.RequestOp]) -> int:
        response = await self._client.txn(rpc_pb2.TxnRequest(compare=[self._fence], success=ops))
        if not response.succeeded:
            raise FenceLost(
                f"etcd refused a write fenced on leader key "
                f"{self._fence.key.decode(errors='replace')} (revision "
                f"{self._fence.create_revision}): the lease expired or another "
                "scheduler leads"
            )
        return response.header.revision

    async def open_term(self, advertise: str) -> int:
        """Write the term record (fenced); the etcd revision the warm copy must reach before
        it holds everything every earlier leader wrote."""
        value = store_pb2.StoredTerm(leader=advertise, since_unix=time.time()).SerializeToString()
        return await self._txn(
            [
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(key=self._prefix + TERM.encode(), value=value)
                )
            ]
        )


class Mirror:
    """The state under the prefix as etcd has it, kept current by a Watch; and the leader.

    `values` maps codec keys to encoded values; `revision` is the newest etcd revision whose
    changes are applied. A watch that breaks is opened again from there on the next endpoint;
    one that etcd cancels because the revisions it needs were compacted loads everything again.
    """

    def __init__(self, client: EtcdKV, prefix: str) -> None:
        self._client = client
        self._root = (prefix + "/").encode()
        self.state_prefix = (prefix + "/state/").encode()
        self.election = (prefix + "/election").encode()
        self._candidates_prefix = self.election + b"/"
        self.values: dict[str, bytes] = {}
        self.revision = 0
        self._candidates: dict[bytes, tuple[int, str]] = {}  # key -> (create revision, address)
        self._changed = trio.Event()
        self.on_leader_change: list[Callable[[str], None]] = []
        self._leader = ""
        self._load_failing = Repeating(log)
        self._watch_failing = Repeating(log, logging.INFO)

    @property
    def leader(self) -> str:
        """The advertise address of the scheduler that leads now; "" if none does."""
        return self._leader

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load, report started, then follow every change until cancelled."""
        await self._load()
        task_status.started()
        while True:
            stream = self._client.watch(self._root, self.revision + 1)
            try:
                while True:
                    response = await stream.receive()
                    if response.canceled:
                        if response.compact_revision:
                            log.warning(
                                "etcd compacted past revision %d: loading the state again",
                                self.revision,
                            )
                            await self._load()
                        break
                    self._apply(response.events)
                    self._watch_failing.over("etcd watch open again on %s", self._client.endpoint)
            except (RemoteError, trio.EndOfChannel) as err:
                self._watch_failing.occurred(
                    "etcd watch on %s ended (%s); opening it again", self._client.endpoint, err
                )
                self._client.next_endpoint()
            finally:
                stream.cancel()
            await trio.sleep(WATCH_RETRY)

    async def _load(self) -> None:
        while True:
            try:
                items, revision = await self._client.load(self._root)
                break
            except StoreUnavailable as err:
                self._load_failing.occurred("cannot load the state from etcd: %s; retrying", err)
                await trio.sleep(WATCH_RETRY)
        self._load_failing.over("loaded the state from etcd")
        self.values.clear()
        self._candidates.clear()
        for kv in items:
            self._put(kv.key, kv.value, kv.create_revision)
        self.revision = revision
        self._leader_changed()
        self._wake()

    def _apply(self, events: Iterable[kv_pb2.Event]) -> None:
        for event in events:
            kv = event.kv
            if event.type == kv_pb2.Event.DELETE:
                self._delete(kv.key)
            else:
                self._put(kv.key, kv.value, kv.create_revision)
            self.revision = max(self.revision, kv.mod_revision)
        self._leader_changed()
        self._wake()

    def _put(self, key: bytes, value: bytes, create_revision: int) -> None:
        if key.startswith(self.state_prefix):
            self.values[key[len(self.state_prefix) :].decode()] = value
        elif key.startswith(self._candidates_prefix):
            self._candidates[key] = (create_revision, value.decode(errors="replace"))

    def _delete(self, key: bytes) -> None:
        if key.startswith(self.state_prefix):
            self.values.pop(key[len(self.state_prefix) :].decode(), None)
        else:
            self._candidates.pop(key, None)

    def _leader_changed(self) -> None:
        leader = min(self._candidates.values())[1] if self._candidates else ""
        if leader != self._leader:
            self._leader = leader
            for hook in self.on_leader_change:
                hook(leader)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, revision: int) -> None:
        """Wait until the copy holds every change up to `revision`."""
        while self.revision < revision:
            await self._changed.wait()
