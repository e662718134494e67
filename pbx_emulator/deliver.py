"""`receiver-pbx simulate`: calls placed on the running emulator, their events delivered.

Each event goes to every subscription of its extension for its event type, with the
subscription's method, once (the PBX never tries again). `drop` loses a share of the calls'
deliveries, a call's all together, as if the receiver had been down all through it. Each call
goes into the emulator's call history once its last event is due, delivered or not.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from typing import IO, Any

import httpx2 as httpx

from pbx_emulator.history import history_record
from pbx_emulator.simulate import calls as simulated_calls
from pbx_emulator.simulate import make_offices, query_string
from receiver.event import now_us


@dataclasses.dataclass
class SimulationReport:
    """What `receiver-pbx simulate` did."""

    calls: int = 0
    events: int = 0
    deliveries: int = 0  # events times the subscriptions that wanted them
    delivered: int = 0  # answered 2xx
    dropped: int = 0  # lost on purpose (--drop)
    dropped_calls: int = 0  # calls none of whose deliveries were made
    failed: list[str] = dataclasses.field(default_factory=list)


def run_simulation(
    pbx_url: str,
    *,
    calls: int,
    rate: float,
    speed: float,
    seed: int,
    mix: dict[str, int] | None = None,
    truth: IO[str] | None = None,
    drop: float = 0.0,
) -> SimulationReport:
    """Place `calls` calls on the emulated PBX and deliver their events as the PBX would.

    `speed` 1 plays in real time, 60 a minute a second, 0 as fast as it can. One line of ground
    truth per call goes to `truth`, with how many of its deliveries were lost (`lost`: none, or
    all of them).
    """
    base = pbx_url.rstrip("/")
    with httpx.Client(timeout=30) as http:
        setup = http.get(f"{base}/emulator/state").json()
        offices = make_offices(setup["offices"], setup["seed"])
        kinds = {e.id: e for office in offices for e in office.extensions}
        wanted: dict[tuple[int, str], list[tuple[str, str]]] = {}
        for sub in setup["subscriptions"]:
            wanted.setdefault((sub["extension_id"], sub["event_type"]), []).append(
                (sub["url"], sub["method"])
            )
        start_us = now_us()
        gap = 1_000_000 / rate
        made = list(
            itertools.islice(
                simulated_calls(
                    offices,
                    seed=seed,
                    start_us=start_us,
                    mix=mix,
                    every_us=(int(gap * 0.5), int(gap * 1.5)),
                ),
                calls,
            )
        )
        # Every delivery in time order, each decided lost or not before any is made.
        schedule = sorted(
            (
                (int(fields["EventTime"]), number, owner, fields)
                for number, sim_call in enumerate(made)
                for owner, fields in sim_call.events
            ),
            key=lambda item: item[0],
        )
        # The calls an outage of the receiver loses whole: each with the chance `drop`.
        chance = random.Random(f"drop-{seed}")
        dropped = [chance.random() < drop for _ in made]
        plan = []
        lost = [0] * len(made)
        for at_us, number, owner, fields in schedule:
            targets = [
                (url, method, dropped[number])
                for url, method in wanted.get((owner, fields["EventType"]), [])
            ]
            lost[number] += sum(gone for _, _, gone in targets)
            plan.append((at_us, number, fields, targets))
        last_event = {number: index for index, (_, number, _, _) in enumerate(plan)}
        report = SimulationReport(calls=len(made), dropped_calls=sum(dropped))
        if truth is not None:
            for number, sim_call in enumerate(made):
                line = {**sim_call.truth, "lost": lost[number]}
                truth.write(json.dumps(line, ensure_ascii=False) + "\n")
            truth.flush()
        ended: list[dict[str, Any]] = []
        started = time.monotonic()
        for index, (at_us, number, fields, targets) in enumerate(plan):
            report.events += 1
            if speed:
                wait = started + (at_us - start_us) / 1e6 / speed - time.monotonic()
                if wait > 0:
                    add_history(http, base, ended)
                    time.sleep(wait)
            for url, method, gone in targets:
                report.deliveries += 1
                if gone:
                    report.dropped += 1
                else:
                    deliver(http, url, method, query_string(fields), report)
            if last_event[number] == index:
                ended.append(history_record(made[number], kinds))
        add_history(http, base, ended)
    return report


def add_history(http: httpx.Client, base: str, ended: list[dict[str, Any]]) -> None:
    """The calls that have ended go into the emulator's call history."""
    if ended:
        http.post(f"{base}/emulator/history", json=ended).raise_for_status()
        ended.clear()


def deliver(
    http: httpx.Client, url: str, method: str, payload: str, report: SimulationReport
) -> None:
    """One delivery, as the PBX makes it: the fields in the query (GET) or a form body (POST)."""
    try:
        if method == "GET":
            response = http.get(f"{url}{'&' if '?' in url else '?'}{payload}")
        else:
            form = {"content-type": "application/x-www-form-urlencoded"}
            response = http.post(url, content=payload, headers=form)
    except httpx.TransportError as error:
        report.failed.append(f"{method} {url}: {error}")
        return
    if response.is_success:
        report.delivered += 1
    else:
        report.failed.append(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
