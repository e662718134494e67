"""The web pages in a real browser (Debian's Chromium driven by Playwright) against a real
`receiver serve`, with real deliveries sent to it while the pages are open."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from receiver.event import parse_time
from tests.conftest import BACKENDS, ServerProcess, both_backends, scenario, wait_for_calls

# The pages on SQLite and on PostgreSQL (those of a server process on the SQLite file: SQLite).
backend = pytest.fixture(params=BACKENDS)(both_backends)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, once for the module; without it the tests skip and say why (not in CI)."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed: pip install -e '.[test]'"
    if missing is None and not shutil.which(CHROMIUM):
        missing = f"no {CHROMIUM}: apt-get install chromium"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def deliver(server: ServerProcess, myid: str, lines: list[str]) -> None:
    with httpx.Client(base_url=server.url) as client:
        for line in lines:
            answer = client.get(f"/webhook?myid={myid}&{line}")
            assert answer.status_code == 200, answer.text


def call_id(lines: list[str]) -> str:
    return lines[0].split("&CallID=")[1].split("&")[0]


def built(server: ServerProcess) -> None:
    wait_for_calls(lambda path: httpx.get(f"{server.url}{path}"))


def api_calls(server: ServerProcess, query: str = "") -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = httpx.get(f"{server.url}/api/calls?limit=1000&{query}").json()[
        "calls"
    ]
    return calls


@pytest.mark.slow
def test_a_call_shows_live_on_the_dashboard(server, page) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server()
    page.goto(running.url + "/")
    page.wait_for_selector("#live-state.on")  # the stream is open
    assert page.inner_text("#kpis .answered .n") == "0"
    answered = scenario("inbound-answered")
    deliver(running, "85218", answered[:1])  # it rings
    row = page.locator(f"#in-progress tr[data-call='{call_id(answered)}']")
    row.wait_for(timeout=2000)  # no reload: the page updated itself
    assert "ringing" in row.inner_text()
    assert page.inner_text("#kpis .in_progress .n") == "1"
    deliver(running, "85218", answered[1:])  # answered, then hung up
    row.wait_for(state="detached", timeout=2000)
    page.wait_for_function("document.querySelector('#kpis .answered .n').textContent == '1'",
                           timeout=2000)  # fmt: skip
    missed = scenario("inbound-cancelled")
    deliver(running, "85218", missed)
    page.wait_for_function("document.querySelector('#kpis .missed .n').textContent == '1'",
                           timeout=2000)  # fmt: skip
    [call] = api_calls(running, "status=missed")
    waiting = page.locator("#missed-now tbody tr")
    assert waiting.count() == 1
    assert call["external_number"] in waiting.inner_text()
    # every call shown links to its page
    page.goto(running.url + "/calls")
    for shown in api_calls(running):
        assert page.locator(f"a[href='/calls/{shown['call_id']}']").count() == 1


@pytest.mark.slow
def test_calls_filters_and_paging(server, page) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server()
    start = parse_time("2025-12-01T08:00:00Z")
    hangups = []  # a call's hangup alone is enough to make the call
    for n in range(40):
        hangups += scenario("inbound-answered", at_us=start + n * 60_000_000)[-1:]
        if n % 3 == 0:
            hangups += scenario("inbound-cancelled", at_us=start + n * 60_000_000)[-1:]
    deliver(running, "85218", hangups)
    built(running)
    every = api_calls(running, "order=desc")
    assert len(every) == 54
    page.goto(running.url + "/calls")
    first = page.locator("table.calls tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.call)"
    )
    assert first == [c["call_id"] for c in every[:50]]
    with page.expect_navigation():
        page.click("text=Older »")
    rest = page.locator("table.calls tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.call)"
    )
    assert rest == [c["call_id"] for c in every[50:]]
    assert "after=" in page.url
    with page.expect_navigation():
        page.click("text=« Newest")
    page.select_option("select[name=status]", "missed")
    with page.expect_navigation():  # read the page the click loads, not the one before
        page.click("button:has-text('Filter')")
    missed = page.locator("table.calls tbody tr")
    assert missed.count() == len(api_calls(running, "status=missed")) == 14
    assert all("missed" in text for text in missed.all_inner_texts())
    page.fill("input[name=since]", "2025-12-01T08:30")
    with page.expect_navigation():  # read the page the click loads, not the one before
        page.click("button:has-text('Filter')")
    later = api_calls(running, "status=missed&since=2025-12-01T08:30:00Z")
    assert page.locator("table.calls tbody tr").count() == len(later) == 4
    csv = page.get_attribute("a:has-text('CSV')", "href")
    download = httpx.get(running.url + csv)
    assert download.status_code == 200
    assert len(download.text.strip().splitlines()) == 1 + len(later)  # a header, then the rows


@pytest.mark.slow
def test_a_call_page(server, page) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server()
    queue = scenario("queue-rounds")
    deliver(running, "96858", queue)
    deliver(running, "96858", scenario("queue-rounds"))  # the same caller again
    built(running)
    call = httpx.get(f"{running.url}/api/calls/{call_id(queue)}").json()
    page.goto(f"{running.url}/calls/{call_id(queue)}")
    assert page.locator("svg.timeline g").count() == len(call["legs"])
    assert page.locator("svg.timeline rect.talk").count() == sum(
        leg["answered"] for leg in call["legs"]
    )
    assert page.locator("table.events tbody tr:not(.raw)").count() == len(call["events"])
    page.locator("table.events details").first.click()
    assert "EventType=" in page.locator("table.events details pre").first.inner_text()
    assert call["recordings"]  # the scenario's call was recorded
    for recording in call["recordings"]:
        assert recording in page.inner_text("main")
        link = f"/api/calls/{call['call_id']}/recording?rec_id={recording}"
        assert page.locator(f"a[href='{link}']").count() == 1  # to the recording's redirect
    page.click("text=its other calls")
    others = page.locator("table.calls tbody tr")
    assert others.count() == len(api_calls(running, f"number={call['external_number']}")) == 2


@pytest.mark.slow
def test_the_token_is_asked_once_then_a_cookie_keeps_the_session(server, browser) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server("--api-token", "s3cret-reader", "--access-log",
                                    "--log-level", "info")  # fmt: skip
    context = browser.new_context()
    page = context.new_page()
    page.goto(running.url + "/calls?status=missed")
    assert "/login" in page.url
    page.fill("input[name=token]", "wrong")
    page.click("button:has-text('Sign in')")
    assert "not this server's API token" in page.inner_text("main")
    page.fill("input[name=token]", "s3cret-reader")
    page.click("button:has-text('Sign in')")
    assert page.url == running.url + "/calls?status=missed"  # back where it was going
    [cookie] = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "s3cret-reader" not in cookie["value"]
    page.goto(running.url + "/")
    page.wait_for_selector("#live-state.on")  # the stream takes the cookie
    answered = scenario("inbound-answered")
    deliver(running, "85218", answered[:1])
    page.locator(f"#in-progress tr[data-call='{call_id(answered)}']").wait_for(timeout=2000)
    context.close()
    assert httpx.get(running.url + "/").status_code == 303  # no cookie: to the sign-in
    assert httpx.get(running.url + "/api/calls").status_code == 401
    _, log = running.stop()
    assert "s3cret-reader" not in log
    assert "GET /calls" in log


@pytest.mark.slow
@pytest.mark.parametrize(("zone", "day"), [("UTC", "2025-11-30"), ("Europe/Moscow", "2025-12-01")])
def test_the_timezone_decides_what_a_day_holds(server, page, zone: str, day: str) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server("--timezone", zone)
    deliver(running, "85218", scenario("inbound-answered", at_us=parse_time("2025-11-30T22:30Z")))
    built(running)
    page.goto(running.url + "/extensions?since=2025-11-29T00:00&until=2025-12-03T00:00")
    rows = page.locator("table tbody tr").all_inner_texts()
    assert len(rows) == 1
    assert day in rows[0]
    page.goto(running.url + "/calls")
    assert ("01:30:00" if zone != "UTC" else "22:30:00") in page.inner_text("table.calls")


@pytest.mark.slow
def test_numbers_can_be_masked(server, page) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server("--mask-numbers")
    lines = scenario("inbound-answered")
    deliver(running, "85218", lines)
    built(running)
    for path in ["/calls", f"/calls/{call_id(lines)}", "/events"]:
        page.goto(running.url + path)
        html = page.content()
        assert "+7495•••••67" in html
        assert "74951234567" not in html and "4951234567" not in html, path


def test_every_page_answers_html(client) -> None:  # type: ignore[no-untyped-def]
    deliver_lines = scenario("inbound-answered")
    for line in deliver_lines:
        client.get(f"/webhook?myid=85218&{line}")
    wait_for_calls(client.get)
    pages = ["/", "/calls", f"/calls/{call_id(deliver_lines)}", "/missed", "/extensions", "/events",
             "/rejects", "/docs", "/static/style.css", "/static/live.js"]  # fmt: skip
    for path in pages:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
    assert client.get("/").headers["content-type"].startswith("text/html")
    missing = client.get("/calls/no-such-call")
    assert missing.status_code == 404
    assert "No call no-such-call" in missing.text
    bad = client.get("/calls?since=yesterday&status=lost")
    assert bad.status_code == 200
    assert "since: &#39;yesterday&#39; is not a time" in bad.text
    assert "status must be one of" in bad.text
    assert client.get("/calls?after=nonsense").status_code == 200  # a stale page link


def test_the_dashboard_of_another_day(client) -> None:  # type: ignore[no-untyped-def]
    for line in scenario("inbound-cancelled", at_us=parse_time("2025-12-01T09:15:00Z")):
        client.get(f"/webhook?myid=85218&{line}")
    wait_for_calls(client.get)
    page = client.get("/?day=2025-12-01").text
    assert "Monday 01 December 2025" in page
    assert '<span class="n">1</span><span class="l">missed</span>' in page
    assert "+74957654321" in page  # still waiting for a call back
    today = client.get("/").text
    assert '<span class="n">0</span><span class="l">missed</span>' in today
    assert "is not a date" in client.get("/?day=someday").text


def test_the_session_cookie_opens_the_api_too(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_token="reader")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=%2F"
    refused = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert refused.status_code == 401
    signed = client.post("/login", data={"token": "reader", "next": "//evil.example/"},
                         follow_redirects=False)  # fmt: skip
    assert signed.status_code == 303
    assert signed.headers["location"] == "/"  # only a path of this server
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "reader" not in cookie
    assert client.get("/api/calls").status_code == 200  # the client keeps the cookie
    assert client.get("/").status_code == 200
    client.post("/logout")
    assert client.get("/api/calls").status_code == 401
    huge = client.post("/login", data={"token": "x" * 10_000}, follow_redirects=False)
    assert huge.status_code == 413
