"""The pages' sign-in: the session cookie, and the limit on wrong tokens per client."""

from __future__ import annotations

import logging

import pytest

from receiver.web.session import SIGN_IN_TRIES, SignInLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_tokens_are_refused_for_a_while_then_allowed_again() -> None:
    clock = Clock()
    limit = SignInLimit(tries=3, window=60, clock=clock)
    for _ in range(2):
        limit.failed("10.0.0.1")
        clock.now += 1
    assert limit.retry_after("10.0.0.1") == 0  # two wrong: may try again
    limit.failed("10.0.0.1")
    assert limit.retry_after("10.0.0.1") == 58  # the first wrong one is 2 s old
    assert limit.retry_after("10.0.0.2") == 0  # another client is not held up
    clock.now += 58
    assert limit.retry_after("10.0.0.1") == 0  # the oldest has left the window
    limit.failed("10.0.0.1")
    assert limit.retry_after("10.0.0.1") == 1
    limit.succeeded("10.0.0.1")
    assert limit.retry_after("10.0.0.1") == 0


def test_it_remembers_a_bounded_number_of_clients() -> None:
    limit = SignInLimit(tries=1, window=60, clients=2, clock=Clock())
    for client in ("a", "b", "c"):
        limit.failed(client)
    assert [limit.retry_after(c) for c in ("a", "b", "c")] == [0, 60, 60]  # "a" forgotten


def test_a_client_guessing_tokens_gets_429_with_retry_after(make_client, caplog) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_token="reader")
    with caplog.at_level(logging.WARNING, logger="receiver"):
        for _ in range(SIGN_IN_TRIES):
            wrong = client.post("/login", data={"token": "guess"}, follow_redirects=False)
            assert wrong.status_code == 401
        refused = client.post("/login", data={"token": "guess"}, follow_redirects=False)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    assert "Too many wrong tokens from this address" in refused.text
    warned = [r.getMessage() for r in caplog.records if "sign-in" in r.getMessage()]
    assert warned == [
        f"sign-in: {SIGN_IN_TRIES} wrong tokens from testclient within 300 s: its sign-ins are "
        f"refused for {refused.headers['retry-after']} s"
    ]
    # While refused, even the right token waits: guessing must not go on at any speed.
    right = client.post("/login", data={"token": "reader"}, follow_redirects=False)
    assert right.status_code == 429
    assert client.get("/login").status_code == 200  # the form itself is still shown


@pytest.mark.parametrize("tries", [1, SIGN_IN_TRIES - 1])
def test_a_right_token_clears_the_count(make_client, tries: int) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_token="reader")
    for _ in range(tries):
        client.post("/login", data={"token": "guess"}, follow_redirects=False)
    signed = client.post("/login", data={"token": "reader"}, follow_redirects=False)
    assert signed.status_code == 303
    client.post("/logout")
    for _ in range(SIGN_IN_TRIES - 1):
        client.post("/login", data={"token": "guess"}, follow_redirects=False)
    again = client.post("/login", data={"token": "reader"}, follow_redirects=False)
    assert again.status_code == 303
