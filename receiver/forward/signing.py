"""Signatures as the Standard Webhooks specification defines them (standardwebhooks.com).

A message carries `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
`webhook-signature: v1,<base64 of HMAC-SHA256 over "id.timestamp.body">`; the secret is
`whsec_` and the base64 of its bytes, so that any of the specification's libraries verifies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_key(secret: str, where: str = "--forward-secret") -> bytes:
    """The key of a `whsec_<base64>` secret. Raises ValueError saying what to fix."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            f"{where} is not a Standard Webhooks secret: give whsec_ and the base64 of 24 to 64 "
            'random bytes (make one with: python3 -c "import base64, os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
        )
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{where}: what follows whsec_ is not base64: give whsec_ and the base64 of 24 to "
            "64 random bytes"
        ) from None
    if not 24 <= len(key) <= 64:
        raise ValueError(
            f"{where}: the secret is {len(key)} bytes: give whsec_ and the base64 of 24 to 64 "
            "random bytes"
        )
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes | None, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The specification's headers of one attempt (no signature without a key)."""
    out = {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        out["webhook-signature"] = signature(key, message_id, timestamp, body)
    return out
