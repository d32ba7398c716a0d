"""scheduler.memory: freed memory goes back to the system after a burst, not at every look."""

from __future__ import annotations

import trio

from scheduler.memory import LOOK_EVERY, TRIM_AFTER_GROWTH, glibc_trim, release_freed_memory


async def test_the_heap_is_trimmed_only_after_rss_grew(autojump_clock):
    base = 100 << 20
    readings = iter(
        [base, base + (1 << 20), base + TRIM_AFTER_GROWTH + 1, base + (2 << 20), base + (3 << 20)]
        + [base + (3 << 20)] * 100
    )
    trims = []

    def trim(pad: int) -> int:
        trims.append(trio.current_time())
        return 1

    with trio.move_on_after(LOOK_EVERY * 6):
        await release_freed_memory(trim, lambda: next(readings))
    assert len(trims) == 1, "one trim: after the growth, not at the looks before or after"


def test_glibc_is_found_here():
    # The scheduler runs on Linux with glibc (packaging/orka-scheduler.service).
    assert glibc_trim() is not None
