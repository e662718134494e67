"""A client of the PBX's REST API (pbx-events §5): tokens, subscriptions, callbacks.

Also the pure planning of `receiver subscribe add/sync`: which subscriptions to create and which
to delete, never touching subscriptions for other URLs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import quote

import httpx2 as httpx

from receiver.retry import pauses, transient

DEFAULT_API_URL = "https://apiproxy.telphin.ru/api/ver1.0"
CALL_EVENTS = ("dial-in", "dial-out", "answer", "hangup")


class PbxError(Exception):
    """A request the PBX refused or that could not be made; the message says what to do."""


def explain(status: int, detail: str, what: str) -> str:
    """A precise message for an answer of the PBX."""
    reasons = {
        400: f"the PBX refused {what}: {detail}",
        401: "the PBX did not accept the credentials: check --client-id and --client-secret "
        f"({detail})",
        403: f"the PBX forbids {what}: {detail} (the application may lack the right, or the "
        "client's subscription limit is reached)",
        404: f"the PBX does not know {what}: {detail} (check the extension id)",
        409: f"the PBX reports a conflict for {what}: {detail}",
        429: f"the PBX is rate-limiting {what}: {detail}; try again later",
    }
    return reasons.get(status, f"the PBX failed {what} with HTTP {status}: {detail}")


class PbxClient:
    """OAuth2 client credentials with a cached token; retries what can pass on a second try."""

    def __init__(
        self,
        api_url: str,
        client_id: str,
        client_secret: str,
        *,
        retries: int = 3,
        timeout: float = 30.0,
        pause: float = 0.5,
    ) -> None:
        if not client_id or not client_secret:
            raise PbxError(
                "the PBX needs credentials: pass --client-id and --client-secret "
                "(or set RECEIVER_PBX_CLIENT_ID and RECEIVER_PBX_CLIENT_SECRET)"
            )
        self.api_url = api_url.rstrip("/")
        self.client_id, self.client_secret = client_id, client_secret
        self.retries, self.pause = retries, pause
        self.http = httpx.Client(timeout=timeout)
        self._token: str | None = None
        self._token_until = 0.0
        self.tokens_fetched = 0

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PbxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, tried again after network errors, 429 and 5xx (pausing longer each time)."""
        url = f"{self.api_url}{path}"
        for attempt, pause in enumerate(pauses(self.retries, self.pause, 10)):
            time.sleep(pause)
            last = attempt == self.retries
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as error:
                if last:
                    raise PbxError(f"cannot reach the PBX at {self.api_url}: {error}") from None
                continue
            if not transient(response.status_code) or last:
                return response
        raise AssertionError("unreachable")

    def token(self) -> str:
        """A valid access token, fetched again shortly before it expires."""
        if self._token is None or time.monotonic() >= self._token_until:
            response = self.send(
                "POST",
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                },
            )
            if response.status_code != 200:
                raise PbxError(explain(response.status_code, detail(response), "the token request"))
            body = response.json()
            lifetime = float(body.get("expires_in", 3600))
            self._token = str(body["access_token"])
            self._token_until = time.monotonic() + max(lifetime - min(60, lifetime / 2), 0)
            self.tokens_fetched += 1
        return self._token

    def call(self, method: str, path: str, what: str, body: Any = None) -> Any:
        """An authorised API call; a 401 fetches a new token and tries once more."""
        for renewed in (False, True):
            headers = {"Authorization": f"Bearer {self.token()}"}
            response = self.send(method, path, json=body, headers=headers)
            if response.status_code == 401 and not renewed:
                self._token = None  # expired or revoked early
                continue
            if response.status_code >= 400:
                raise PbxError(explain(response.status_code, detail(response), what))
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def subscriptions(self, extension: int) -> list[dict[str, Any]]:
        return list(
            self.call(
                "GET",
                f"/extension/{extension}/event/",
                f"the subscriptions of extension {extension}",
            )
        )

    def subscribe(self, extension: int, url: str, method: str, event_type: str) -> dict[str, Any]:
        body = {"url": url, "method": method, "event_type": event_type}
        what = f"a {event_type} subscription for extension {extension}"
        return dict(self.call("POST", f"/extension/{extension}/event/", what, body))

    def unsubscribe(self, extension: int, subscription_id: int) -> None:
        self.call(
            "DELETE",
            f"/extension/{extension}/event/{subscription_id}",
            f"subscription {subscription_id} of extension {extension}",
        )


def detail(response: httpx.Response) -> str:
    """The PBX's own `{"message": ...}`, or the start of the body."""
    try:
        return str(response.json().get("message", response.text[:200]))
    except (ValueError, AttributeError):
        return response.text[:200] or response.reason_phrase


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to change so that the extension has exactly the wanted subscriptions for one URL."""

    create: list[str]  # event types
    delete: list[dict[str, Any]]  # subscriptions
    keep: list[dict[str, Any]]


def plan(
    existing: list[dict[str, Any]], url: str, method: str, events: list[str], *, exact: bool
) -> Plan:
    """Subscriptions for `url` only ever: others' are never deleted.

    exact=False (add): create what is missing. exact=True (sync): also delete ours that are not
    wanted (another method, another event type, or a second copy of one).
    """
    ours = [s for s in existing if s.get("url") == url]
    keep, delete, covered = [], [], set()
    for subscription in ours:
        wanted = subscription.get("method") == method and subscription.get("event_type") in events
        if wanted and subscription["event_type"] not in covered:
            keep.append(subscription)
            covered.add(subscription["event_type"])
        elif exact:
            delete.append(subscription)
    create = [event for event in dict.fromkeys(events) if event not in covered]
    return Plan(create, delete, keep)


def webhook_url(base: str, myid: str, token: str | None = None) -> str:
    """The exact URL to register with the PBX for one myid."""
    url = f"{base.rstrip('/')}/webhook?myid={quote(myid, safe='')}"
    return f"{url}&token={quote(token, safe='')}" if token else url
