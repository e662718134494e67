"""Forwarding, end to end: events and calls sent to a real sink on a free port, signed as the
Standard Webhooks specification says (checked by its own library), retried, in order."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import standardwebhooks

from receiver.settings import Settings
from tests.conftest import BACKENDS, ServerProcess, both_backends, sample, scenario
from tests.sink import Sink

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()

# The tests through the app run on SQLite and on PostgreSQL (those opening the SQLite file:
# SQLite only).
backend = pytest.fixture(params=BACKENDS)(both_backends)


@pytest.fixture
def sink() -> Iterator[Sink]:
    found = Sink()
    yield found
    found.close()


def verify(received: object) -> None:
    """The signature checks out with the specification's own library."""
    standardwebhooks.Webhook(SECRET).verify(received.body, received.headers)  # type: ignore[attr-defined]


def wait_outbox_empty(client, seconds: float = 20) -> dict:  # type: ignore[no-untyped-def]
    """Wait until the server has recorded every attempt (the sink may see one first)."""
    deadline = time.monotonic() + seconds
    while True:
        found = client.get("/healthz").json()["forward"]["destinations"][0]
        if found["pending"] == 0 and found["in_flight"] == 0:
            return found  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, found
        time.sleep(0.02)


def test_every_event_reaches_the_sink_signed(make_client, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    client = make_client(forward=(sink.url,), forward_secret=SECRET, forward_settle=0.2)
    lines = scenario("outbound-answered")
    ids = [client.get(f"/webhook?myid=85219&{line}").json()["id"] for line in lines]
    sink.wait(lambda: len(sink.of_type("event.received")) == len(ids))
    got = sink.of_type("event.received")
    assert [r.message["data"]["id"] for r in got] == ids  # one call: in order
    for received in got:
        verify(received)
        assert received.headers["webhook-id"] == f"msg_event_{received.message['data']['id']}"
        assert received.headers["content-type"] == "application/json"
    sink.wait(lambda: len(sink.of_type("call.completed")) == 1)
    kinds = [r.message["type"] for r in sink.received if r.message["type"].startswith("call.")]
    assert kinds == ["call.started", "call.answered", "call.completed"]
    completed = sink.of_type("call.completed")[0]
    verify(completed)
    assert completed.message["data"]["status"] == "answered"
    assert completed.message["data"]["legs"]
    wait_outbox_empty(client)
    page = client.get("/api/deliveries").json()
    assert {d["status"] for d in page["deliveries"]} == {"delivered"}
    assert len(page["deliveries"]) == len(ids) + 3
    health = client.get("/healthz").json()["forward"]["destinations"][0]
    assert health["pending"] == 0 and health["delivered_since_start"] == len(ids) + 3


def test_a_message_that_failed_is_sent_again_with_the_same_id(make_client, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    sink.answers = [(500, {}), (500, {})]
    client = make_client(forward=(sink.url,), forward_secret=SECRET, forward_retries="1s 1s 1s",
                         forward_settle=60)  # fmt: skip
    event_id = client.get(f"/webhook?myid=85219&{sample('outbound-hangup')}").json()["id"]
    sink.wait(lambda: len(sink.of_type("event.received", ok_only=True)) == 1)
    tries = sink.of_type("event.received")
    assert [r.status for r in tries] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in tries} == {f"msg_event_{event_id}"}
    assert {r.body for r in tries} == {tries[0].body}  # the same message
    for received in tries:
        verify(received)  # each attempt signed with its own timestamp
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert all(0.85 <= gap < 5 for gap in gaps), gaps
    deadline = time.monotonic() + 10
    while (row := client.get(f"/api/deliveries?event_id={event_id}").json()["deliveries"][0])[
        "status"
    ] != "delivered":
        assert time.monotonic() < deadline, row
        time.sleep(0.02)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)


