"""Keeping the most recent N of something that would otherwise grow with churn."""

from __future__ import annotations

from collections.abc import Iterator


def note_recent(recent: dict[str, None], key: str, bound: int) -> Iterator[str]:
    """Make `key` the newest entry of `recent` (an insertion-ordered dict used as a set);
    remove and yield the oldest keys beyond `bound`, for the caller to forget."""
    recent.pop(key, None)
    recent[key] = None
    while len(recent) > bound:
        oldest = next(iter(recent))
        del recent[oldest]
        yield oldest
