"""The revisioned event log the Controller watches (SPEC §2.3).

Every node and instance event gets the next revision of this scheduler incarnation (`epoch`).
The last `retained` events are kept in order so a watcher that reconnects with its last
revision gets exactly what it missed. Revisions may have gaps: after a restart the log holds the
persisted (non-STATUS) events of the previous run and continues past every revision that run
may have used; a gap only ever stands for STATUS events, which a watcher may skip anyway.
Publishing never waits for a watcher: each watcher reads the log at its own pace, and one that
falls so far behind that its next event left the ring gets a fresh snapshot in-band. A watcher
more than `COALESCE_BACKLOG` events behind skips STATUS events of a node that a later STATUS of
the same node supersedes; it never skips JOINED, LEFT, LOST or instance events.

A STATUS event that is superseded and already `COALESCE_BACKLOG` behind the head can never be
handed to any watcher again (the head only moves on), so the log lets go of such events now and
then (`_sweep`): beyond the last `COALESCE_BACKLOG` events it holds the latest STATUS of each
node, not one per report. An event is ~0.6 KB and a node reports every few seconds; without
the sweep, the 100,000 retained by default were mostly STATUS events no one would see.
"""

from __future__ import annotations

import secrets
from bisect import bisect_right
from collections.abc import Callable, Iterable

import trio

from .model import Event, InstanceEvent, NodeEvent, NodeEventKind, Snapshot

COALESCE_BACKLOG = 1024  # events behind the head before a watcher may skip superseded STATUS


class EventLog:
    """Append-only, revisioned, bounded log of cluster events with any number of watchers."""

    def __init__(
        self,
        retained: int,
        snapshot: Callable[[], Snapshot],
        epoch: str | None = None,
        *,
        revision: int = 0,
        history: Iterable[Event] = (),
        persist: Callable[[Event], None] | None = None,
    ) -> None:
        """`epoch`, `revision` and `history` continue a previous run (see `store`); `persist`
        is called with every published event, in order (the store keeps what it must)."""
        if retained < 1:
            raise ValueError("retained must be at least 1")
        self.epoch = epoch or secrets.token_hex(8)
        self.revision = revision
        self._retained = retained
        # From index _start on, the retained events, oldest first; before it, None: an event is
        # freed as it leaves the ring (the list itself is compacted now and then).
        self._events: list[Event | None] = []
        self._revisions: list[int] = []  # their revisions, for bisect
        self._start = 0
        # Every event after this revision that a watcher may still get is held (a gap in the
        # held revisions only ever stands for STATUS events no watcher would get).
        self._held_after = revision
        self._since_sweep = 0  # events appended since the last sweep
        self._sweep_after = COALESCE_BACKLOG  # appends: at least as many as were held then
        self._snapshot = snapshot
        self._latest_status: dict[str, int] = {}  # node id -> revision of its newest STATUS
        self._changed: trio.Event | None = None  # created only while a watcher waits
        self.watchers = 0
        self._persist = persist  # hot path (every STATUS): keep it cheap
        for event in history:
            self._append(event)

    @property
    def first_retained(self) -> int:
        """The oldest revision from which on every event a watcher may get is held."""
        return self._held_after + 1

    def __len__(self) -> int:
        return len(self._events) - self._start

    def _append(self, event: Event) -> None:
        if not self._events:  # history starts with it (revisions before it: nothing to get)
            self._held_after = event.revision - 1
        self._events.append(event)
        self._revisions.append(event.revision)
        if len(self._events) - self._start > self._retained:
            self._held_after = self._revisions[self._start]
            # Not kept until the compaction: the ring would swing between `retained` and twice
            # as many events (100,000 by default: 40-60 MB more at the top of each swing).
            self._events[self._start] = None
            self._start += 1
            if self._start >= self._retained:  # compact now and then: amortised O(1)
                del self._events[: self._start], self._revisions[: self._start]
                self._start = 0
        self._since_sweep += 1
        if self._since_sweep > self._sweep_after:  # amortised O(1) as well
            self._sweep()

    def _sweep(self) -> None:
        """Drop the superseded STATUS events that are `COALESCE_BACKLOG` behind the head: no
        watcher can get them any more (see `event_after`)."""
        self._since_sweep = 0
        behind = bisect_right(self._revisions, self.revision - COALESCE_BACKLOG, self._start)
        kept = [  # (only events before _start are None)
            e
            for e in self._events[self._start : behind]
            if e is not None and not self._superseded(e)
        ]
        self._events[:behind] = kept
        self._revisions[:behind] = [e.revision for e in kept]
        self._start = 0
        self._sweep_after = max(COALESCE_BACKLOG, len(self._events))

    def publish(self, body: NodeEvent | InstanceEvent) -> Event:
        """Append one event with the next revision and wake the watchers. Never blocks."""
        self.revision += 1
        event = Event(self.revision, body)
        self._append(event)
        if isinstance(body, NodeEvent) and body.kind is NodeEventKind.STATUS:
            self._latest_status[body.node.id] = self.revision
        if self._persist is not None:
            self._persist(event)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return event

    def forget_node(self, node_id: str) -> None:
        """Drop the coalescing state of a node the registry no longer keeps."""
        self._latest_status.pop(node_id, None)

    def snapshot_event(self) -> Event:
        """The whole current picture, stamped with the current revision."""
        return Event(self.revision, self._snapshot())

    def resumable(self, epoch: str, after_revision: int) -> bool:
        """Whether a watcher at (epoch, after_revision) can be served from the ring."""
        return (
            epoch == self.epoch
            and after_revision <= self.revision
            and after_revision >= self.first_retained - 1
        )

    def event_after(self, cursor: int) -> Event | None:
        """The next event a watcher at `cursor` should see, or None when it is at the head.

        Returns a snapshot event when events after `cursor` are no longer held.
        """
        if cursor >= self.revision:
            return None
        if cursor < self.first_retained - 1:
            return self.snapshot_event()
        index = bisect_right(self._revisions, cursor, self._start)
        while index < len(self._events):
            event = self._events[index]
            assert event is not None  # at or after _start
            if self.revision - event.revision < COALESCE_BACKLOG or not self._superseded(event):
                return event
            index += 1
        return None

    def _superseded(self, event: Event) -> bool:
        body = event.body
        return (
            isinstance(body, NodeEvent)
            and body.kind is NodeEventKind.STATUS
            and self._latest_status.get(body.node.id, 0) > event.revision
        )

    async def wait_beyond(self, revision: int) -> None:
        """Wait until the log holds an event newer than `revision`."""
        while self.revision <= revision:
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()


class Watcher:
    """One Controller's position in the log; `next()` yields its events in revision order."""

    def __init__(self, log: EventLog, epoch: str, after_revision: int) -> None:
        self._log = log
        self._cursor: int | None = after_revision if log.resumable(epoch, after_revision) else None

    async def next(self) -> Event:
        log = self._log
        event: Event | None
        if self._cursor is None:
            event = log.snapshot_event()
        else:
            while True:
                await log.wait_beyond(self._cursor)
                event = log.event_after(self._cursor)
                if event is not None:
                    break
                self._cursor = log.revision  # only a gap was left: nothing to see there
        self._cursor = event.revision
        return event

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Event:
        return await self.next()
