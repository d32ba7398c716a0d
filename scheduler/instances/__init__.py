"""Instances: placing them, relaying their statuses, stopping and destroying them (SPEC §2.2).

One service, `Instances`, split along its jobs, each in its module over the shared `book`:
  attempts.py   schedule(): the decision, then attempts in priority order, acceptance
  relays.py     the relay task of each accepted instance (the Agent's Create stream)
  reports.py    what nodes' reports say: reservations released, restored placements,
                instances nobody placed, a node generation's end
  signals.py    stop() and destroy()
  book.py       the instances and reservations they share, and the bookkeeping steps

A placement's life, in order:
  accepted   1. the placement is saved (durably, before the Controller hears of it)
             2. a placement of the same id is forgotten; the instance enters the book, holding
                its reservation (released at once if a report already lists it)
             3. the node counts it; its first status is published (events, Schedule stream)
             4. its relay task starts                         (attempts.Attempts._accept)
  a status   saved, then published                            (book.Book._update)
  ends       1. the relay's stream is cancelled; a Destroy's TERMINATED is published
             2. its reservation is released
             3. a TERMINATED instance is no longer counted on its node, and is retired
             4. the Controller's Schedule stream closes       (relays.Relays._relay)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..agents import Agents
from ..cluster import Cluster
from ..config import DEFAULT_FINISHED_RETAINED
from ..events import EventLog
from ..model import Strategy
from ..store import Store
from .attempts import Attempts
from .book import (
    ENDED_BY_AGENT,
    ENDED_OK,
    PLACEMENT_OUTCOMES,
    RESERVATION_REPORTS,
    UNKNOWN_ANNOUNCED,
    UNKNOWN_RATE,
    Follower,
    Instance,
)
from .reports import Reports
from .signals import Signals

__all__ = [
    "ENDED_BY_AGENT",
    "ENDED_OK",
    "PLACEMENT_OUTCOMES",
    "RESERVATION_REPORTS",
    "UNKNOWN_ANNOUNCED",
    "UNKNOWN_RATE",
    "Follower",
    "Instance",
    "Instances",
    "open_instances",
]


class Instances(Attempts, Reports, Signals):
    """Every placed instance, and the jobs on them (see the module docstring)."""


@asynccontextmanager
async def open_instances(
    cluster: Cluster,
    events: EventLog,
    agents: Agents,
    *,
    strategy: Strategy,
    attempt_timeout: float,
    max_attempts: int,
    store: Store | None = None,
    finished_retained: int = DEFAULT_FINISHED_RETAINED,
) -> AsyncIterator[Instances]:
    """Instances whose relay tasks live in a nursery of their own, cancelled on exit."""
    async with trio.open_nursery() as nursery:
        try:
            yield Instances(
                cluster,
                events,
                agents,
                nursery,
                strategy=strategy,
                attempt_timeout=attempt_timeout,
                max_attempts=max_attempts,
                store=store,
                finished_retained=finished_retained,
            )
        finally:
            nursery.cancel_scope.cancel()
