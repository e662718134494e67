"""A client of the PBX's REST API (pbx-events §5-6): tokens, subscriptions, callbacks, the call
history and the recordings.

Also the pure planning of `receiver subscribe add/sync`: which subscriptions to create and which
to delete, never touching subscriptions for other URLs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx2 as httpx

from receiver.history import format_history_time
from receiver.retry import pauses, transient
from receiver.settings import PBX_API_URL

DEFAULT_API_URL = PBX_API_URL
CALL_EVENTS = ("dial-in", "dial-out", "answer", "hangup")
OWN_CLIENT = "@me"  # the API application's own client, in the PBX's paths
HISTORY_PAGE = 100  # records asked for a page
# A history request is refused (429) while another one runs, ours or another program's: it
# waits its turn this many times, the pauses doubling up to HISTORY_PAUSE_MOST seconds.
HISTORY_RETRIES = 10
HISTORY_PAUSE_MOST = 30.0


class PbxError(Exception):
    """A request the PBX refused or that could not be made; the message says what to do.

    `status` is the PBX's HTTP status, None when it did not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def explain(status: int, detail: str, what: str, check: str = "the extension id") -> str:
    """A precise message for an answer of the PBX; `check` is what a 404 should make one check."""
    reasons = {
        400: f"the PBX refused {what}: {detail}",
        401: "the PBX did not accept the credentials: check --client-id and --client-secret "
        f"({detail})",
        403: f"the PBX forbids {what}: {detail} (the application may lack the right, or the "
        "client's subscription limit is reached)",
        404: f"the PBX does not know {what}: {detail} (check {check})",
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

    def send(
        self,
        method: str,
        path: str,
        *,
        retries: int | None = None,
        most: float = 10,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, tried again after network errors, 429 and 5xx (pausing longer each time,
        up to `most` seconds; `retries` times, else the client's number)."""
        url = f"{self.api_url}{path}"
        retries = self.retries if retries is None else retries
        for attempt, pause in enumerate(pauses(retries, self.pause, most)):
            time.sleep(pause)
            last = attempt == retries
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
                raise PbxError(
                    explain(response.status_code, detail(response), "the token request"),
                    response.status_code,
                )
            body = response.json()
            lifetime = float(body.get("expires_in", 3600))
            self._token = str(body["access_token"])
            self._token_until = time.monotonic() + max(lifetime - min(60, lifetime / 2), 0)
            self.tokens_fetched += 1
        return self._token

    def authorised(
        self, method: str, path: str, what: str, check: str = "the extension id", **kwargs: Any
    ) -> httpx.Response:
        """An authorised request, answered 2xx; a 401 fetches a new token and tries once more.
        Raises PbxError saying what the PBX answered otherwise."""
        for renewed in (False, True):
            headers = {"Authorization": f"Bearer {self.token()}"}
            response = self.send(method, path, headers=headers, **kwargs)
            if response.status_code == 401 and not renewed:
                self._token = None  # expired or revoked early
                continue
            if response.status_code >= 400:
                raise PbxError(
                    explain(response.status_code, detail(response), what, check),
                    response.status_code,
                )
            return response
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, what: str, body: Any = None) -> Any:
        """An authorised API call with a JSON body and answer."""
        response = self.authorised(method, path, what, json=body)
        return response.json() if response.content else None

    def call_history(
        self,
        since_us: int,
        until_us: int,
        *,
        per_page: int = HISTORY_PAGE,
        client: str = OWN_CLIENT,
    ) -> Iterator[list[dict[str, Any]]]:
        """The call history of calls started from `since_us` up to `until_us` (to the second),
        oldest first, a page at a time. Waits its turn when another history request runs (429).
        """
        page = 1
        while True:
            params = {
                "start_datetime": format_history_time(since_us),
                "end_datetime": format_history_time(until_us),
                "page": page,
                "per_page": per_page,
                "order": "asc",
            }
            response = self.authorised(
                "GET",
                f"/client/{quote(client, safe='@')}/call_history/",
                f"the call history (page {page})",
                "the client id",
                params=params,
                retries=HISTORY_RETRIES,
                most=HISTORY_PAUSE_MOST,
            )
            try:
                records = response.json()["call_history"]
            except (ValueError, KeyError, TypeError):
                raise PbxError(
                    f"the PBX's call history (page {page}) is not a history page: "
                    f"{response.text[:200]!r}"
                ) from None
            if not isinstance(records, list):
                raise PbxError(f"the PBX's call history (page {page}): call_history is no list")
            yield records
            if len(records) < per_page:
                return
            page += 1

    def recording_url(self, record_uuid: str, client: str = OWN_CLIENT) -> str:
        """Where a recording's mp3 can be fetched (without a token) for a while."""
        body = self.call(
            "GET",
            f"/client/{quote(client, safe='@')}/record/{quote(record_uuid, safe='')}/storage_url/",
            f"recording {record_uuid}",
        )
        url = body.get("record_url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PbxError(f"the PBX gave no storage URL for recording {record_uuid}: {body!r}")
        return url

    def recording(self, record_uuid: str, client: str = OWN_CLIENT) -> bytes:
        """A recording's mp3."""
        response = self.authorised(
            "GET",
            f"/client/{quote(client, safe='@')}/record/{quote(record_uuid, safe='')}",
            f"recording {record_uuid}",
            "the recording's id",
        )
        return response.content

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
