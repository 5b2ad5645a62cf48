"""Structured logs: one `event=... key=value` line per event on stderr; secrets never reach a line."""

from __future__ import annotations

import logging
import re
import sys

_SECRET = re.compile(
    r"(hf_[A-Za-z0-9]{6,}|(?<=Bearer )[^\s\"']+|(?<=/announce/)[^\s\"'?]+|(?<=/scrape/)[^\s\"'?]+)"
)


def redact(text: str) -> str:
    return _SECRET.sub("<redacted>", text)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; URLs may carry passkeys and add nothing for an operator.
    for name in ("httpx", "httpx2"):  # huggingface_hub 2.x logs through httpx2
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
