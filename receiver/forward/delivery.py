"""The delivery worker: sends what the outbox holds to each destination, and records each
attempt's outcome there.

Per destination, one loop: it records the outcomes of the attempts that have finished and
claims more due messages in one writer turn (the first not yet delivered of each call, leased
to this server; up to CLAIM_AHEAD times `concurrency` claimed and not yet finished), then sends
them, at most `concurrency` at a time. A claimed message whose lease would end before its
attempt could (it waited behind attempts that got no answer) is not sent but left to be claimed
again: an attempt never outlives its lease, so no other server takes a message being sent.
2xx is delivered; 410 disables the destination (until `receiver forward retry`); anything else
(an error status, no answer within the timeout, a refused connection) is tried again after the
next delay of the schedule (--forward-retries, with jitter), or after the destination's
Retry-After on 429 and 503, and once the schedule is spent the message is dead. A call's next
message waits until its last one is delivered or dead, so each destination gets a call's
messages in order.

It runs in the server's event loop and costs ingest little: the HTTP requests themselves are
made by a process of their own (sender.py), and its writer turns are short and unsynced (an
outcome a power loss undoes only means a message sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver import __version__
from receiver.event import iso_time, now_us
from receiver.forward.rules import Destination
from receiver.forward.sender import Answer, Sender, SenderGone
from receiver.forward.signing import headers
from receiver.logs import Repeated
from receiver.store import Storage
from receiver.store.outbox import Delivery, Outcome

log = logging.getLogger("receiver.forward")

IDLE_SECONDS = 1.0  # how often an idle destination looks for due messages (retries, ends)
BATCH_SECONDS = 0.005  # after a send ends, how long to wait for others to record together
TRIM_SECONDS = 10.0  # how often the outbox's size is checked against --forward-outbox-max
CLAIM_AHEAD = 32  # messages claimed (in flight or waiting their turn): this times concurrency
LEASE_ROUNDS = 4  # a lease lasts this many attempts in turn that get no answer, and more
MOST_RETRY_AFTER = 86400.0  # a Retry-After longer than a day is taken as a day
SENDER_MARGIN = 5.0  # seconds past a destination's timeout before the sender is given up on


def holder_name(port: int) -> str:
    """Who holds the leases this server takes: its host and port. Only one server can listen
    there, so a server started again there takes back the leases its predecessor left."""
    return f"{socket.gethostname()}:{port}"


def retry_after(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds (a number, or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MOST_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MOST_RETRY_AFTER)


def next_delay(attempts: int, schedule: Sequence[float]) -> float | None:
    """Seconds until the next try after `attempts` failed ones (jittered by up to 10% either
    way), or None when the schedule is spent: the message is dead."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.9, 1.1)


@dataclass
class Tally:
    """What one destination's deliveries came to since the server started."""

    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_error_us: int | None = None
    last_delivered_us: int | None = None
    lags: list[float] = field(default_factory=list)  # seconds, from written to delivered

    def json(self) -> dict[str, Any]:
        return {
            "delivered_since_start": self.delivered,
            "failed_attempts_since_start": self.failed_attempts,
            "dead_since_start": self.dead,
            "in_flight": self.in_flight,
            "last_delivered_at": iso_time(self.last_delivered_us),
            "last_error": self.last_error,
            "last_error_at": iso_time(self.last_error_us),
        }


