"""The PBX API client against the emulator, and the whole chain: PBX -> receiver -> calls."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.pbx.client import PbxClient, PbxError, plan, webhook_url
from tests.conftest import wait_for_calls

URL = "http://127.0.0.1:9/webhook?myid=80000"


def client(pbx, **kwargs) -> PbxClient:  # type: ignore[no-untyped-def]
    kwargs.setdefault("pause", 0.01)
    return PbxClient(
        pbx.url,
        kwargs.pop("client_id", "demo"),
        kwargs.pop("client_secret", "demo-secret"),
        **kwargs,
    )


def fail_next(pbx, status: int, count: int) -> None:  # type: ignore[no-untyped-def]
    httpx.post(f"{pbx.url}/emulator/faults", json={"status": status, "count": count})


def test_add_list_remove(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    with client(pbx) as api:
        made = api.subscribe(80000, URL, "GET", "hangup")
        assert made == {"id": 1, "url": URL, "method": "GET", "event_type": "hangup"}
        assert api.subscriptions(80000) == [made]
        api.unsubscribe(80000, made["id"])
        assert api.subscriptions(80000) == []


def test_plan_never_duplicates_and_never_touches_other_urls() -> None:
    other = {"id": 9, "url": "https://crm.example/hook", "method": "GET", "event_type": "hangup"}
    ours = {"id": 1, "url": URL, "method": "GET", "event_type": "hangup"}
    twice = {"id": 2, "url": URL, "method": "GET", "event_type": "hangup"}
    post = {"id": 3, "url": URL, "method": "POST", "event_type": "answer"}
    existing = [other, ours, twice, post]
    add = plan(existing, URL, "GET", ["hangup", "answer"], exact=False)
    assert (add.create, add.delete) == (["answer"], [])
    sync = plan(existing, URL, "GET", ["hangup", "answer"], exact=True)
    assert (sync.create, sync.delete, sync.keep) == (["answer"], [twice, post], [ours])


def test_subscribe_commands_are_idempotent_in_real_processes(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    env = {
        **os.environ,
        "RECEIVER_PBX_API_URL": pbx.url,
        "RECEIVER_PBX_CLIENT_ID": "demo",
        "RECEIVER_PBX_CLIENT_SECRET": "demo-secret",
    }

    def receiver(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for _ in range(2):
        assert receiver("subscribe", "add", "--extension", "80000", "--url", URL).returncode == 0
    listed = json.loads(
        receiver("subscribe", "list", "--extension", "80000", "--format", "json").stdout
    )
    assert sorted(s["event_type"] for s in listed) == ["answer", "dial-in", "dial-out", "hangup"]
    # another integration's subscription on the same extension
    with client(pbx) as api:
        api.subscribe(80000, "https://crm.example/hook", "POST", "hangup")
    synced = receiver("subscribe", "sync", "--extension", "80000", "--url", URL, "--ivr")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.count("removed") == 3  # dial-in, dial-out, answer
    removed = receiver("subscribe", "remove", "--extension", "80000", "--url", URL)
    assert removed.stdout.count("removed") == 1
    left = json.loads(
        receiver("subscribe", "list", "--extension", "80000", "--format", "json").stdout
    )
    assert [s["url"] for s in left] == ["https://crm.example/hook"]
    missing = receiver("subscribe", "remove", "--extension", "80000", "--id", "999")
    assert (missing.returncode, "has no subscription 999" in missing.stderr) == (1, True)


def test_token_is_cached_and_renewed_when_it_expires(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator("--token-ttl", "1")
    with client(pbx) as api:
        api.subscriptions(80000)
        api.subscriptions(80000)
        assert api.tokens_fetched == 1
        time.sleep(1.2)
        api.subscriptions(80000)
        assert api.tokens_fetched == 2


@pytest.mark.parametrize(
    ("action", "words"),
    [
        (lambda api: api.subscriptions(12345), "does not know the subscriptions of extension"),
        (lambda api: api.subscribe(80000, "ftp://x", "GET", "hangup"), "refused a hangup"),
        (lambda api: api.subscribe(80000, URL, "PUT", "hangup"), "method: must be GET or POST"),
        (lambda api: api.unsubscribe(80000, 77), "does not know subscription 77"),
    ],
)
def test_errors_say_what_went_wrong(emulator, action, words: str) -> None:  # type: ignore[no-untyped-def]
    with client(emulator()) as api, pytest.raises(PbxError, match=words):
        action(api)


def test_bad_credentials(emulator) -> None:  # type: ignore[no-untyped-def]
    with (
        client(emulator(), client_secret="wrong") as api,
        pytest.raises(PbxError, match="did not accept the credentials"),
    ):
        api.subscriptions(80000)


def test_subscription_limit_is_a_403(emulator) -> None:  # type: ignore[no-untyped-def]
    with client(emulator("--subscription-limit", "1")) as api:
        api.subscribe(80000, URL, "GET", "hangup")
        with pytest.raises(PbxError, match=r"forbids .* limit reached"):
            api.subscribe(80000, URL, "GET", "answer")


@pytest.mark.parametrize("status", [429, 503])
def test_transient_failures_are_retried(emulator, status: int) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    with client(pbx, retries=3) as api:
        api.subscriptions(80000)
        fail_next(pbx, status, 2)
        assert api.subscriptions(80000) == []  # third try went through
        fail_next(pbx, status, 5)
        with pytest.raises(PbxError, match=str(status)):
            api.subscriptions(80000)


def test_unreachable_pbx() -> None:
    with (
        PbxClient("http://127.0.0.1:9", "a", "b", retries=1, pause=0.01) as api,
        pytest.raises(PbxError, match="cannot reach the PBX"),
    ):
        api.subscriptions(1)


def test_webhook_url() -> None:
    assert webhook_url("https://h.example/", "175") == "https://h.example/webhook?myid=175"
    assert webhook_url("https://h", "1", "a&b") == "https://h/webhook?myid=1&token=a%26b"


def test_whole_chain_agrees_with_the_ground_truth(emulator, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator("--offices", "2", "--seed", "5")
    receiver_process = server("--token", "t0ken")
    env = {
        **os.environ,
        "RECEIVER_PBX_API_URL": pbx.url,
        "RECEIVER_PBX_CLIENT_ID": "demo",
        "RECEIVER_PBX_CLIENT_SECRET": "demo-secret",
    }
    extensions = httpx.get(f"{pbx.url}/emulator/state").json()["extensions"]
    for n, extension in enumerate(extensions):
        url = webhook_url(receiver_process.url, str(extension["id"]), "t0ken")
        preset = {"ivr": ["--ivr"], "queue": ["--queue"]}.get(extension["kind"], [])
        method = "POST" if n % 2 else "GET"  # both ways of delivery
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "receiver",
                "subscribe",
                "add",
                "--extension",
                str(extension["id"]),
                "--url",
                url,
                "--method",
                method,
                *preset,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    truth_file = tmp_path / "truth.jsonl"
    simulated = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbx_emulator",
            "simulate",
            "--pbx",
            pbx.url,
            "--calls",
            "300",
            "--rate",
            "5",
            "--speed",
            "0",
            "--seed",
            "5",
            "--truth",
            str(truth_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert simulated.returncode == 0, simulated.stderr
    deliveries = int(simulated.stdout.split(" deliveries")[0].split()[-1])
    truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
    assert len(truth) == 300
    with httpx.Client(base_url=receiver_process.url, timeout=60) as api:
        stored = api.get("/api/events", params={"format": "ndjson"}).text.splitlines()
        assert len(stored) == deliveries  # every delivered event, once
        wait_for_calls(api.get)  # built in the background: reads do not build them
        calls = {
            c["call_id"]: c
            for c in map(
                json.loads, api.get("/api/calls", params={"format": "ndjson"}).text.splitlines()
            )
        }
    compared = ("direction", "status", "answered_by", "talk_seconds")
    wrong = [
        (
            expected["kind"],
            {k: expected[k] for k in compared},
            {k: calls.get(expected["call_id"], {}).get(k) for k in compared},
        )
        for expected in truth
        if {k: calls.get(expected["call_id"], {}).get(k) for k in compared}
        != {k: expected[k] for k in compared}
    ]
    assert wrong == []
    assert len(calls) == 300


def test_subscribe_list_prints_a_header_over_its_table(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    with client(pbx) as api:
        api.subscribe(80000, URL, "POST", "hangup")
    env = {
        "RECEIVER_PBX_API_URL": pbx.url,
        "RECEIVER_PBX_CLIENT_ID": "demo",
        "RECEIVER_PBX_CLIENT_SECRET": "demo-secret",
    }
    result = CliRunner().invoke(main, ["subscribe", "list", "--extension", "80000"], env=env)
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["extension", "id", "event_type", "method", "url"]
    assert row.split() == ["80000", "1", "hangup", "POST", URL]
    assert header.index("url") == row.index(URL)  # the columns line up


def test_pbx_serve_prints_its_url(emulator) -> None:  # type: ignore[no-untyped-def]
    pbx = emulator()
    printed = pbx.log.read_text()
    assert f"PBX API on {pbx.url} (client demo, secret demo-secret)" in printed


def test_pbx_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pbx_emulator", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: port {port} on 127.0.0.1 is already in use (another receiver?): stop it, "
        "or choose another port with --port"
    )
