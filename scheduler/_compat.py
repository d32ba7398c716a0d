"""What the scheduler changes in its libraries, in one place, and only while a loop needs it.

Each item below relies on a library's internals; tests/test_compat.py checks every assumption
against the installed versions (pinned in pyproject.toml) and fails loudly, naming this module,
when an upgrade changes one. grpclib's and h2's protocol-level internals, which the listener
subclasses, are checked in tests/test_listener_contract.py.

- `loop_patches()`: two class attributes, set while at least one bridge loop is open and
  restored when the last one closes (nothing outlives the loops that need it):
  - asyncio's SSLProtocol.max_size, its TLS read buffer (256 KiB per connection);
  - h2's H2Connection.MAX_CLOSED_STREAMS (65,536 closed streams remembered per connection).
- `run_callbacks_in_batches(loop)`: replaces trio-asyncio's `_main_loop_one` on one loop
  instance (it goes with the loop).
- `drop_cancel_wrapper(future)`: removes the `cancel` trio-asyncio wraps around a future.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import h2.connection
import trio

# Measured per mTLS Agent: 367 KiB at 256 KiB, 143 at 32, 115 at 4 (a status is ~100 bytes;
# a larger TLS record is simply read in more steps).
TLS_READ_BUFFER = 4 * 1024  # per TLS connection; asyncio allocates 256 KiB (3/4 of an Agent's RSS)
# How each of the last N closed streams of a connection ended (h2 keeps 65,536: 7.5 MiB on a
# long-lived Controller or Agent connection). Needed only for frames still in flight when a
# stream closed, which arrive within a round trip, not thousands of streams later.
CLOSED_STREAMS_REMEMBERED = 1024
CALLBACKS_PER_CHECKPOINT = 64  # ready asyncio callbacks run back to back before trio's tasks run

_PATCHES: tuple[tuple[type, str, object], ...] = (
    (asyncio.sslproto.SSLProtocol, "max_size", TLS_READ_BUFFER),
    (h2.connection.H2Connection, "MAX_CLOSED_STREAMS", CLOSED_STREAMS_REMEMBERED),
)
_open_loops = 0
_saved: list[Any] = []


@contextmanager
def loop_patches() -> Iterator[None]:
    """The class attributes above, for as long as any bridge loop is open (loops may overlap:
    the first sets them, the last restores what was there)."""
    global _open_loops
    if _open_loops == 0:
        _saved[:] = [getattr(owner, name) for owner, name, _ in _PATCHES]
        for owner, name, value in _PATCHES:
            setattr(owner, name, value)
    _open_loops += 1
    try:
        yield
    finally:
        _open_loops -= 1
        if _open_loops == 0:
            for (owner, name, _), value in zip(_PATCHES, _saved, strict=True):
                setattr(owner, name, value)


def run_callbacks_in_batches(loop: Any) -> None:
    """Let trio-asyncio's loop run every ready asyncio callback (up to a bound) per trio turn.

    trio-asyncio runs *one* asyncio callback per trio checkpoint (`_main_loop_one` receives it
    from a trio channel), so every step of grpclib -- a socket read, a future resolving, a task
    resuming -- waits for a whole round of trio's scheduler. Here each turn runs the first
    callback as trio-asyncio does (waiting for it, with its timers), then whatever else is
    already queued, without yielding: the same callbacks in the same order, far fewer rounds.
    Bounded so that trio's own tasks (liveness deadlines, handlers) still get their turn.
    The loop looks `_main_loop_one` up on every iteration, so setting it on the instance works
    on a running loop, and it goes with the loop.
    """
    one = loop._main_loop_one

    async def main_loop_one(no_wait: bool = False) -> None:
        await one(no_wait)
        for _ in range(CALLBACKS_PER_CHECKPOINT - 1):
            try:
                await one(no_wait=True)  # raises WouldBlock once nothing is queued
            except trio.WouldBlock:
                return

    loop._main_loop_one = main_loop_one


def drop_cancel_wrapper(future: asyncio.Future) -> None:
    """Drop the `cancel` trio-asyncio wraps around a future it hands to trio, which closes a
    reference cycle (future -> wrapper -> handle -> future): every ended call would otherwise
    wait, with its request, reply and cancel scope, for a full garbage collection."""
    try:
        del future.cancel
    except AttributeError:  # not wrapped
        pass