class Deliverer:
    """The delivery worker of one server, for all its destinations."""

    def __init__(
        self,
        store: Storage,
        destinations: Sequence[Destination],
        *,
        schedule: Sequence[float],
        outbox_max: int,
        holder: str,
        repeated: Repeated,
    ) -> None:
        self.store = store
        self.destinations = tuple(destinations)
        self.schedule = tuple(schedule)
        self.outbox_max = outbox_max
        self.holder = holder
        self.repeated = repeated
        self.tallies = {d.url: Tally() for d in self.destinations}
        self._wakes = {d.url: asyncio.Event() for d in self.destinations}
        self.on_attempt: list[Any] = []  # callbacks(destination, outcome, lag seconds or None)
        self.sender = Sender()

    def wake(self, *_: object) -> None:
        """New messages may be due (an event committed, calls built): look now."""
        for wake in self._wakes.values():
            wake.set()

    async def run(self) -> None:
        """Until cancelled: a loop per destination, and the outbox's bound."""
        released = await self.store.forward_release(self.holder)
        if released:
            log.info("forwarding: %d messages in flight when this server stopped are sent again",
                     released)  # fmt: skip
        tasks = [
            asyncio.create_task(self.deliver_to(d), name=f"receiver-forward {d.url}")
            for d in self.destinations
        ]
        tasks.append(asyncio.create_task(self.keep_bounded(), name="receiver-forward-trim"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.sender.stop()

    async def deliver_to(self, destination: Destination) -> None:
        """One destination's loop: record, claim, send; never ends but by cancellation."""
        url = destination.url
        wake = self._wakes[url]
        tally = self.tallies[url]
        lease = destination.timeout * (LEASE_ROUNDS + 1) + 5
        longest = destination.timeout + SENDER_MARGIN  # an attempt, at most
        sending = asyncio.Semaphore(destination.concurrency)
        done: list[Outcome] = []
        in_flight: set[asyncio.Task[None]] = set()
        finished = asyncio.Event()

        async def send(delivery: Delivery, start_by: float) -> None:
            try:
                async with sending:
                    if time.monotonic() > start_by:
                        return  # its lease would end first: claimed again by the next step
                    outcome = await self.attempt(destination, delivery)
                done.append(outcome)
            finally:
                finished.set()

        while True:
            outcomes, done = done, []
            room = destination.concurrency * CLAIM_AHEAD - len(in_flight)
            start_by = time.monotonic() + lease - longest
            try:
                claimed = await self.store.forward_step(
                    url, self.holder, outcomes, limit=room, lease_seconds=lease
                )
            except Exception as failure:
                done = outcomes + done  # recorded with the next step
                self.repeated.log(
                    logging.ERROR,
                    f"forward {url}",
                    "the outbox of %s could not be read or updated; trying again: %s",
                    url,
                    failure,
                )
                await asyncio.sleep(IDLE_SECONDS)
                continue
            for delivery in claimed:
                task = asyncio.create_task(send(delivery, start_by))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            tally.in_flight = len(in_flight)
            wake.clear()
            if in_flight:
                finished.clear()
                if not done:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), IDLE_SECONDS)
                await asyncio.sleep(BATCH_SECONDS)
            elif not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), IDLE_SECONDS)

    async def attempt(self, destination: Destination, delivery: Delivery) -> Outcome:
        """Send one message once; what became of it."""
        tally = self.tallies[destination.url]
        sent = headers(destination.key, delivery.message_id, int(time.time()), delivery.body)
        sent["content-type"] = delivery.content_type
        sent["user-agent"] = f"receiver/{__version__}"
        status: int | None = None
        wait: float | None = None
        try:
            answer = await asyncio.wait_for(
                self.sender.send(destination.url, sent, delivery.body, destination.timeout,
                                 destination.concurrency),
                destination.timeout + SENDER_MARGIN,
            )  # fmt: skip
        except (TimeoutError, SenderGone) as failure:
            answer = Answer(0, None, error=f"not sent: {failure or 'the sender did not answer'}")
        if answer.status is None:
            error = answer.error or "not sent"
        else:
            status = answer.status
            if 200 <= status < 300:
                tried = now_us()
                lag = max(tried - delivery.created_us, 0) / 1e6
                tally.delivered += 1
                tally.last_delivered_us = tried
                outcome = Outcome(delivery.id, "delivered", tried, status, None)
                for callback in self.on_attempt:
                    callback(destination.url, outcome, lag)
                return outcome
            text = answer.text.strip()
            error = f"HTTP {status}" + (f": {text}" if text else "")
            if status in (429, 503):
                wait = retry_after(answer.retry_after)
        tried = now_us()
        tally.failed_attempts += 1
        tally.last_error, tally.last_error_us = error, tried
        if status == 410:
            why = f"{destination.url} answered 410 Gone at {iso_time(tried)}"
            log.warning(
                "%s: no more messages go there until `receiver forward retry --destination %s`",
                why,
                destination.url,
            )
            outcome = Outcome(delivery.id, "dead", tried, status, error, tried, disable=why)
            tally.dead += 1
        else:
            attempts = delivery.attempts + 1
            delay = next_delay(attempts, self.schedule)
            if delay is None:
                tally.dead += 1
                log.warning(
                    "message %s (%s) to %s is dead after %d attempts: %s; "
                    "`receiver forward retry` sends it again",
                    delivery.message_id, delivery.type, destination.url, attempts, error,
                )  # fmt: skip
                outcome = Outcome(delivery.id, "dead", tried, status, error, tried)
            else:
                if wait is not None:
                    delay = wait
                due = tried + int(delay * 1_000_000)
                outcome = Outcome(delivery.id, "pending", tried, status, error, due)
        for callback in self.on_attempt:
            callback(destination.url, outcome, None)
        return outcome

    async def keep_bounded(self) -> None:
        """Every TRIM_SECONDS: the outbox kept to --forward-outbox-max rows."""
        while True:
            await asyncio.sleep(TRIM_SECONDS)
            try:
                trimmed = await self.store.forward_trim(self.outbox_max)
            except Exception as failure:
                self.repeated.log(
                    logging.ERROR, "forward trim", "the outbox could not be trimmed: %s", failure
                )
                continue
            if trimmed.pending:
                log.error(
                    "the outbox is full (--forward-outbox-max %d) of messages not yet sent: "
                    "dropped the %d oldest of them (they will not be forwarded; `receiver "
                    "forward replay --since` writes their events' messages again); raise "
                    "--forward-outbox-max, or fix the destinations that do not take them",
                    self.outbox_max,
                    trimmed.pending,
                )
            if trimmed.dead:
                log.warning(
                    "the outbox is full (--forward-outbox-max %d): dropped the %d oldest dead "
                    "messages",
                    self.outbox_max,
                    trimmed.dead,
                )
            if trimmed.delivered:
                log.debug("outbox: dropped the %d oldest delivered messages", trimmed.delivered)
