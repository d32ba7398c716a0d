"""Handing memory the process has freed back to the operating system, after a burst.

glibc keeps what Python and protobuf free in its heap for reuse, and returns it only from the
top of the heap. After a burst of large messages (an Agent flooding statuses that list
thousands of instances) the scheduler's RSS stayed 16-23 MB above what it still held
(bench/attacks.py `unknown_flood`; tracemalloc: under 1 MB held). `malloc_trim(0)` returns
the free pages (in process: 74 -> 58 MB, in 2.8 ms). It is called only when RSS grew by
TRIM_AFTER_GROWTH since the last call, looked at every LOOK_EVERY seconds, so a steady
scheduler never pays for it. Where there is no glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

LOOK_EVERY = 5.0  # s between two looks at the process's RSS
TRIM_AFTER_GROWTH = 2 << 20  # bytes of RSS growth since the last trim that are worth one
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def glibc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


async def release_freed_memory(
    trim: Callable[[int], int] | None = None, rss: Callable[[], int] = rss_bytes
) -> None:
    """Run until cancelled: trim the heap whenever RSS grew by TRIM_AFTER_GROWTH."""
    trim = trim or glibc_trim()
    if trim is None or not os.path.exists("/proc/self/statm"):
        return
    floor = rss()
    while True:
        await trio.sleep(LOOK_EVERY)
        now = rss()
        if now > floor + TRIM_AFTER_GROWTH:
            trim(0)
            floor = rss()
            log.debug("returned %d KiB of freed memory to the system", (now - floor) >> 10)
        else:
            floor = min(floor, now)
