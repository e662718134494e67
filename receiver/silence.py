"""Silence: which myids sent events and then none for a while (pure: no I/O, no clock).

The PBX does not retry and says nothing when it stops sending (a subscription lost, a firewall
changed): a customer going quiet is the failure nobody sees. The server reads each myid's newest
event time now and then and hands it to a Watch, which says who went quiet and who came back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """A myid went quiet (`quiet`), or sends again; `newest_us`: its newest event's time;
    `for_us`: how long it has been quiet (went quiet), or was (came back)."""

    myid: str
    quiet: bool
    newest_us: int
    for_us: int


class Watch:
    """The myids with no event for `after_seconds`, among those that sent any."""

    def __init__(self, after_seconds: float) -> None:
        self.after_us = int(after_seconds * 1_000_000)
        self.quiet: dict[str, int] = {}  # myid -> the time of its newest event
        self.newest: dict[str, int] = {}  # myid -> its newest event's time, at the last update

    def update(self, newest: dict[str, int], now_us: int) -> list[Change]:
        """Take each myid's newest event time; the myids that went quiet or came back since
        the last update."""
        changes = []
        for myid, at in sorted(newest.items()):
            silent = now_us - at >= self.after_us
            if silent and myid not in self.quiet:
                self.quiet[myid] = at
                changes.append(Change(myid, True, at, now_us - at))
            elif not silent and myid in self.quiet:
                went_quiet_at = self.quiet.pop(myid)
                changes.append(Change(myid, False, at, max(at - went_quiet_at, 0)))
        for myid in [myid for myid in self.quiet if myid not in newest]:
            del self.quiet[myid]  # its events are gone (pruned): nothing to wait for
        self.newest = dict(newest)
        return changes
