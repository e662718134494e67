"""The forwarding destination of bench/forward.py: takes every POST with a 200 and notes when
each message came (its webhook-id, type and the event's CallID); GET /stats gives the notes.

Run as `python bench/sink.py PORT`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

received: list[tuple[float, str, str, str | None]] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        answer = json.dumps(received).encode()
    else:
        at = time.time()
        headers = dict(scope["headers"])
        found = json.loads(body)
        data = found.get("data", {})
        received.append((at, headers.get(b"webhook-id", b"").decode(), found["type"],
                         data.get("call_id")))  # fmt: skip
        answer = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)  # fmt: skip
