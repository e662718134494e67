"""The HTTP service through Starlette's TestClient, on a real SQLite file."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from receiver.event import REJECT_BODY_KEPT
from tests.conftest import BACKENDS, both_backends, sample

FORM = {"content-type": "application/x-www-form-urlencoded"}
HANGUP = sample("outbound-hangup")

# Every test here runs on SQLite and on PostgreSQL (those opening the SQLite file: SQLite only).
backend = pytest.fixture(params=BACKENDS)(both_backends)


def assert_error(response, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    """Every error has one shape: {"ok": false, "error": "...", "status": N}."""
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"ok", "error", "status"}
    assert body["ok"] is False
    assert body["status"] == status
    assert words in body["error"]


def test_get_delivery_is_stored(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/webhook?myid=175&{HANGUP}")
    assert response.json() == {"ok": True, "id": 1, "duplicate": False}
    stored = client.get("/api/events/1").json()
    assert stored["source"] == "http-get"
    assert stored["event_time"] == "2017-08-17T16:02:30.238219Z"
    assert stored["raw"]["method"] == "GET"
    assert stored["raw"]["query"] == f"myid=175&{HANGUP}"


def test_post_delivery_is_stored_with_its_raw_body(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/webhook?myid=175", content=HANGUP, headers=FORM)
    assert response.json() == {"ok": True, "id": 1, "duplicate": False}
    stored = client.get("/api/events/1").json()
    assert (stored["source"], stored["duration"]) == ("http-post", 11.420018)
    assert stored["raw"]["body"] == HANGUP


def test_numbers_too_big_for_sqlite_are_stored_as_text(client) -> None:  # type: ignore[no-untyped-def]
    huge = "9" * 20  # a 20-digit EventTime or Duration: over the 64-bit integer SQLite keeps
    delivery = HANGUP.replace("Duration=11420018", f"Duration={huge}")
    response = client.get(f"/webhook?myid=175&{delivery}")
    assert response.json() == {"ok": True, "id": 1, "duplicate": False}
    stored = client.get("/api/events/1").json()
    assert (stored["duration"], stored["extra"]["Duration"]) == (None, huge)
    assert "bad_value" in stored["flags"]


def test_repeat_is_acknowledged_counted_and_not_stored_twice(client) -> None:  # type: ignore[no-untyped-def]
    first = client.get(f"/webhook?myid=175&{HANGUP}").json()
    again = client.post("/webhook?myid=175", content=HANGUP, headers=FORM).json()
    assert again == {"ok": True, "id": first["id"], "duplicate": True}
    events = client.get("/api/events").json()["events"]
    assert len(events) == 1
    assert events[0]["duplicates"] == 1
    # the same event for another myid is another event
    assert client.get(f"/webhook?myid=176&{HANGUP}").json()["duplicate"] is False


@pytest.mark.parametrize(
    ("method", "url", "body", "headers", "status", "words"),
    [
        ("GET", f"/webhook?{HANGUP}", None, {}, 400, "myid is missing"),
        ("GET", "/webhook?myid=1&CallID=x", None, {}, 400, "EventType is missing"),
        ("POST", "/webhook?myid=1", b'{"EventType": 1}', {"content-type": "application/json"},
         415, "is not a form"),
        ("POST", "/webhook?myid=1", b"EventType=answer&" + b"x" * 70000, FORM, 413, "over the"),
        ("PUT", "/webhook?myid=1", b"EventType=answer", FORM, 405, "not allowed"),
        ("POST", "/webhook?myid=1", b"junk", {"content-type": "multipart/form-data; boundary=z"},
         400, "does not parse"),
    ],
)  # fmt: skip
def test_refusals_answer_precisely_and_are_kept(  # type: ignore[no-untyped-def]
    client, method, url, body, headers, status, words
) -> None:
    response = client.request(method, url, content=body, headers=headers)
    assert_error(response, status, words)
    rejects = client.get("/api/rejects").json()["rejects"]
    assert len(rejects) == 1
    kept = rejects[0]
    assert (kept["status"], kept["method"], kept["query"]) == (status, method, url.split("?")[1])
    assert words in kept["reason"]
    if body is not None:
        assert kept["body_size"] >= min(len(body), 65537)
        if status != 413:
            assert kept["body"] == body.decode()
    assert client.get("/api/events").json()["events"] == []


def test_405_says_which_methods(client) -> None:  # type: ignore[no-untyped-def]
    assert client.delete("/webhook?myid=1").headers["allow"] == "GET, POST"


def test_unknown_path_and_bad_parameters_use_the_error_shape(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/nowhere"), 404, "Not Found")
    assert_error(client.get("/api/events/999"), 404, "no event with id 999")
    assert_error(client.get("/api/events?limit=0"), 400, "parameter limit")
    assert_error(client.get("/api/events?limit=abc"), 400, "parameter limit")
    assert_error(client.get("/api/events?after=zz"), 400, "parameter after")
    assert_error(client.get("/api/rejects?before=-1"), 400, "parameter before")


def test_default_myid(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(default_myid="500")
    client.get(f"/webhook?{HANGUP}")
    assert client.get("/api/events/1").json()["myid"] == "500"


def test_webhook_token(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token="s3cret")
    assert_error(client.get(f"/webhook?myid=1&{HANGUP}"), 403, "token is missing or wrong")
    assert_error(client.get(f"/webhook?myid=1&token=nope&{HANGUP}"), 403, "token")
    assert client.get(f"/webhook?myid=1&token=s3cret&{HANGUP}").json()["ok"] is True
    stored = client.get("/api/events/1").json()
    assert "s3cret" not in str(stored)
    rejects = client.get("/api/rejects").json()["rejects"]
    assert len(rejects) == 2
    assert "nope" not in str(rejects)
    assert all("token" not in reject["query"] for reject in rejects)


def test_per_myid_tokens(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(tokens="175=a,176=b")
    assert client.get(f"/webhook?myid=175&token=a&{HANGUP}").status_code == 200
    assert client.get(f"/webhook?myid=176&token=a&{HANGUP}").status_code == 403
    assert client.get(f"/webhook?myid=176&token=b&{HANGUP}").status_code == 200
    # a myid with no token of its own is refused once any per-myid token is set
    assert client.get(f"/webhook?myid=177&{HANGUP}").status_code == 403


def test_per_myid_token_beats_the_shared_one(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token="shared", tokens="175=own")
    assert client.get(f"/webhook?myid=175&token=shared&{HANGUP}").status_code == 403
    assert client.get(f"/webhook?myid=175&token=own&{HANGUP}").status_code == 200
    assert client.get(f"/webhook?myid=9&token=shared&{HANGUP}").status_code == 200


def test_api_token(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_token="reader")
    client.get(f"/webhook?myid=1&{HANGUP}")
    for path in ("/api/events", "/api/events/1", "/api/rejects"):
        assert_error(client.get(path), 401, "Authorization: Bearer")
        assert_error(client.get(path, headers={"authorization": "Bearer wrong"}), 401, "Bearer")
        assert client.get(path, headers={"authorization": "Bearer reader"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # health stays open for probes


def test_events_page_in_event_time_order_with_cursor(client) -> None:  # type: ignore[no-untyped-def]
    for name in ("outbound-hangup", "outbound-answer", "outbound-dial-out", "queue-agent-dial-in"):
        client.get(f"/webhook?myid=175&{sample(name)}")
    client.get(f"/webhook?myid=176&{sample('outbound-dial-out-cyrillic-name')}")
    first = client.get("/api/events?myid=175&limit=3").json()
    assert [e["event_type"] for e in first["events"]] == ["dial-in", "dial-out", "answer"]
    rest = client.get(f"/api/events?myid=175&limit=3&after={first['next']}").json()
    assert [e["event_type"] for e in rest["events"]] == ["hangup"]
    assert rest["next"] is None
    assert len(client.get("/api/events").json()["events"]) == 5


def test_rejects_are_bounded(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(rejects_max=3)
    for number in range(5):
        client.get(f"/webhook?n={number}")
    rejects = client.get("/api/rejects").json()["rejects"]
    assert [r["query"] for r in rejects] == ["n=4", "n=3", "n=2"]


def test_refused_bodies_keep_their_start_and_say_what_was_cut(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token="secret")
    body = b"EventType=answer&Pad=" + b"x" * 60_000
    assert_error(client.post("/webhook?myid=1", content=body, headers=FORM), 403, "token")
    (kept,) = client.get("/api/rejects").json()["rejects"]
    assert kept["body"] == body[:REJECT_BODY_KEPT].decode()
    assert (kept["body_kept"], kept["body_size"]) == (REJECT_BODY_KEPT, len(body))


def test_many_large_refused_posts_keep_the_rejects_bounded_in_bytes(  # type: ignore[no-untyped-def]
    make_client, db_path: Path
) -> None:
    bound = 100_000
    client = make_client(token="secret", rejects_max_bytes=bound)
    for number in range(300):
        body = f"EventType=answer&N={number}&Pad=".encode() + b"x" * 60_000
        client.post(f"/webhook?myid=1&n={number}", content=body, headers=FORM)
    rejects = client.get("/api/rejects?limit=1000").json()["rejects"]
    assert [r["query"] for r in rejects] == [
        f"myid=1&n={n}" for n in range(299, 299 - len(rejects), -1)
    ]
    kept = sum(len(r["query"]) + r["body_kept"] for r in rejects)
    assert kept <= bound < kept + len(rejects[-1]["query"]) + REJECT_BODY_KEPT  # no more gone
    with sqlite3.connect(db_path) as other:  # the WAL's pages into the file, and it emptied
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    wal = db_path.with_name(f"{db_path.name}-wal")
    assert db_path.stat().st_size + wal.stat().st_size < 1_000_000  # 300 bodies of 60 KB came


def test_healthz(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json()["ok"] is True


def test_a_failed_commit_answers_503_and_logs_the_request(client, db_path, caplog) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    with sqlite3.connect(db_path) as setup:
        setup.execute(
            "CREATE TRIGGER full BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    response = client.get(f"/webhook?myid=175&{HANGUP}")
    assert_error(response, 503, "database or disk is full")
    assert "event NOT stored" in caplog.text
    assert "b5187f38a9cc43f2ba068bce983a513e" in caplog.text  # the raw request is in the log
    with sqlite3.connect(db_path) as setup:
        setup.execute("DROP TRIGGER full")
    assert client.get(f"/webhook?myid=175&{HANGUP}").json()["duplicate"] is False


def test_a_client_gone_before_the_body_ended_is_kept_as_a_reject(client) -> None:  # type: ignore[no-untyped-def]
    # Half a body, then the client leaves: not an event, but the bytes are kept.
    messages = [
        {"type": "http.request", "body": b"EventType=hangup&CallID=", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/webhook", "query_string": b"myid=1",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "client": ("10.0.0.1", 5060),
    }  # fmt: skip
    client.portal.call(client.app, scope, receive, send)
    assert sent[0]["status"] == 400
    assert client.get("/api/events").json()["events"] == []
    (kept,) = client.get("/api/rejects").json()["rejects"]
    assert "before the body ended" in kept["reason"]
    assert (kept["body"], kept["client"]) == ("EventType=hangup&CallID=", "10.0.0.1")


SECRET = "S3cretW3bhook"
GUESS = "Wr0ngGu3ss"
# The token's name as a client may spell it: percent-encoded, in any ASCII case.
TOKEN_NAMES = ["token", "TOKEN", "%74oken", "To%4Ben", "%54%4f%4B%45%4E", "tok%65n"]


def assert_kept_nowhere(client, db_path, *secrets: str) -> None:  # type: ignore[no-untyped-def]
    """No secret in any read endpoint, in the export, or in the database's bytes (WAL too)."""
    events = client.get("/api/events").json()["events"]
    seen = [client.get("/api/events").text, client.get("/api/rejects?limit=1000").text]
    seen += [client.get(f"/api/events/{event['id']}").text for event in events]
    seen.append(client.get("/api/events?format=ndjson").text)
    files = [path for path in db_path.parent.iterdir() if path.name.startswith(db_path.name)]
    for secret in secrets:
        assert not [text for text in seen if secret in text]
        assert not [path for path in files if secret.encode() in path.read_bytes()]


