"""Calls made the way the PBX makes them (pbx-events §4), with what really happened.

`CallMaker.make(kind, start_us)` gives a SimCall: its events, each owned by one extension (whose
subscriptions receive it), and its ground truth as the receiver should rebuild it. Seeded: the
same seed gives the same calls. Used by the PBX emulator and by the benchmarks.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

DOMAIN = "sipproxy.telphin.ru"
NAMES = ["Пукин Васисуалий Карлович", "Иванов Иван Иванович", "Anna Smith", "Мария Петрова"]
KINDS = ("outbound", "inbound", "ivr", "queue", "parallel", "forward", "callback", "internal")
DEFAULT_MIX = {
    "outbound": 30,
    "inbound": 28,
    "ivr": 12,
    "queue": 12,
    "parallel": 6,
    "forward": 4,
    "callback": 4,
    "internal": 4,
}


@dataclasses.dataclass(frozen=True)
class Extension:
    name: str  # prefix*ext
    id: int
    kind: str  # phone, ivr or queue


@dataclasses.dataclass(frozen=True)
class Office:
    """One PBX customer: phone extensions, a voice menu, a queue (its agents are the phones)."""

    prefix: str
    phones: tuple[Extension, ...]
    ivr: Extension
    queue: Extension
    did: str

    @property
    def extensions(self) -> tuple[Extension, ...]:
        return (*self.phones, self.ivr, self.queue)


def make_offices(count: int, seed: int = 1) -> list[Office]:
    rng = random.Random(seed)
    offices = []
    for number in range(count):
        prefix, base = str(2000 + number), 80000 + number * 100
        phones = tuple(
            Extension(f"{prefix}*{101 + i}", base + i, "phone") for i in range(rng.randint(3, 8))
        )
        offices.append(
            Office(
                prefix,
                phones,
                Extension(f"{prefix}*887", base + 87, "ivr"),
                Extension(f"{prefix}*888", base + 88, "queue"),
                f"7495{rng.randint(1000000, 9999999)}",
            )
        )
    return offices


# A call's events: each with the id of the extension whose subscriptions get it.
Deliveries = list[tuple[int, dict[str, str]]]


@dataclasses.dataclass
class SimCall:
    """One call: (owner extension id, fields) in the order made, and what really happened."""

    kind: str
    events: Deliveries
    truth: dict[str, Any]


def event(
    kind: str, at_us: int, status: str, fields: dict[str, str], **more: str
) -> dict[str, str]:
    """One event's fields: EventType, EventTime (µs), CallStatus, then the leg's own."""
    return {"EventType": kind, "EventTime": str(at_us), "CallStatus": status, **more, **fields}


def routing_hangup(at_us: int, bridged: bool, fields: dict[str, str]) -> dict[str, str]:
    """The hangup of an IVR or queue leg: Bridged says whether a person answered (pbx-events §4)."""
    status = "ANSWER" if bridged else "CANCEL"
    return event("hangup", at_us, status, fields, Duration="0", Bridged="yes" if bridged else "no")


def query_string(fields: dict[str, str]) -> str:
    """The fields as the PBX sends them: form-encoded, `+` as %2B."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in fields.items())


