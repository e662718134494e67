"""Logging set-up, with the webhook secret masked wherever a URL is logged."""

from __future__ import annotations

import logging
import re

TOKEN_IN_URL = re.compile(r"(?i)([?&]token=)[^&\s]*")


class MaskTokens(logging.Filter):
    """Replace the value of any token= parameter in a log record with ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_URL.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def configure_logging(level: str) -> None:
    """Log lines to stderr, with time, level and logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
