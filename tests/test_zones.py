"""Time zones: offsets found to the second, local days, and the reports' tz=."""

from __future__ import annotations

import pytest

from receiver.event import iso_time, parse_time
from receiver.zones import day_start, in_zone, offsets, zone
from tests.conftest import scenario, wait_for_calls


def test_offsets_change_where_the_zone_does() -> None:
    berlin = zone("Europe/Berlin")
    found = offsets(berlin, parse_time("2025-01-01"), parse_time("2026-01-01"))
    assert [(iso_time(at), shift // 3_600_000_000) for at, shift in found] == [
        ("2025-01-01T00:00:00.000000Z", 1),
        ("2025-03-30T01:00:00.000000Z", 2),  # 02:00 local, the last Sunday of March
        ("2025-10-26T01:00:00.000000Z", 1),
    ]
    assert offsets(zone("UTC"), 0, parse_time("2030-01-01")) == ((0, 0),)


def test_local_days_and_times() -> None:
    moscow = zone("Europe/Moscow")
    assert iso_time(day_start(moscow, parse_time("2025-11-30T22:30:00Z"))) == (
        "2025-11-30T21:00:00.000000Z"
    )
    assert in_zone("2025-11-30T22:30:00.000000Z", moscow) == "2025-12-01T01:30:00.000000+03:00"
    assert parse_time("2025-12-01", moscow) == parse_time("2025-11-30T21:00:00Z")


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "europe moscow"])
def test_a_name_that_is_no_zone_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="IANA name"):
        zone(name)


def test_tz_changes_what_a_day_holds(client) -> None:  # type: ignore[no-untyped-def]
    # 22:30 UTC on 30 November is 01:30 on 1 December in Moscow
    for line in scenario("inbound-answered", at_us=parse_time("2025-11-30T22:30:00Z")):
        assert client.get(f"/webhook?myid=85218&{line}").status_code == 200
    wait_for_calls(client.get)

    def periods(query: str) -> list[str]:
        answer = client.get(f"/api/reports/extensions?by=day&{query}")
        assert answer.status_code == 200, answer.text
        return [row["period"] for row in answer.json()["extensions"]]

    assert periods("") == ["2025-11-30T00:00:00.000000Z"]
    assert periods("tz=Europe/Moscow") == ["2025-12-01T00:00:00.000000+03:00"]
    assert periods("tz=Europe/Moscow&since=2025-12-01") == ["2025-12-01T00:00:00.000000+03:00"]
    assert periods("since=2025-12-01") == []  # UTC: the call was the day before
    missed = client.get("/api/reports/missed?tz=Asia/Tokyo").json()["numbers"]
    assert missed == []  # answered: nothing missed, but tz= is taken
    far = client.get("/api/reports/extensions?by=day&tz=Asia/Tokyo&since=999999999999")
    assert far.status_code == 200, far.text  # after the year 9999: nothing, and no error
    bad = client.get("/api/reports/extensions?tz=Mars/Olympus")
    assert bad.status_code == 400
    assert "tz" in bad.json()["error"]


def test_the_server_timezone_groups_reports(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(timezone="Europe/Moscow")
    for line in scenario("inbound-answered", at_us=parse_time("2025-11-30T22:30:00Z")):
        client.get(f"/webhook?myid=85218&{line}")
    wait_for_calls(client.get)
    rows = client.get("/api/reports/extensions?by=day").json()["extensions"]
    assert [row["period"] for row in rows] == [
        "2025-11-30T21:00:00.000000Z"
    ]  # Moscow's day, in UTC
