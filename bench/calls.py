"""Seeded, realistic PBX call events, made as EVENT_SPEC §4 says the PBX makes them.

`calls(seed)` yields calls; each is a list of (myid, fields) in the order the PBX sends them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from urllib.parse import quote

DOMAIN = "sipproxy.telphin.ru"
NAMES = ["Пукин Васисуалий Карлович", "Иванов Иван Иванович", "Anna Smith", "Мария Петрова"]


class Office:
    """One PBX customer: phone extensions, an IVR, a queue and a public number."""

    def __init__(self, rng: random.Random, number: int) -> None:
        self.prefix = str(2000 + number)
        base = 80000 + number * 100
        self.phones = [(f"{self.prefix}*{101 + i}", base + i) for i in range(rng.randint(3, 8))]
        self.ivr = (f"{self.prefix}*887", base + 87)
        self.queue = (f"{self.prefix}*888", base + 88)
        self.did = f"7495{rng.randint(1000000, 9999999)}"


def hexid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def external(rng: random.Random) -> str:
    return f"+79{rng.randint(100000000, 999999999)}"


def calls(
    seed: int = 1, offices: int = 40, start_us: int = 1_764_572_400_000_000
) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """An endless stream of calls, one every ~0.3 s, in a realistic mix."""
    rng = random.Random(seed)
    pool = [Office(rng, n) for n in range(offices)]
    now = start_us
    while True:
        now += rng.randint(50_000, 550_000)
        office = rng.choice(pool)
        kind = rng.choices(
            ["out", "in", "ivr", "queue", "parallel", "forward", "callback", "internal"],
            [30, 28, 12, 12, 6, 4, 4, 4],
        )[0]
        yield list(CALLS[kind](rng, office, now))


def leg_id(rng: random.Random, extension_id: int) -> str:
    return f"{extension_id}-{hexid(rng)}"


def call_ids(rng: random.Random) -> dict[str, str]:
    call_id = hexid(rng)
    api = (
        f"3584709739-{call_id[:8]}-{call_id[8:12]}-{call_id[12:16]}-{call_id[16:20]}-{call_id[20:]}"
    )
    return {"CallID": call_id, "CallAPIID": api}


def ring(rng: random.Random) -> int:
    return rng.randint(2_000_000, 25_000_000)


def talk(rng: random.Random) -> int:
    return rng.randint(5_000_000, 400_000_000)


def leg_events(rng, myid, fields, start, answered, end_status, bridged=None, answer_event=True):  # type: ignore[no-untyped-def]
    """dial, (answer), hangup of one leg; times in µs."""
    first = (
        "dial-out" if fields["CallFlow"] == "out" and "CalledExtension" not in fields else "dial-in"
    )
    yield myid, {"EventType": first, "EventTime": str(start), "CallStatus": "CALLING", **fields}
    end = start + ring(rng)
    duration = 0
    if answered and answer_event:
        yield myid, {"EventType": "answer", "EventTime": str(end), "CallStatus": "ANSWER", **fields}
        duration = talk(rng)
        end += duration
    hangup = {
        "EventType": "hangup",
        "EventTime": str(end),
        "Duration": str(duration),
        "CallStatus": end_status,
        **fields,
    }
    if duration:
        hangup["RecID"] = leg_id(rng, 10500)
    if bridged is not None:
        hangup["Bridged"] = "yes" if bridged else "no"
    yield myid, hangup


def inbound_fields(office, extension, caller, ids, rng, via=None, flow="in"):  # type: ignore[no-untyped-def]
    name, ext_id = extension
    fields = {
        **ids,
        "SubCallID": leg_id(rng, ext_id),
        "CallFlow": flow,
        "CalledDID": office.did,
        "CalledNumber": name,
        "CalledExtension": f"{name}@{DOMAIN}",
        "CalledExtensionID": str(ext_id),
        "CallerIDNum": caller,
        "CallerIDName": caller,
    }
    if via is not None:
        fields["CallerExtension"] = f"{via[0]}@{DOMAIN}"
        fields["CallerExtensionID"] = str(via[1])
    return fields


def outbound_fields(office, extension, number, ids, rng, name=None):  # type: ignore[no-untyped-def]
    ext, ext_id = extension
    return {
        **ids,
        "SubCallID": leg_id(rng, ext_id),
        "CallFlow": "out",
        "CalledNumber": number,
        "CallerIDNum": ext,
        "CallerIDName": name or rng.choice(NAMES),
        "CallerExtension": f"{ext}@{DOMAIN}",
        "CallerExtensionID": str(ext_id),
    }


def outbound(rng, office, now):  # type: ignore[no-untyped-def]
    phone = rng.choice(office.phones)
    status = rng.choices(["ANSWER", "BUSY", "NOANSWER", "CANCEL"], [70, 10, 15, 5])[0]
    fields = outbound_fields(office, phone, external(rng), call_ids(rng), rng)
    yield from leg_events(rng, str(phone[1]), fields, now, status == "ANSWER", status)


def inbound(rng, office, now):  # type: ignore[no-untyped-def]
    phone = rng.choice(office.phones)
    status = rng.choices(["ANSWER", "CANCEL", "NOANSWER"], [75, 20, 5])[0]
    fields = inbound_fields(office, phone, external(rng), call_ids(rng), rng)
    yield from leg_events(rng, str(phone[1]), fields, now, status == "ANSWER", status)


def ivr(rng, office, now):  # type: ignore[no-untyped-def]
    ids, caller = call_ids(rng), external(rng)
    menu = inbound_fields(office, office.ivr, caller, ids, rng)
    myid = str(office.ivr[1])
    yield myid, {"EventType": "dial-in", "EventTime": str(now), "CallStatus": "CALLING", **menu}
    bridged = rng.random() < 0.75
    end = now + rng.randint(5_000_000, 30_000_000)
    if bridged:
        phone = rng.choice(office.phones)
        leg = inbound_fields(office, phone, caller, ids, rng, via=office.ivr)
        events = list(leg_events(rng, str(phone[1]), leg, end, True, "ANSWER"))
        yield from events
        end = int(events[-1][1]["EventTime"]) + 1000
    yield (
        myid,
        {
            "EventType": "hangup",
            "EventTime": str(end),
            "Duration": "0",
            "CallStatus": "ANSWER" if bridged else "CANCEL",
            "Bridged": "yes" if bridged else "no",
            **menu,
        },
    )


def queue(rng, office, now):  # type: ignore[no-untyped-def]
    ids, caller = call_ids(rng), external(rng)
    waiting = inbound_fields(office, office.queue, caller, ids, rng)
    myid = str(office.queue[1])
    yield myid, {"EventType": "dial-in", "EventTime": str(now), "CallStatus": "CALLING", **waiting}
    bridged = rng.random() < 0.8
    moment = now + 1_000_000
    for round_ in range(rng.randint(1, 3)):
        last = round_ == 2 or rng.random() < 0.5
        for number, agent in enumerate(rng.sample(office.phones, 2)):
            leg = inbound_fields(office, agent, caller, ids, rng, via=office.queue, flow="out")
            answers = bridged and last and number == 0
            events = list(
                leg_events(
                    rng,
                    myid,
                    leg,
                    moment + number * 400,
                    answers,
                    "ANSWER" if answers else "NOANSWER",
                )
            )
            yield from events
        moment = max(int(e[1]["EventTime"]) for e in events) + 5_000_000
        if last:
            break
    yield (
        myid,
        {
            "EventType": "hangup",
            "EventTime": str(moment),
            "Duration": "0",
            "CallStatus": "ANSWER" if bridged else "CANCEL",
            "Bridged": "yes" if bridged else "no",
            **waiting,
        },
    )


def parallel(rng, office, now):  # type: ignore[no-untyped-def]
    ids, caller = call_ids(rng), external(rng)
    first, second = rng.sample(office.phones, 2)
    a = inbound_fields(office, first, caller, ids, rng)
    b = inbound_fields(office, second, caller, ids, rng)
    answer = now + ring(rng)
    yield (
        str(first[1]),
        {"EventType": "dial-in", "EventTime": str(now), "CallStatus": "CALLING", **a},
    )
    yield (
        str(second[1]),
        {"EventType": "dial-in", "EventTime": str(now + 300), "CallStatus": "CALLING", **b},
    )
    yield (
        str(second[1]),
        {"EventType": "answer", "EventTime": str(answer), "CallStatus": "ANSWER", **b},
    )
    yield (
        str(first[1]),
        {
            "EventType": "hangup",
            "EventTime": str(answer + 2000),
            "Duration": "0",
            "CallStatus": "CANCEL",
            **a,
        },
    )
    duration = talk(rng)
    yield (
        str(second[1]),
        {
            "EventType": "hangup",
            "EventTime": str(answer + duration),
            "Duration": str(duration),
            "CallStatus": "ANSWER",
            **b,
        },
    )


def forward(rng, office, now):  # type: ignore[no-untyped-def]
    ids, caller = call_ids(rng), external(rng)
    phone = rng.choice(office.phones)
    myid = str(phone[1])
    leg = inbound_fields(office, phone, caller, ids, rng)
    yield myid, {"EventType": "dial-in", "EventTime": str(now), "CallStatus": "CALLING", **leg}
    out = outbound_fields(office, phone, external(rng), ids, rng, name=caller)
    out["CallerIDNum"] = caller
    out["Transfered"] = "yes"
    events = list(leg_events(rng, myid, out, now + 100_000, True, "ANSWER"))
    yield from events
    yield (
        myid,
        {
            "EventType": "hangup",
            "EventTime": str(int(events[-1][1]["EventTime"]) + 900),
            "Duration": "0",
            "CallStatus": "ANSWER",
            **leg,
        },
    )


def callback(rng, office, now):  # type: ignore[no-untyped-def]
    phone = rng.choice(office.phones)
    ids = call_ids(rng)
    ids["CallAPIID"] = f"cb-3584709739-{ids['CallID']}"
    fields = outbound_fields(office, phone, external(rng), ids, rng)
    fields["CallBackID"] = hexid(rng)
    yield from leg_events(rng, str(phone[1]), fields, now, rng.random() < 0.8, "ANSWER")


def internal(rng, office, now):  # type: ignore[no-untyped-def]
    caller, callee = rng.sample(office.phones, 2)
    ids = call_ids(rng)
    out = outbound_fields(office, caller, callee[0], ids, rng)
    leg = inbound_fields(office, callee, caller[0], ids, rng, via=caller)
    yield from leg_events(rng, str(caller[1]), out, now, True, "ANSWER")
    yield from leg_events(rng, str(callee[1]), leg, now + 20_000, True, "ANSWER")


CALLS = {
    "out": outbound,
    "in": inbound,
    "ivr": ivr,
    "queue": queue,
    "parallel": parallel,
    "forward": forward,
    "callback": callback,
    "internal": internal,
}


def query_string(fields: dict[str, str]) -> str:
    """The fields as the PBX sends them: form-encoded, `+` as %2B."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in fields.items())