class CallMaker:
    """Makes calls of each kind for a set of offices."""

    def __init__(self, offices: list[Office], seed: int = 1) -> None:
        self.offices = offices
        self.rng = random.Random(seed)

    def hexid(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def external(self) -> str:
        return f"+79{self.rng.randint(100000000, 999999999)}"

    def ids(self) -> dict[str, str]:
        call_id = self.hexid()
        parts = (call_id[:8], call_id[8:12], call_id[12:16], call_id[16:20], call_id[20:])
        return {"CallID": call_id, "CallAPIID": "3584709739-" + "-".join(parts)}

    def ring(self) -> int:
        return self.rng.randint(2_000_000, 25_000_000)

    def talk(self) -> int:
        return self.rng.randint(5_000_000, 400_000_000)

    def make(self, kind: str, start_us: int) -> SimCall:
        office = self.rng.choice(self.offices)
        events: Deliveries = []
        truth = getattr(self, kind.replace("-", "_"))(office, start_us, events)
        truth["call_id"] = events[0][1]["CallID"]
        truth["kind"] = kind
        return SimCall(kind, events, truth)

    # Legs.

    def inbound_leg(
        self,
        office: Office,
        ext: Extension,
        caller: str,
        ids: dict[str, str],
        via: Extension | None = None,
        flow: str = "in",
    ) -> dict[str, str]:
        fields = {
            **ids,
            "SubCallID": f"{ext.id}-{self.hexid()}",
            "CallFlow": flow,
            "CalledDID": office.did,
            "CalledNumber": ext.name,
            "CalledExtension": f"{ext.name}@{DOMAIN}",
            "CalledExtensionID": str(ext.id),
            "CallerIDNum": caller,
            "CallerIDName": caller,
        }
        if via is not None:
            fields["CallerExtension"] = f"{via.name}@{DOMAIN}"
            fields["CallerExtensionID"] = str(via.id)
        return fields

    def outbound_leg(self, ext: Extension, number: str, ids: dict[str, str]) -> dict[str, str]:
        return {
            **ids,
            "SubCallID": f"{ext.id}-{self.hexid()}",
            "CallFlow": "out",
            "CalledNumber": number,
            "CallerIDNum": ext.name,
            "CallerIDName": self.rng.choice(NAMES),
            "CallerExtension": f"{ext.name}@{DOMAIN}",
            "CallerExtensionID": str(ext.id),
        }

    def leg(
        self,
        events: Deliveries,
        owner: int,
        fields: dict[str, str],
        start: int,
        status: str,
        bridged: bool | None = None,
        dial: str | None = None,
    ) -> tuple[int, int]:
        """dial, answer (when status is ANSWER), hangup; returns (end time, talk µs)."""
        if dial is None:
            outgoing = fields["CallFlow"] == "out" and "CalledExtension" not in fields
            dial = "dial-out" if outgoing else "dial-in"
        events.append((owner, event(dial, start, "CALLING", fields)))
        end, talk = start + self.ring(), 0
        if status == "ANSWER" and bridged is None:
            events.append((owner, event("answer", end, "ANSWER", fields)))
            talk = self.talk()
            end += talk
        hangup = event("hangup", end, status, fields, Duration=str(talk))
        if talk:
            hangup["RecID"] = f"10500-{self.hexid()}"
        if bridged is not None:
            hangup["Bridged"] = "yes" if bridged else "no"
        events.append((owner, hangup))
        return end, talk

    @staticmethod
    def truth(
        direction: str, status: str, answered_by: str | None, talk: int, external: str | None
    ) -> dict[str, Any]:
        return {
            "direction": direction,
            "status": status,
            "answered_by": answered_by,
            "talk_seconds": talk / 1_000_000 if talk else None,
            "external_number": external,
        }

    # Kinds of call (pbx-events §4).

    def outbound(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        phone = self.rng.choice(office.phones)
        status = self.rng.choices(
            ["ANSWER", "BUSY", "NOANSWER", "CANCEL", "CONGESTION"], [70, 10, 12, 5, 3]
        )[0]
        number = self.external()
        _, talk = self.leg(
            events, phone.id, self.outbound_leg(phone, number, self.ids()), now, status
        )
        outcome = {
            "ANSWER": "answered",
            "BUSY": "busy",
            "NOANSWER": "no_answer",
            "CANCEL": "cancelled",
            "CONGESTION": "failed",
        }[status]
        return self.truth("out", outcome, None, talk, number)

    def inbound(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        phone = self.rng.choice(office.phones)
        status = self.rng.choices(["ANSWER", "CANCEL", "NOANSWER"], [75, 20, 5])[0]
        caller = self.external()
        fields = self.inbound_leg(office, phone, caller, self.ids())
        _, talk = self.leg(events, phone.id, fields, now, status)
        answered = status == "ANSWER"
        return self.truth(
            "in",
            "answered" if answered else "missed",
            phone.name if answered else None,
            talk,
            caller,
        )

    def ivr(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        ids, caller = self.ids(), self.external()
        menu = self.inbound_leg(office, office.ivr, caller, ids)
        events.append((office.ivr.id, event("dial-in", now, "CALLING", menu)))
        bridged = self.rng.random() < 0.75
        end, talk, phone = now + self.rng.randint(5_000_000, 30_000_000), 0, None
        if bridged:
            phone = self.rng.choice(office.phones)
            leg = self.inbound_leg(office, phone, caller, ids, via=office.ivr)
            end, talk = self.leg(events, phone.id, leg, end, "ANSWER")
            end += 1000
        events.append((office.ivr.id, routing_hangup(end, bridged, menu)))
        return self.truth(
            "in", "answered" if bridged else "missed", phone.name if phone else None, talk, caller
        )

    def queue(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        ids, caller, owner = self.ids(), self.external(), office.queue.id
        waiting = self.inbound_leg(office, office.queue, caller, ids)
        events.append((owner, event("dial-in", now, "CALLING", waiting)))
        bridged = self.rng.random() < 0.8
        moment, talk, taker = now + 1_000_000, 0, None
        rounds = self.rng.randint(1, 3)
        for round_ in range(rounds):
            agents = self.rng.sample(office.phones, 2)
            ends = []
            for number, agent in enumerate(agents):
                leg = self.inbound_leg(office, agent, caller, ids, via=office.queue, flow="out")
                answers = bridged and round_ == rounds - 1 and number == 0
                status = "ANSWER" if answers else "NOANSWER"
                end, leg_talk = self.leg(
                    events, owner, leg, moment + number * 400, status, dial="dial-in"
                )
                ends.append(end)
                if answers:
                    talk, taker = leg_talk, agent.name
            moment = max(ends) + 5_000_000
        events.append((owner, routing_hangup(moment, bridged, waiting)))
        return self.truth("in", "answered" if bridged else "missed", taker, talk, caller)

    def parallel(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        ids, caller = self.ids(), self.external()
        first, second = self.rng.sample(office.phones, 2)
        a = self.inbound_leg(office, first, caller, ids)
        b = self.inbound_leg(office, second, caller, ids)
        answer, talk = now + self.ring(), self.talk()
        events += [
            (first.id, event("dial-in", now, "CALLING", a)),
            (second.id, event("dial-in", now + 300, "CALLING", b)),
            (second.id, event("answer", answer, "ANSWER", b)),
            (first.id, event("hangup", answer + 2000, "CANCEL", a, Duration="0")),
            (second.id, event("hangup", answer + talk, "ANSWER", b, Duration=str(talk))),
        ]
        return self.truth("in", "answered", second.name, talk, caller)

    def forward(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        ids, caller = self.ids(), self.external()
        phone = self.rng.choice(office.phones)
        leg = self.inbound_leg(office, phone, caller, ids)
        events.append((phone.id, event("dial-in", now, "CALLING", leg)))
        out = self.outbound_leg(phone, self.external(), ids)
        out.update(CallerIDNum=caller, CallerIDName=caller, Transfered="yes")
        end, talk = self.leg(events, phone.id, out, now + 100_000, "ANSWER")
        events.append((phone.id, event("hangup", end + 900, "ANSWER", leg, Duration="0")))
        return self.truth("in", "answered", phone.name, talk, caller)

    def callback(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        # The owner is connected to a number on its own behalf: only the dial-out (pbx-events §4).
        phone = self.rng.choice(office.phones)
        ids = self.ids()
        ids["CallAPIID"] = f"cb-3584709739-{ids['CallID']}"
        number = self.external()
        fields = {**self.outbound_leg(phone, number, ids), "CallBackID": self.hexid()}
        status = "ANSWER" if self.rng.random() < 0.8 else "NOANSWER"
        _, talk = self.leg(events, phone.id, fields, now, status)
        outcome = "answered" if status == "ANSWER" else "no_answer"
        return self.truth("out", outcome, None, talk, number)

    def internal(self, office: Office, now: int, events: Deliveries) -> dict[str, Any]:
        caller, callee = self.rng.sample(office.phones, 2)
        ids = self.ids()
        self.leg(events, caller.id, self.outbound_leg(caller, callee.name, ids), now, "ANSWER")
        leg = self.inbound_leg(office, callee, caller.name, ids, via=caller)
        leg.update(CallerIDNum=caller.name, CallerIDName=caller.name)
        leg.pop("CalledDID")
        _, talk = self.leg(events, callee.id, leg, now + 20_000, "ANSWER")
        return self.truth("internal", "answered", callee.name, talk, None)


def parse_mix(text: str | None) -> dict[str, int]:
    """`outbound=30,ivr=10` -> weights; unknown kinds are refused. None: the default mix."""
    if not text:
        return dict(DEFAULT_MIX)
    mix = {}
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise ValueError(f"unknown kind of call {kind!r}: use {', '.join(KINDS)}")
        if not weight.strip().isdigit():
            raise ValueError(f"the weight of {kind} must be a whole number: {item!r}")
        mix[kind] = int(weight)
    if not any(mix.values()):
        raise ValueError("the mix gives every kind of call weight 0")
    return mix


def calls(
    offices: list[Office],
    *,
    seed: int,
    start_us: int,
    mix: dict[str, int] | None = None,
    every_us: tuple[int, int] = (50_000, 550_000),
) -> Iterator[SimCall]:
    """An endless stream of SimCalls, one every `every_us` (random within the range)."""
    maker = CallMaker(offices, seed)
    mix = mix or DEFAULT_MIX
    kinds, weights = list(mix), list(mix.values())
    now = start_us
    while True:
        yield maker.make(maker.rng.choices(kinds, weights)[0], now)
        now += maker.rng.randint(*every_us)
