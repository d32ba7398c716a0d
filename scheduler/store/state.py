"""The scheduler's durable state: writes queued by key, committed to a backend (SQLite or etcd).

Writes that acknowledge something (a placement, a Destroy) are committed before the call
returns; the others (node changes, events, instance statuses) are committed together every
`COMMIT_INTERVAL` while `run()` runs, so a wave of 10,000 LOST nodes is a few commits, not
20,000. A crash loses at most that interval of them: nothing anyone was promised, and what the
next run re-learns from rejoining Agents.

Pending writes are kept one per key (the newest wins), so what waits for a commit is bounded by
the size of the state itself, also while the backend is unavailable. A commit takes everything
pending, in one transaction where the backend allows (etcd: chunks of at most 128 keys), so
placements accepted together are committed together (group commit): a durable writer wakes
the committer and waits for its commit, which starts once every task runnable in the same
tick has run; on SQLite too, where a commit's fixed cost is most of it.

What is kept (layout and encodings: `codec`):
- the epoch, and a revision checkpoint: the next run (or leader) continues the same epoch past
  every revision this one may have handed out, so watchers resume without a snapshot;
- nodes (id, address, state, generation) on every join, leave and loss;
- placements (instance → node, generation, workload, latest status);
- every non-STATUS event (JOINED, LEFT, LOST, instance statuses), bounded by `events.retained`.
STATUS events are not written: there are thousands a second, and a watcher may skip them anyway.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

import trio

from ..errors import Unavailable
from ..model import Event, InstanceStatus, NodeEvent, NodeEventKind, NodeState, Workload
from . import codec
from .codec import NodeRow, PlacementRow, Restored

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 100_000  # revisions between checkpoint writes; below codec.REVISION_SLACK
COMMIT_INTERVAL = 0.02  # s between commits of writes that acknowledge nothing (at most 50/s)
RETRY_INTERVAL = 0.5  # s between commits while the backend is unavailable and nobody waits


class StoreError(Exception):
    """The state cannot be used (data directory locked by another scheduler, unreadable)."""


class StoreUnavailable(Exception):
    """The backend did not commit (etcd unreachable on every endpoint); nothing was lost."""


class FenceLost(Exception):
    """The backend refused a write fenced on our leadership: another scheduler may lead."""


@dataclass
class Batch:
    """One commit: the newest value per key (None: delete), and events to trim."""

    writes: dict[str, bytes | None]
    trim_before: int | None = None  # delete stored events with a lower revision


class Backend(Protocol):
    inline: bool  # commits synchronously (SQLite): what is pending when run() ends, it commits

    def items(self) -> Iterable[tuple[str, bytes]]: ...

    async def commit(self, batch: Batch) -> None: ...


class InlineBackend(Backend, Protocol):
    """A backend with `inline` true also commits synchronously (Store.flush)."""

    def commit_now(self, batch: Batch) -> None: ...


@dataclass(eq=False)
class _Commit:
    """The commit that will carry the writes queued now; durable writers wait for it."""

    done: trio.Event = field(default_factory=trio.Event)
    error: Unavailable | None = None


Encode = Callable[[], bytes]


class Store:
    """Queued writes and the task that commits them. Call `run()` before writing durably."""

    def __init__(self, backend: Backend, retained: int) -> None:
        self.backend = backend
        self._retained = retained
        self._checkpoint = 0
        self._epoch = ""
        self._pending: dict[str, Encode | None] = {}  # key -> value (encoded at commit) or delete
        self._trim_before: int | None = None
        self._stored_events: deque[int] = deque()  # revisions of the stored events, oldest first
        self._open = _Commit()
        self._in_flight: _Commit | None = None  # the commit being made
        self._wake = trio.Event()  # something is pending
        self._urgent = trio.Event()  # a durable writer waits
        self.on_fence_lost: list[Callable[[str], None]] = []  # leadership must end now
        self.commits = 0  # for /metrics
        self.on_commit: list[Callable[[float], None]] = []  # seconds per backend commit

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> Restored:
        """The state the previous run (or leader) left."""
        try:
            restored = codec.decode_state(self.backend.items(), self._retained)
        except codec.FormatError as err:
            raise StoreError(str(err)) from None
        self._stored_events = deque(event.revision for event in restored.events)
        return restored

    async def begin(self, epoch: str, revision: int) -> None:
        """Record the epoch and a checkpoint for this run, durably, before it serves anything."""
        self._epoch = epoch
        self._write_checkpoint(revision)
        await self.commit_durably()

    # -- writing ---------------------------------------------------------------------------

    def event_published(self, event: Event) -> None:
        """Keep non-STATUS events; move the revision checkpoint ahead of STATUS floods."""
        if event.revision >= self._checkpoint + CHECKPOINT_EVERY:
            self._write_checkpoint(event.revision)
        body = event.body
        if isinstance(body, NodeEvent) and body.kind is NodeEventKind.STATUS:
            return
        self._put(codec.event_key(event.revision), lambda: codec.encode_event(event))
        stored = self._stored_events
        stored.append(event.revision)
        if len(stored) > self._retained:
            stored.popleft()
            self._trim_before = stored[0]

    def _write_checkpoint(self, revision: int) -> None:
        self._checkpoint = revision
        epoch = self._epoch
        self._put(codec.META, lambda: codec.encode_meta(epoch, revision))

    def save_node(
        self,
        node_id: str,
        host: str,
        port: int,
        state: NodeState,
        generation: int,
        last_seen: float,
    ) -> None:
        row = NodeRow(node_id, host, port, state, generation, last_seen)
        self._put(codec.node_key(node_id), lambda: codec.encode_node(row))

    def delete_node(self, node_id: str) -> None:
        self._put(codec.node_key(node_id), None)

    async def save_placement(
        self, workload: Workload, node_id: str, generation: int, latest: InstanceStatus
    ) -> None:
        """Durable before returning: the Controller hears of the acceptance right after.
        Raises Unavailable when the backend cannot commit it."""
        self.update_placement(workload, node_id, generation, latest)
        await self.commit_durably()

    def update_placement(
        self, workload: Workload, node_id: str, generation: int, latest: InstanceStatus
    ) -> None:
        row = PlacementRow(workload, node_id, generation, latest)
        self._put(codec.placement_key(workload.instance_id), lambda: codec.encode_placement(row))

    def forget_placement(self, instance_id: str) -> None:
        """Delete a placement with the next commit (`commit_durably` to wait for it)."""
        self._put(codec.placement_key(instance_id), None)

    def _put(self, key: str, value: Encode | None) -> None:
        self._pending.pop(key, None)  # re-insert: a dict keeps insertion order, newest last
        self._pending[key] = value
        self._wake.set()

    # -- committing ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit what is queued: every COMMIT_INTERVAL, at once when a durable writer waits."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                with trio.move_on_after(COMMIT_INTERVAL):
                    await self._urgent.wait()
                await trio.lowlevel.checkpoint()  # writers runnable in this tick join the commit
                self._wake = trio.Event()
                self._urgent = trio.Event()
                if not await self._commit() and self._pending and not self._urgent.is_set():
                    with trio.move_on_after(RETRY_INTERVAL):
                        await self._urgent.wait()
        finally:
            if self.backend.inline:
                self.flush()

    async def commit_durably(self) -> None:
        """Commit what is queued (the caller's writes included) before returning; raises
        Unavailable when the backend did not commit it (the writes stay queued)."""
        if self._pending or self._trim_before is not None:
            commit = self._open
            self._urgent.set()
            self._wake.set()
        elif self._in_flight is not None:  # the caller's writes, if any, are being committed
            commit = self._in_flight
        else:
            return
        await commit.done.wait()
        if commit.error is not None:
            raise commit.error

    async def _commit(self) -> bool:
        """Commit everything pending; False if the backend did not (the writes stay queued)."""
        if not self._pending and self._trim_before is None:
            return True
        commit, pending, trim, batch = self._take()
        self._in_flight = commit
        started = trio.current_time()
        try:
            await self.backend.commit(batch)
        except StoreUnavailable as err:
            self._requeue(pending, trim)
            commit.error = Unavailable(f"state store unavailable: {err}; retry shortly")
            log.warning("state store unavailable: %s (%d writes wait)", err, len(self._pending))
            return False
        except FenceLost as err:
            commit.error = Unavailable(f"this scheduler stepped down: {err}")
            for hook in self.on_fence_lost:
                hook(str(err))
            return False
        finally:
            self._in_flight = None
            commit.done.set()
        self.commits += 1
        for observe in self.on_commit:
            observe(trio.current_time() - started)
        return True

    def _take(self) -> tuple[_Commit, dict[str, Encode | None], int | None, Batch]:
        """Everything pending, as one batch; later writes go to the next commit."""
        commit, self._open = self._open, _Commit()
        pending, self._pending = self._pending, {}
        trim, self._trim_before = self._trim_before, None
        writes = {key: None if value is None else value() for key, value in pending.items()}
        return commit, pending, trim, Batch(writes, trim)

    def _requeue(self, pending: dict[str, Encode | None], trim: int | None) -> None:
        """Put back a batch that was not committed, under any newer write of the same key."""
        newer = self._pending
        self._pending = {**pending, **newer}
        if trim is not None:
            self._trim_before = max(trim, self._trim_before or 0)
        self._wake.set()

    def flush(self) -> None:
        """Commit everything pending now (inline backends only: SQLite)."""
        assert self.backend.inline, "only an inline backend commits synchronously"
        if not self._pending and self._trim_before is None:
            return
        commit, _, _, batch = self._take()
        try:
            cast(InlineBackend, self.backend).commit_now(batch)  # inline, asserted above
        finally:
            commit.done.set()
        self.commits += 1
