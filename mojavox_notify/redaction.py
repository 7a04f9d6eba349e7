"""Credentials out of text that is logged or echoed, in time linear in the text.

Log lines and error messages carry what clients sent (paths, keys, query values), so whatever
they hold must cost one pass: a pattern that backtracks over a long run of token-like characters
would stall the event loop for seconds on a single request.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
CREDENTIALS = (
    # ?token=…, &access_token=… (a URL in an access line, a request repr, an error message)
    (re.compile(r"([?&;](?:access_)?token=)[^&;\s\"'#]*", re.IGNORECASE), r"\1" + REDACTED),
    # Authorization: Bearer …, 'Authorization': '…', authorization=…
    (re.compile(r"(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"',;}]+",
                re.IGNORECASE), r"\1" + REDACTED),
)
# A maximal run of the characters a JWT is written in (base64url and the dots between its parts).
# Matched runs never overlap, so finding them all is one pass over the text.
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]+")
JWT_START = "eyJ"  # base64url of '{"': a JWT's header, and its claims, are JSON objects


def redact(text: str) -> str:
    """`text` without credentials: token and access_token query values, Authorization values,
    and every run of base64url characters and dots that holds a JWT's shape, replaced whole."""
    for pattern, replacement in CREDENTIALS:
        text = pattern.sub(replacement, text)
    if JWT_START not in text:
        return text
    return TOKEN_CHARACTERS.sub(_redact_run, text)


def _redact_run(run: re.Match) -> str:
    text = run.group()
    return REDACTED if _holds_a_jwt(text) else text


def _holds_a_jwt(run: str) -> bool:
    """Whether `run` (no character but base64url and dots) contains `eyJ…` `.` one or more
    characters `.`: a header, its claims and the dot before a (possibly empty) signature. The
    part holding `eyJ` reaches its next dot, so it is enough to look at consecutive parts."""
    if run.count(".") < 2:
        return False
    parts = run.split(".")
    return any(JWT_START in parts[index] and parts[index + 1]
               for index in range(len(parts) - 2))


def shorten(text: str, limit: int) -> str:
    """`text` redacted, then cut after `limit` characters with a marker saying how many were
    left out. Redacted first, so a cut never leaves part of a token behind unrecognized."""
    text = redact(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} characters left out]"