def test_retry_after_is_honoured(make_client, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    sink.answers = [(503, {"Retry-After": "2"}), (429, {"Retry-After": "1"})]
    client = make_client(forward=(sink.url,), forward_retries="30s 30s", forward_settle=60)
    client.get(f"/webhook?myid=85219&{sample('outbound-hangup')}")
    sink.wait(lambda: len(sink.of_type("event.received", ok_only=True)) == 1, seconds=20)
    first, second, third = sink.of_type("event.received")
    assert 1.9 <= second.at - first.at < 10  # not the schedule's 30 s
    assert 0.9 <= third.at - second.at < 10


def test_a_410_disables_the_destination_until_retried(
    make_client, sink: Sink, db_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from receiver.cli import main

    sink.answers = [(410, {})]
    client = make_client(forward=(sink.url,), forward_settle=60)
    first = client.get(f"/webhook?myid=85219&{sample('outbound-hangup')}").json()["id"]
    sink.wait(lambda: len(sink.received) == 1)
    time.sleep(0.3)
    line = sample("outbound-hangup").replace("EventTime=", "EventTime=1")
    client.get(f"/webhook?myid=85219&{line}")  # not written: the destination is disabled
    time.sleep(1.5)
    assert len(sink.received) == 1
    health = client.get("/healthz").json()["forward"]["destinations"][0]
    assert "410" in health["disabled_why"]
    dead = client.get("/api/deliveries?status=dead").json()["deliveries"]
    assert [d["event_id"] for d in dead] == [first]
    result = CliRunner().invoke(main, ["forward", "retry", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "1 dead messages due again" in result.output
    sink.wait(lambda: len(sink.of_type("event.received", ok_only=True)) == 1)
    again = [r.headers["webhook-id"] for r in sink.received[1:] if r.status == 200]
    assert again[0] == f"msg_event_{first}"  # before its call's messages, written after it


def test_a_missed_call_is_sent_only_after_the_settle_window(make_client, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    client = make_client(forward=(sink.url,), forward_settle=1.5)
    lines = scenario("inbound-cancelled")
    for line in lines:
        client.get(f"/webhook?myid=85218&{line}")
    last_answered = time.time()
    sink.wait(lambda: len(sink.of_type("call.missed")) == 1)
    [missed] = sink.of_type("call.missed")
    assert missed.at - last_answered >= 1.4  # the settle window from the call's end
    assert missed.message["data"]["status"] == "missed"
    assert [r.message["type"] for r in sink.received][-1] == "call.missed"
    assert not sink.of_type("call.completed") and not sink.of_type("call.answered")


def test_rules_pick_myids_types_and_the_original_form(make_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls_only, original = Sink(), Sink()
    try:
        rules = tmp_path / "forward.toml"
        rules.write_text(
            f'[[destination]]\nurl = "{calls_only.url}"\nsecret = "{SECRET}"\n'
            'myids = ["85219"]\ntypes = ["call.started"]\n\n'
            f'[[destination]]\nurl = "{original.url}"\noriginal = true\n'
            'types = ["event.received"]\n'
        )
        client = make_client(forward_rules=rules, forward_settle=60)
        line = sample("outbound-dial-out")
        client.get(f"/webhook?myid=85219&{line}")
        other = scenario("outbound-busy")[0]  # a call of its own
        client.post("/webhook?myid=85210", content=other,
                    headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        original.wait(lambda: len(original.received) == 2)
        calls_only.wait(lambda: len(calls_only.received) == 1)
        got = sorted(original.received, key=lambda r: r.body)
        assert all(r.headers["content-type"] == "application/x-www-form-urlencoded" for r in got)
        assert {r.body for r in got} == {other.encode(), f"myid=85219&{line}".encode()}
        assert "webhook-signature" not in got[0].headers  # no secret for it
        [started] = calls_only.received
        verify(started)
        assert started.message["type"] == "call.started"
        assert started.message["data"]["myids"] == ["85219"]
        time.sleep(0.5)
        assert len(calls_only.received) == 1  # 85210's call is not its
    finally:
        calls_only.close()
        original.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--forward", "ftp://crm.example.com/x"], "is not an http:// or https:// URL"),
        (["--forward", "crm.example.com"], "is not an http:// or https:// URL"),
        (["--forward", "http://a/x", "--forward-secret", "s3cret"], "not a Standard Webhooks"),
        (["--forward", "http://a/x", "--forward-secret", "whsec_!!"], "is not base64"),
        (["--forward-rules", "/nonexistent/forward.toml"], "cannot read it"),
        (["--forward", "http://a/x", "--forward", "http://a/x"], "given twice"),
        (["--forward-retries", "5s soon"], "is not a duration"),
    ],
)
def test_bad_forwarding_settings_stop_the_server_at_start(args: list[str], says: str) -> None:
    from click.testing import CliRunner

    from receiver.cli import main

    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert says in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ("url = 'http://a/x'", "unknown table 'url'"),
        ("", "has no [[destination]] table"),
        ("[[destination]]\nurl = 'http://a/x'\ntypes = ['call.lost']", "is not a message type"),
        ("[[destination]]\nurl = 'http://a/x'\nretries = 3", "unknown key 'retries'"),
        ("[[destination]]\nsecret = 'whsec_a'", "has no url"),
        ("[[destination]]\nurl = 'http://a/x'\ntimeout = 0", "timeout must be"),
        ("[[destination\n", "is not TOML"),
    ],
)
def test_a_bad_rules_file_says_what_to_fix(tmp_path: Path, rules: str, says: str) -> None:
    path = tmp_path / "forward.toml"
    path.write_text(rules)
    with pytest.raises(ValueError, match=re_escape(says)):
        Settings(forward_rules=path)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_variable_takes_several_urls(sink: Sink) -> None:
    from click.testing import CliRunner

    from receiver.cli import main

    result = CliRunner().invoke(
        main, ["serve", "--help"], env={"RECEIVER_FORWARD": "http://a/x  https://b/y"}
    )
    assert "RECEIVER_FORWARD" in result.output
    settings = Settings(forward=("http://a/x", "https://b/y"))
    assert [d.url for d in settings.destinations] == ["http://a/x", "https://b/y"]


@pytest.mark.slow
def test_a_server_killed_mid_stream_forwards_every_event_it_answered(server, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    import signal

    from tests.test_e2e import run_load_then

    count = {"n": 0}

    def flaky(body: bytes) -> tuple[int, dict[str, str]]:
        count["n"] += 1
        return (500, {}) if count["n"] % 5 == 0 else (200, {})  # every fifth fails, at first

    sink.answer = flaky
    # Retries enough that a busy machine's slow answers (timeouts) never make a dead letter.
    args = ("--forward", sink.url, "--forward-secret", SECRET, "--forward-timeout", "3",
            "--forward-retries", " ".join(["1s"] * 12), "--forward-settle", "1")  # fmt: skip
    first = server(*args)
    answered = run_load_then(first.url, lambda: first.stop(signal.SIGKILL))
    assert len(answered) > 50
    server(*args)  # its leases taken back once they end (20 s), then it all goes

    def forwarded() -> set[str]:
        return {r.message["data"]["call_id"] for r in sink.of_type("event.received", ok_only=True)}

    sink.wait(lambda: answered <= forwarded(), seconds=150)
    for received in sink.of_type("event.received")[:200]:
        verify(received)


@pytest.mark.slow
def test_a_server_on_postgresql_killed_mid_stream_forwards_every_event_it_answered(
    postgresql_db: str, tmp_path: Path, sink: Sink
) -> None:
    """`receiver serve --db postgresql://... --forward`: the messages are in the commits of
    their events, so what was answered 200 reaches the sink after a SIGKILL and a restart."""
    import signal

    from tests.test_e2e import run_load_then

    # Retries enough that a busy machine's slow answers (timeouts) never make a dead letter.
    args = ("--forward", sink.url, "--forward-secret", SECRET, "--forward-timeout", "3",
            "--forward-retries", " ".join(["1s"] * 12), "--forward-settle", "1")  # fmt: skip
    started: list[ServerProcess] = []
    try:
        first = ServerProcess(postgresql_db, *args, log_dir=tmp_path).start()  # type: ignore[arg-type]
        started.append(first)
        answered = run_load_then(first.url, lambda: first.stop(signal.SIGKILL))
        assert len(answered) > 50
        started.append(ServerProcess(postgresql_db, *args, log_dir=tmp_path).start())  # type: ignore[arg-type]

        def forwarded() -> set[str]:
            received = sink.of_type("event.received", ok_only=True)
            return {r.message["data"]["call_id"] for r in received}

        sink.wait(lambda: answered <= forwarded(), seconds=150)
        for received in sink.of_type("event.received")[:200]:
            verify(received)
        sink.wait(lambda: bool(sink.of_type("call.completed") or sink.of_type("call.missed")))
    finally:
        for process in started:
            process.stop(signal.SIGKILL)
