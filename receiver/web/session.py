"""The pages' sign-in: with --api-token, the token is asked for once, then a cookie keeps the
session. The cookie holds a value made from the token (an HMAC), never the token itself."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "receiver_session"
SESSION_SECONDS = 30 * 86400
OPEN_PATHS = ("/login",)  # what a browser needs before it has signed in (assets are open)
SIGN_IN_TRIES = 5  # wrong tokens a client may give within SIGN_IN_WINDOW seconds
SIGN_IN_WINDOW = 300.0
SIGN_IN_CLIENTS = 10_000  # clients remembered at most (the oldest forgotten first)

log = logging.getLogger("receiver")


def session_value(api_token: str) -> str:
    """The cookie's value for a server with this token: changing the token ends every session."""
    return hmac.new(api_token.encode(), b"receiver pages session", hashlib.sha256).hexdigest()


def has_session(headers: list[tuple[bytes, bytes]], api_token: str) -> bool:
    """Whether a request's Cookie header holds this server's session."""
    for name, value in headers:
        if name == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                return False
            morsel = cookie.get(COOKIE)
            if morsel is not None:
                return hmac.compare_digest(morsel.value, session_value(api_token))
    return False


class SignInLimit:
    """Wrong tokens per client: after `tries` within `window` seconds, that client's sign-ins
    are refused (429) until the oldest of them is `window` old, so a token cannot be guessed
    at the speed of the server. A right token clears the client's count."""

    def __init__(
        self,
        tries: int = SIGN_IN_TRIES,
        window: float = SIGN_IN_WINDOW,
        clients: int = SIGN_IN_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tries = tries
        self.window = window
        self.clients = clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int:
        """Seconds before `client` may try again (0: now)."""
        failures = self._failures.get(client)
        if failures is None:
            return 0
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0
        if len(failures) < self.tries:
            return 0
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, client: str) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=self.tries)
        failures.append(self.clock())
        self._failures[client] = failures  # the most recent last
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)
        if len(failures) == self.tries:
            log.warning(
                "sign-in: %d wrong tokens from %s within %d s: its sign-ins are refused for %d s",
                self.tries,
                client,
                self.window,
                self.retry_after(client),
            )

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this server only (never `//elsewhere`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class PageSession:
    """ASGI middleware for the pages: without the session cookie, to /login (with --api-token)."""

    def __init__(self, app: ASGIApp, api_token: str | None) -> None:
        self.app = app
        self.api_token = api_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.api_token is None
            or scope["type"] != "http"
            or scope["path"].startswith(OPEN_PATHS)
            or has_session(scope["headers"], self.api_token)
        ):
            await self.app(scope, receive, send)
            return
        target = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        await response(scope, receive, send)


def signed_in(request: Request, api_token: str, target: str) -> Response:
    """Go on to `target` with the session cookie set."""
    response = RedirectResponse(safe_next(target), status_code=303)
    response.set_cookie(
        COOKIE,
        session_value(api_token),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def signed_out() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response
