"""The server's background work, in one loop: building the calls of new events, watching for
myids gone silent (--silence-after), and deleting old events once a day (--retention); beside it,
the reconciliation with the PBX's call history (--reconcile-every).

/healthz shows each: how far the calls are built, who is silent, and the last prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from receiver.event import iso_time, now_us
from receiver.logs import Repeated
from receiver.pbx.reconcile import Rounds
from receiver.settings import Settings
from receiver.silence import Change, Watch
from receiver.store import Storage
from receiver.store.backend import StorageUnavailable

log = logging.getLogger("receiver")

BACKGROUND_SECONDS = 0.2  # how often the calls of new events are built
WATCH_SECONDS = 5.0  # how often, at most, the myids' newest events are read for silence
RETENTION_SECONDS = 86400.0  # how often old events are deleted, with --retention


@dataclass
class Retention:
    """The daily prune of --retention: whether one runs, and what the last one did."""

    older_than_seconds: float
    running: bool = False
    last_finished_us: int | None = None
    last_removed_events: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "older_than_seconds": self.older_than_seconds,
            "running": self.running,
            "last_finished_at": iso_time(self.last_finished_us),
            "last_removed_events": self.last_removed_events,
        }


class Background:
    """The loop, and the state /healthz and /metrics show."""

    def __init__(
        self,
        store: Storage,
        settings: Settings,
        repeated: Repeated,
        on_calls_built: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.on_calls_built = on_calls_built  # told when calls were built (the live stream)
        self.repeated = repeated
        silence = settings.silence_seconds
        self.watch = Watch(silence, settings.working_hours) if silence is not None else None
        # Quick enough to notice within a tenth of the window, rare enough to cost nothing.
        self.watch_every = min(WATCH_SECONDS, silence / 10) if silence else WATCH_SECONDS
        retention = settings.retention_seconds
        self.retention = Retention(retention) if retention is not None else None
        self._pruning: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Until cancelled: the calls five times a second, silence and retention when due."""
        watched = pruned = float("-inf")
        try:
            while True:
                await self.guarded("calls", self.build_calls())
                moment = time.monotonic()
                if self.watch is not None and moment - watched >= self.watch_every:
                    watched = moment
                    await self.guarded("silence", self.check_silence())
                if self.retention is not None and moment - pruned >= RETENTION_SECONDS:
                    pruned = moment
                    if self._pruning is None or self._pruning.done():
                        self._pruning = asyncio.create_task(self.prune(), name="receiver-prune")
                await asyncio.sleep(BACKGROUND_SECONDS)
        finally:
            if self._pruning is not None:
                self._pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pruning

    async def guarded(self, kind: str, work: Any) -> None:
        """Run one piece of work; a failure is logged (at most once in 10 s), not raised: a
        full disk fails the calls five times a second."""
        try:
            await work
        except StorageUnavailable as failure:  # the server went away: one line, no traceback
            self.repeated.log(
                logging.ERROR,
                f"background {kind}",
                "background work on the database (%s) failed; trying again: %s",
                kind,
                failure,
            )
        except Exception as failure:
            self.repeated.log(
                logging.ERROR,
                f"background {kind}",
                "background work on the database (%s) failed; trying again",
                kind,
                exc_info=failure,
            )

    async def build_calls(self) -> None:
        if await self.store.refresh_calls(background=True) and self.on_calls_built is not None:
            self.on_calls_built()

    async def check_silence(self) -> None:
        assert self.watch is not None
        for change in self.watch.update(await self.store.newest_events(), now_us()):
            report(change)

    async def prune(self) -> None:
        """Delete the events older than --retention (and the calls made only of them)."""
        assert self.retention is not None
        retention = self.retention
        retention.running = True
        try:
            before_us = now_us() - int(retention.older_than_seconds * 1_000_000)
            pruned = await self.store.prune(before_us)
            retention.last_removed_events = pruned.events
            retention.last_finished_us = now_us()
            log.info(
                "retention: deleted %d events and %d calls from before %s (%d bytes given back)",
                pruned.events,
                pruned.calls,
                iso_time(before_us),
                pruned.freed_bytes,
            )
        except Exception as failure:
            log.error("retention: deleting old events failed (tried again in a day): %s", failure)
        finally:
            retention.running = False

    def silent_json(self) -> list[dict[str, Any]]:
        """The silent myids, for /healthz."""
        if self.watch is None:
            return []
        moment = now_us()
        return [
            {
                "myid": myid,
                "last_event_at": iso_time(at),
                "silent_seconds": round(max(moment - at, 0) / 1e6, 3),
            }
            for myid, at in sorted(self.watch.quiet.items())
        ]


def report(change: Change) -> None:
    """A myid gone quiet, or back, in the log."""
    if change.quiet:
        log.warning(
            "myid %s is silent: no event for %s (the last at %s): check its subscriptions "
            "with the PBX (receiver subscribe list)",
            change.myid,
            spoken(change.for_us),
            iso_time(change.newest_us),
        )
    else:
        log.warning("myid %s sends again, after %s of silence", change.myid, spoken(change.for_us))


def spoken(us: int) -> str:
    """A length of time as a person says it: 45 s, 31 min, 5 h, 12 days."""
    seconds = us / 1e6
    for unit, size, up_to in (("s", 1, 120), ("min", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < up_to:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} days"


async def reconcile_periodically(
    store: Storage, settings: Settings, rounds: Rounds, repeated: Repeated
) -> None:
    """Every --reconcile-every, from start: the calls of the last period and of the longest a
    call may last before it (--unknown-end-after) against the PBX's call history."""
    from receiver.pbx.client import PbxClient, PbxError
    from receiver.pbx.reconcile import ReconcileBusy, reconcile

    every = settings.reconcile_seconds
    assert every is not None and settings.pbx_client_id and settings.pbx_client_secret
    while True:
        until = now_us()
        since = until - (every + settings.unknown_end_after) * 1_000_000
        rounds.running, rounds.last_started, rounds.last_error = True, iso_time(until), None
        try:
            with PbxClient(
                settings.pbx_api_url, settings.pbx_client_id, settings.pbx_client_secret
            ) as pbx:
                found = await reconcile(store, pbx, since, until)
            rounds.last, rounds.last_finished = found.counts(), iso_time(now_us())
            log.info(
                "reconciled %d history records: %d matched, %d filled from the history, "
                "%d filled before, %d differ",
                found.records, found.matched, found.filled, found.known, len(found.differing),
            )  # fmt: skip
        except ReconcileBusy as busy:
            rounds.last_error = f"skipped: {busy}"
            log.info("reconciliation skipped: %s", busy)
        except PbxError as problem:
            rounds.last_error = str(problem)
            log.warning("reconciliation failed: %s", problem)
        except Exception as failure:
            rounds.last_error = f"{type(failure).__name__}: {failure}"
            repeated.log(
                logging.ERROR, "reconcile", "reconciliation failed; trying again later",
                exc_info=failure,
            )  # fmt: skip
        rounds.running = False
        await asyncio.sleep(every)
