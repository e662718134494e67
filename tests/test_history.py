"""The PBX's call history: the emulator's records and endpoints, and the calls made of them."""

from __future__ import annotations

import itertools
import threading
import time

import httpx2 as httpx
import pytest

from pbx_emulator.history import history_record, recording_bytes, signature
from pbx_emulator.simulate import KINDS, calls, make_offices
from receiver.calls import call_json
from receiver.history import call_from_history, differences
from receiver.pbx.client import PbxClient, PbxError

COMPARED = ("direction", "status", "answered_by", "external_number")
START_US = 1_764_547_200_000_000  # 2025-12-01 00:00:00 UTC


def history_of(seed: int, count: int, offices: int = 3) -> list[tuple[dict, dict]]:  # type: ignore[type-arg]
    """(truth, history record) of `count` simulated calls."""
    made = make_offices(offices, seed)
    kinds = {e.id: e for office in made for e in office.extensions}
    return [
        (sim.truth, history_record(sim, kinds))
        for sim in itertools.islice(calls(made, seed=seed, start_us=START_US), count)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_call_made_of_a_history_record_agrees_with_the_truth(seed: int) -> None:
    seen = set()
    for truth, record in history_of(seed, 400):
        seen.add(truth["kind"])
        call = call_json(call_from_history(record))
        assert {k: call[k] for k in COMPARED} == {k: truth[k] for k in COMPARED}, truth["kind"]
        # The history counts whole seconds.
        assert abs((call["talk_seconds"] or 0) - (truth["talk_seconds"] or 0)) <= 0.5
        assert call["source"] == "call_history"
        assert call["call_id"] == truth["call_id"]  # the history's upper case, as CallIDs are
        assert record["call_uuid"] == truth["call_id"].upper()
    assert seen == set(KINDS)


def test_a_call_agrees_with_its_own_history_and_differs_from_another() -> None:
    (_, first), (_, second) = history_of(4, 2)
    one = call_from_history(first)
    assert differences(one, call_from_history(first)) == {}
    assert differences(one, call_from_history(second)) != {}


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({}, "without call_uuid"),  # nothing at all
        ({"call_uuid": "  "}, "without call_uuid"),  # blank
        ({"call_uuid": "AB"}, "no init_time_gmt"),  # no time
        ({"call_uuid": "AB", "init_time_gmt": "1 Dec 2025"}, "does not match format"),
        (
            {"call_uuid": "AB", "init_time_gmt": "2025-12-01 10:00:00", "bridged_duration": "x"},
            "could not convert",
        ),
    ],
)
def test_a_record_it_cannot_read_is_a_clear_error(record: dict, words: str) -> None:  # type: ignore[type-arg]
    record = {"result": "answered", **record}
    with pytest.raises(ValueError, match=words):
        call_from_history(record)


def test_a_record_with_odd_values_still_makes_a_call() -> None:
    # Results it does not know, legs without times: a call, not an exception.
    call = call_from_history(
        {
            "call_uuid": "ABC",
            "init_time_gmt": "2025-12-01 10:00:00",
            "result": "voicemail",
            "flow": "sideways",
            "cdr": [{"result": "who knows", "extension_id": "n/a"}, {}],
        }
    )
    assert (call.direction, call.status, len(call.legs)) == ("in", "missed", 2)


def test_the_recording_is_an_mp3() -> None:
    data = recording_bytes("10500-abc")
    assert data.startswith(b"ID3\x04")
    size = int.from_bytes(data[6:10], "big")  # synchsafe, and small enough to read as is
    assert data[10 + size : 10 + size + 2] == b"\xff\xfb"  # an MPEG-1 Layer III frame follows
    assert len(data) < 20_000


def client(pbx) -> PbxClient:  # type: ignore[no-untyped-def]
    return PbxClient(pbx.url, "demo", "demo-secret", pause=0.05)


def put_history(pbx, count: int = 30) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    records = [record for _, record in history_of(5, count, offices=2)]
    httpx.post(f"{pbx.url}/emulator/history", json=records).raise_for_status()
    return records


