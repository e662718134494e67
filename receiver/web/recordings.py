"""GET /api/calls/{call_id}/recording: a redirect to the recording, where the PBX stores it.

The PBX gives each recording a storage URL that needs no token and stays valid a while
(pbx-events §6). It is asked for once and kept until it expires: until the `expires` its URL
carries (Unix time), when it has one, else for URL_KEPT seconds.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.event import now_us
from receiver.pbx.client import PbxClient, PbxError
from receiver.settings import Settings
from receiver.store import Storage
from receiver.web.api import known_params

URL_KEPT = 300.0  # seconds a storage URL without an expiry of its own is used
MARGIN = 30.0  # seconds before its expiry that a URL is asked for again


class RecordingLinks:
    """The PBX client of a running server, and the storage URLs it was given."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: PbxClient | None = None
        self.urls: dict[str, tuple[str, float]] = {}  # record_uuid -> (url, good until, Unix)

    def pbx(self) -> PbxClient:
        if self.client is None:
            settings = self.settings
            if not (settings.pbx_client_id and settings.pbx_client_secret):
                raise HTTPException(  # not a fault: this receiver was not given the way to them
                    404,
                    "recordings come from the PBX's API, and this receiver has no credentials "
                    "for it: start it with "
                    "--pbx-client-id and --pbx-client-secret (or RECEIVER_PBX_CLIENT_ID and "
                    "RECEIVER_PBX_CLIENT_SECRET)",
                )
            self.client = PbxClient(
                settings.pbx_api_url,
                settings.pbx_client_id,
                settings.pbx_client_secret,
                retries=1,
                timeout=10,
            )
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    async def url(self, record_uuid: str) -> str:
        """The recording's storage URL, from the ones kept while it is good."""
        kept = self.urls.get(record_uuid)
        if kept is not None and kept[1] > time.time():
            return kept[0]
        pbx = self.pbx()
        try:
            url = await asyncio.to_thread(pbx.recording_url, record_uuid)
        except PbxError as problem:
            if problem.status == 404:
                raise HTTPException(404, f"the PBX has no recording {record_uuid}") from None
            raise HTTPException(502, f"the PBX did not give the recording: {problem}") from None
        expires = parse_qs(urlsplit(url).query).get("expires", [""])[0]
        until = float(expires) - MARGIN if expires.isdigit() else time.time() + URL_KEPT
        self.urls[record_uuid] = (url, until)
        return url


async def call_recording(request: Request) -> Response:
    """GET /api/calls/{call_id}/recording[?rec_id=]: 307 to the recording's storage URL."""
    store: Storage = request.app.state.store
    links: RecordingLinks = request.app.state.recording_links
    known_params(request, "/api/calls/{call_id}/recording")
    call_id = request.path_params["call_id"]
    call = await store.get_call(call_id, now_us=now_us())
    if call is None:
        raise HTTPException(404, f"no call with call_id {call_id}")
    wanted = request.query_params.get("rec_id")
    if wanted is not None and wanted not in call.recordings:
        raise HTTPException(404, f"call {call_id} has no recording {wanted}")
    if not call.recordings:
        raise HTTPException(404, f"call {call_id} has no recording")
    url = await links.url(wanted or call.recordings[0])
    return RedirectResponse(url, status_code=307)
