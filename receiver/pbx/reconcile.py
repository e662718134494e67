"""Reconciliation: our calls against the PBX's call history (pbx-events §6).

The PBX sends each event once; what a receiver never got (it was down, a subscription was
missing, a delivery was refused) is gone from the events, but the PBX keeps its own history of
every call. `reconcile()` reads that history a page at a time and, for each record, finds our
call by its CallID (in any letter case): a call we have is compared with what the history says
(and left as it is); a call none of whose events we have is kept as the history tells it
(`source: call_history`), until its events arrive, if ever. Nothing we received is changed, and
a second run adds nothing. One reconciler runs at a time, whichever process on the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from receiver.event import now_us
from receiver.history import call_from_history, differences
from receiver.pbx.client import OWN_CLIENT, PbxClient
from receiver.store.backend import Storage

LEASE_SECONDS = 300.0  # a reconciler that died frees the lease this long after its last page


class ReconcileBusy(RuntimeError):
    """Another reconciler is running on this database."""


@dataclasses.dataclass
class Reconciled:
    """What a reconciliation found."""

    records: int = 0  # history records read
    matched: int = 0  # calls we have events of
    filled: int = 0  # calls we had none of, now filled from the history
    known: int = 0  # calls filled by an earlier run (nothing added)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    differing: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def counts(self) -> dict[str, int]:
        return {"records": self.records, "matched": self.matched, "filled": self.filled,
                "known": self.known, "differing": len(self.differing),
                "unreadable": len(self.unreadable)}  # fmt: skip


@dataclasses.dataclass
class Rounds:
    """What the server's reconciliation (--reconcile-every) is doing and last did: /healthz."""

    every_seconds: int
    running: bool = False
    last_started: str | None = None
    last_finished: str | None = None
    last: dict[str, int] | None = None  # the last finished round's counts
    last_error: str | None = None  # why the last round did not finish, if it did not

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def holder_name() -> str:
    """Who holds the lease: this machine and process, and a mark of this run."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def reconcile(
    store: Storage,
    pbx: PbxClient,
    since_us: int,
    until_us: int,
    *,
    progress: Callable[[Reconciled], None] | None = None,
    client: str = OWN_CLIENT,
) -> Reconciled:
    """Reconcile the calls started from `since_us` up to `until_us` with the PBX's history.

    Raises ReconcileBusy when another reconciler holds the lease, PbxError when the PBX
    refuses (the message says what it answered and what to check).
    """
    holder = holder_name()
    held = await store.claim_reconcile(holder, LEASE_SECONDS)
    if held is not None:
        raise ReconcileBusy(
            f"another reconciliation is running on this database: {held}; try again once it "
            "has finished"
        )
    found = Reconciled()
    try:
        pages = pbx.call_history(since_us, until_us, client=client)
        while (records := await asyncio.to_thread(next, pages, None)) is not None:
            held = await store.claim_reconcile(holder, LEASE_SECONDS)  # still ours, for longer
            if held is not None:
                raise ReconcileBusy(f"the reconciliation lease was taken over by {held}")
            await reconcile_page(store, records, found)
            if progress is not None:
                progress(found)
    finally:
        await store.release_reconcile(holder)
    return found


async def reconcile_page(store: Storage, records: list[Any], found: Reconciled) -> None:
    """One page of history records: the missing calls filled, the others compared."""
    kept, calls = [], {}
    for record in records:
        found.records += 1
        try:
            if not isinstance(record, dict):
                raise ValueError(f"a history record that is not an object: {record!r:.80}")
            call = call_from_history(record)
        except (ValueError, TypeError) as problem:
            found.unreadable.append(str(problem))
            continue
        calls[call.call_id] = call
        kept.append((call.call_id, json.dumps(record, ensure_ascii=False, sort_keys=True)))
    outcomes = await store.add_history_calls(kept)
    now = now_us()
    for (call_id, _), outcome in zip(kept, outcomes, strict=True):
        if outcome == "filled":
            found.filled += 1
        elif outcome == "known":
            found.known += 1
        else:
            found.matched += 1
            ours = await store.get_call(call_id, now_us=now) or await store.get_call(
                call_id.upper(), now_us=now
            )
            if ours is None:
                continue  # its events are stored, its call not built yet: nothing to compare
            disagree = differences(ours, calls[call_id])
            if disagree:
                found.differing.append(
                    {
                        "call_id": ours.call_id,
                        "differences": {k: list(v) for k, v in disagree.items()},
                    }
                )