def test_the_history_is_read_page_by_page(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator("--seed", "5")
    records = put_history(pbx, 30)
    with client(pbx) as api:
        pages = list(api.call_history(START_US, START_US + 86_400_000_000, per_page=7))
        assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
        seen = [r["call_uuid"] for page in pages for r in page]
        assert sorted(seen) == sorted(r["call_uuid"] for r in records)
        times = [r["init_time_gmt"] for page in pages for r in page]
        assert times == sorted(times)  # oldest first
        assert list(api.call_history(START_US - 3_600_000_000, START_US)) == [[]]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "start_datetime is required"),
        ({"start_datetime": "2025-12-01", "end_datetime": "2025-12-02 00:00:00"}, "is not"),
        ({"start_datetime": "2025-12-01 00:00:00", "end_datetime": "2025-12-02 00:00:00",
          "per_page": "0"}, "per_page"),
        ({"start_datetime": "2025-12-01 00:00:00", "end_datetime": "2025-12-02 00:00:00",
          "order": "up"}, "order"),
    ],
)  # fmt: skip
def test_the_emulator_refuses_a_bad_history_query(emulator, params, words: str) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    with client(pbx) as api:
        headers = {"Authorization": f"Bearer {api.token()}"}
    answer = httpx.get(f"{pbx.url}/client/@me/call_history/", params=params, headers=headers)
    assert answer.status_code == 400
    assert words in answer.json()["message"]
    other = httpx.get(f"{pbx.url}/client/42/call_history/", headers=headers)
    assert other.status_code == 404


def test_a_second_history_request_meanwhile_is_refused_and_the_client_waits_its_turn(
    emulator,  # type: ignore[no-untyped-def]
) -> None:
    pbx = emulator("--history-delay", "0.6")
    put_history(pbx, 5)
    with client(pbx) as api:
        headers = {"Authorization": f"Bearer {api.token()}"}
    params = {"start_datetime": "2025-12-01 00:00:00", "end_datetime": "2025-12-02 00:00:00"}
    first: list[httpx.Response] = []
    running = threading.Thread(
        target=lambda: first.append(
            httpx.get(f"{pbx.url}/client/@me/call_history/", params=params, headers=headers)
        )
    )
    running.start()
    time.sleep(0.2)
    second = httpx.get(f"{pbx.url}/client/@me/call_history/", params=params, headers=headers)
    assert second.status_code == 429
    assert second.json()["message"].startswith("Stats request already exists")
    running.join()
    assert first[0].status_code == 200
    running = threading.Thread(
        target=lambda: httpx.get(
            f"{pbx.url}/client/@me/call_history/", params=params, headers=headers
        )
    )
    running.start()
    time.sleep(0.2)
    with client(pbx) as api:  # refused while the other runs, then asks again, and is answered
        pages = list(api.call_history(START_US, START_US + 86_400_000_000))
    running.join()
    assert sum(map(len, pages)) == 5
    assert httpx.get(f"{pbx.url}/emulator/state").json()["history_requests"] == 3


def test_a_recording_and_its_storage_url(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    records = put_history(pbx, 30)
    record_uuid = next(
        leg["record_uuid"] for r in records for leg in r["cdr"] if leg["record_uuid"]
    )
    with client(pbx) as api:
        mp3 = api.recording(record_uuid)
        assert mp3 == recording_bytes(record_uuid)
        url = api.recording_url(record_uuid)
        assert httpx.get(url).content == mp3  # no token needed: the URL is signed
        assert httpx.get(url.replace("signature=", "signature=0")).status_code == 403
        past = int(time.time()) - 1
        late = f"{pbx.url}/storage/records/{record_uuid}.mp3?expires={past}&signature=" + (
            signature("demo-secret", record_uuid, past)
        )
        assert httpx.get(late).json() == {"message": "Link expired"}
        with pytest.raises(PbxError, match=r"does not know recording nope.*the recording's id"):
            api.recording("nope")
