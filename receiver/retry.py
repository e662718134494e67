"""Trying an HTTP request again: which answers may pass on another try, and the pauses between.

Used by everything here that sends to another server: `receiver replay --to` and the PBX
client (`receiver subscribe`, `receiver reconcile`).
"""

from __future__ import annotations

from collections.abc import Iterator


def transient(status: int) -> bool:
    """429 (too many requests) and any 5xx: the same request may pass a moment later."""
    return status == 429 or status >= 500


def pauses(retries: int, first: float, most: float) -> Iterator[float]:
    """The pause before each of 1 + `retries` tries: none before the first, then `first`,
    doubling each time, at most `most` seconds."""
    yield 0.0
    for attempt in range(retries):
        yield min(first * 2**attempt, most)
