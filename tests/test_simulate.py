"""The simulated PBX's calls, rebuilt by receiver/calls.py, agree with their ground truth."""

from __future__ import annotations

import itertools
import random

import pytest

from pbx_emulator.simulate import KINDS, calls, make_offices, parse_mix, query_string
from receiver.calls import build_call, call_json
from receiver.event import RawRequest
from receiver.parse import parse_request

COMPARED = ("direction", "status", "answered_by", "talk_seconds", "external_number")


def rebuilt(sim_call, shuffle: random.Random | None = None, keep=lambda owner, f: True):  # type: ignore[no-untyped-def]
    events = []
    for owner, fields in sim_call.events:
        if keep(owner, fields):
            raw = RawRequest("GET", f"myid={owner}&{query_string(fields)}".encode())
            events.append(parse_request(raw, received_at_us=1, source="t")[0])
    if shuffle:
        shuffle.shuffle(events)
    return call_json(build_call(events, now_us=2**62, unknown_after_us=None))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_kind_of_call_matches_its_truth(seed: int) -> None:
    offices = make_offices(3, seed)
    shuffle = random.Random(seed)
    seen = set()
    for sim_call in itertools.islice(calls(offices, seed=seed, start_us=10**15), 400):
        seen.add(sim_call.kind)
        call = rebuilt(sim_call, shuffle)
        assert {k: call[k] for k in COMPARED} == {k: sim_call.truth[k] for k in COMPARED}, (
            sim_call.kind
        )
    assert seen == set(KINDS)


def test_ivr_and_queue_subscribed_to_hangup_only() -> None:
    # The provider recommends subscribing IVRs and queues to hangup only (pbx-events §5).
    offices = make_offices(2, 9)
    routing = {e.id for o in offices for e in (o.ivr, o.queue)}

    def keep(owner: int, fields: dict[str, str]) -> bool:
        return owner not in routing or fields["EventType"] == "hangup"

    mix = {"ivr": 1, "queue": 1}
    for sim_call in itertools.islice(calls(offices, seed=9, start_us=10**15, mix=mix), 200):
        call = rebuilt(sim_call, keep=keep)
        compared = ("direction", "status", "answered_by", "talk_seconds")
        assert {k: call[k] for k in compared} == {k: sim_call.truth[k] for k in compared}


def test_same_seed_same_calls() -> None:
    offices = make_offices(2, 4)
    first = [c.events for c in itertools.islice(calls(offices, seed=4, start_us=0), 20)]
    again = [c.events for c in itertools.islice(calls(offices, seed=4, start_us=0), 20)]
    assert first == again


@pytest.mark.parametrize(
    ("text", "words"),
    [("bogus=1", "unknown kind"), ("ivr=x", "whole number"), ("ivr=0", "weight 0")],
)
def test_bad_mix(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_mix(text)
