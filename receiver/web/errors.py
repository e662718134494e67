"""The one error shape of the whole HTTP API: {"ok": false, "error": "...", "status": N}."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error shape of the whole HTTP API."""
    body = {"ok": False, "error": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)
