"""Call reconstruction: every scenario of pbx-events §4, in order and shuffled."""

from __future__ import annotations

import random

import pytest

from receiver.calls import Direction, build_call, call_json, digits
from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from tests.conftest import ROOT

NOW = 1_764_600_000_000_000  # after every sample call


def scenario(name: str, myid: str = "1") -> list[Event]:
    lines = (ROOT / "sample_payloads" / f"{name}.txt").read_text().splitlines()
    events = []
    for line in (x for x in lines if x and not x.startswith("#")):
        raw = RawRequest("GET", f"myid={myid}&{line}".encode())
        event, _ = parse_request(raw, received_at_us=NOW, source="t")
        events.append(event)
    return events


# scenario -> what the call must say
EXPECTED = {
    "outbound-answered": {"direction": "out", "status": "answered", "talk_seconds": 41.250118,
                          "answered_by": None, "external_number": "+79161112233"},
    "outbound-busy": {"direction": "out", "status": "busy", "talk_seconds": None},
    "outbound-no-answer": {"direction": "out", "status": "no_answer"},
    "inbound-answered": {"direction": "in", "status": "answered", "answered_by": "2566*101",
                         "talk_seconds": 95.402117, "ring_seconds": 5.120331,
                         "external_number": "+74951234567", "did": "74959998877"},
    "inbound-cancelled": {"direction": "in", "status": "missed", "answered_by": None},
    "ivr-bridged-yes": {"direction": "in", "status": "answered", "answered_by": "2566*102",
                        "extensions": ["2566*887", "2566*102"]},
    "ivr-bridged-no": {"direction": "in", "status": "missed"},
    "queue-rounds": {"direction": "in", "status": "answered", "answered_by": "2566*101"},
    "parallel-ringing": {"direction": "in", "status": "answered", "answered_by": "2566*102"},
    "forward-external": {"direction": "in", "status": "answered", "transferred": True,
                         "answered_by": "2566*103", "external_number": "+74993334455"},
    "callback": {"direction": "out", "status": "answered", "external_number": "+79817654321"},
    "internal": {"direction": "internal", "status": "answered", "answered_by": "2566*102",
                 "talk_seconds": 15.0, "external_number": None},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_scenarios_in_order_and_shuffled(name: str, seed: int | None) -> None:
    events = scenario(name)
    if seed is not None:
        random.Random(seed).shuffle(events)
    call = call_json(build_call(events, now_us=NOW))
    for field, value in EXPECTED[name].items():
        assert call[field] == value, field


def test_repeated_events_change_nothing() -> None:
    events = scenario("queue-rounds")
    again = call_json(build_call(events + events[:4], now_us=NOW))
    once = call_json(build_call(events, now_us=NOW))
    assert len(again.pop("events")) == len(once.pop("events")) + 4  # the timeline shows them
    assert again == once


def test_queue_legs_each_ring_is_a_leg() -> None:
    call = build_call(scenario("queue-rounds"), now_us=NOW)
    # the caller's queue leg, two agents in round one, agent 101 again in round two
    assert len(call.legs) == 4
    assert [leg.answered for leg in call.legs] == [False, False, False, True]


def test_call_without_hangup_is_in_progress_then_unknown_end() -> None:
    dial = scenario("outbound-answered")[:1]
    started = dial[0].order_us
    assert build_call(dial, now_us=started + 60_000_000).status == "in_progress"
    assert build_call(dial, now_us=started + 5 * 3600 * 1_000_000).status == "unknown_end"
    assert build_call(dial, now_us=started + 120_000_000, unknown_after_us=60_000_000).status == (
        "unknown_end"
    )


def test_missing_dial_event_uses_what_is_there() -> None:
    events = scenario("inbound-answered")[1:]  # the dial-in was lost
    call = build_call(events, now_us=NOW)
    assert (call.status, call.direction) == ("answered", Direction.IN)
    assert call.talk_us == 95_402_117


def test_remote_number_beats_caller_id() -> None:
    events = scenario("inbound-answered")
    first = events[0]
    events[0] = Event(**{**{f: getattr(first, f) for f in first.__dataclass_fields__},
                         "remote_number": "+74950000000"})  # fmt: skip
    assert build_call(events, now_us=NOW).external_number == "+74950000000"


def test_timeline_and_legs_in_json() -> None:
    call = call_json(build_call(scenario("ivr-bridged-yes"), now_us=NOW))
    assert [e["event_type"] for e in call["events"]] == [
        "dial-in", "dial-in", "answer", "hangup", "hangup"
    ]  # fmt: skip
    assert call["legs"][0]["bridged"] is True
    assert call["legs"][0]["answered"] is False  # the IVR itself never "answers"


@pytest.mark.parametrize(
    ("number", "expected"),
    [("+7 (916) 111-22-33", "79161112233"), ("89161112233", "79161112233"),
     ("2566*102", "2566*102"), ("", None), (None, None)],
)  # fmt: skip
def test_digits(number: str | None, expected: str | None) -> None:
    assert digits(number) == expected


@pytest.mark.parametrize(
    ("name", "direction", "status"),
    [("outbound-answered", "out", "answered"), ("outbound-busy", "out", "busy"),
     ("inbound-answered", "in", "answered"), ("inbound-cancelled", "in", "missed"),
     ("internal", "internal", "answered"), ("forward-external", "in", "answered")],
)  # fmt: skip
def test_hangups_alone_are_enough(name: str, direction: str, status: str) -> None:
    # Some integrations subscribe to hangup only, as the provider advises for IVRs and queues.
    hangups = [e for e in scenario(name) if e.event_type == "hangup"]
    call = build_call(hangups, now_us=NOW)
    assert (call.direction, call.status) == (direction, status)