@pytest.mark.parametrize("name", TOKEN_NAMES)
def test_the_token_matches_by_decoded_name_and_is_never_kept(make_client, db_path, name) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token=SECRET)
    assert client.get(f"/webhook?myid=175&{name}={SECRET}&{HANGUP}").status_code == 200
    post = client.post(
        f"/webhook?{name}={SECRET}&myid=175", content=b"EventType=answer", headers=FORM
    )
    assert post.status_code == 200
    assert_error(client.get(f"/webhook?myid=175&{name}={GUESS}&{HANGUP}"), 403, "token")
    assert_error(client.get(f"/webhook?myid=175&{name}={SECRET}&CallID=x"), 400, "EventType")
    assert_error(client.put(f"/webhook?myid=175&{name}={SECRET}"), 405, "not allowed")
    assert len(client.get("/api/events").json()["events"]) == 2
    assert len(client.get("/api/rejects").json()["rejects"]) == 3
    assert_kept_nowhere(client, db_path, SECRET, GUESS)


def test_a_kelvin_sign_does_not_spell_token(make_client) -> None:  # type: ignore[no-untyped-def]
    # 'K' (U+212A) lowers to 'k' in Unicode, but names match ASCII-case-insensitively only.
    client = make_client(token=SECRET)
    assert_error(client.get(f"/webhook?myid=175&to%E2%84%AAen={SECRET}&{HANGUP}"), 403, "token")
    both = f"/webhook?myid=175&token={SECRET}&to%E2%84%AAen=other&{HANGUP}"
    assert client.get(both).status_code == 200
    assert client.get("/api/events/1").json()["extra"] == {"to\u212aen": "other"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (f"EventType=answer&token={SECRET}&CallID=b", FORM["content-type"]),
        (f"EventType=answer&%74oKEN={SECRET}", FORM["content-type"]),
        (f"EventType=answer&token={SECRET}", "text/plain"),
        (
            '--zz\r\nContent-Disposition: form-data; name="EventType"\r\n\r\nanswer\r\n'
            f'--zz\r\ncontent-disposition: form-data; name="TOKEN"\r\n\r\n{SECRET}\r\n--zz--\r\n',
            "multipart/form-data; boundary=zz",
        ),
        (  # cut short inside the token's part
            '--zz\r\nContent-Disposition: form-data; name="EventType"\r\n\r\nanswer\r\n'
            f'--zz\r\nContent-Disposition: form-data; name="Token"\r\n\r\n{SECRET}',
            "multipart/form-data; boundary=zz",
        ),
    ],
)
def test_a_token_in_the_body_is_refused_and_never_kept(  # type: ignore[no-untyped-def]
    make_client, db_path, body, content_type
) -> None:
    client = make_client()
    response = client.post(
        "/webhook?myid=175", content=body.encode(), headers={"content-type": content_type}
    )
    assert response.status_code in (400, 415)
    assert client.put("/webhook?myid=175", content=body.encode()).status_code == 405
    (refused, _) = client.get("/api/rejects").json()["rejects"][::-1]
    assert "EventType=answer" in refused["body"] or 'name="EventType"' in refused["body"]
    assert client.get("/api/events").json()["events"] == []
    assert_kept_nowhere(client, db_path, SECRET)


def test_a_multipart_body_cut_short_is_refused_and_kept(client) -> None:  # type: ignore[no-untyped-def]
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="EventType"\r\n\r\nhangup\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="CallID"\r\n\r\n7f3'
    )
    headers = {"content-type": "multipart/form-data; boundary=b0"}
    assert_error(client.post("/webhook?myid=175", content=body, headers=headers), 400, "cut short")
    (kept,) = client.get("/api/rejects").json()["rejects"]
    assert (kept["status"], kept["body"], kept["body_size"]) == (400, body.decode(), len(body))
    assert client.get("/api/events").json()["events"] == []


def test_a_refused_myid_is_kept_only_in_the_raw_query(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token=SECRET)
    long = "9" * 2000
    assert_error(client.get(f"/webhook?myid={long}&{HANGUP}"), 400, "1 to 64 ASCII letters")
    assert_error(client.get(f"/webhook?myid=175&myid=176&{HANGUP}"), 400, "2 different myids")
    assert_error(client.get(f"/webhook?myid=175&{HANGUP}"), 403, "token")
    rejects = client.get("/api/rejects").json()["rejects"]
    assert [r["myid"] for r in rejects] == ["175", None, None]
    assert rejects[2]["query"].startswith(f"myid={long}&")
    assert client.get("/api/events").json()["events"] == []


def test_refused_deliveries_are_logged_once_with_a_count(make_client, caplog) -> None:  # type: ignore[no-untyped-def]
    # Without --access-log, a PBX misconfigured (wrong token, no myid) showed nothing in the log.
    client = make_client(token="s3cr3t-value")
    caplog.set_level(logging.WARNING, logger="receiver")
    for _ in range(50):
        assert client.get(f"/webhook?myid=175&{HANGUP}").status_code == 403
    assert client.get(f"/webhook?{HANGUP}").status_code == 400
    refused = [r for r in caplog.records if r.name == "receiver" and "refused" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in refused] == [
        ("WARNING", "refused a delivery from testclient with 403: token is missing or wrong for "
         "myid 175: add token=<secret> to the URL registered with the PBX"),
        ("WARNING", "refused a delivery from testclient with 400: myid is missing from the query "
         "string: register the URL as https://host/webhook?myid=<extension id>"),
    ]  # fmt: skip
    client.__exit__(None, None, None)  # at shutdown, what was counted is logged
    last = [r.getMessage() for r in caplog.records if r.name == "receiver"][-1]
    assert last.endswith("(and 48 more like it in the last 10 s, not logged)")
    assert "s3cr3t-value" not in caplog.text
