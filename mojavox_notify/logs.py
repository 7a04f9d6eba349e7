"""Logging set-up from settings: readable text for a terminal, JSON lines for collectors.

Every line passes one redaction point, `RedactCredentials`, so no token reaches a log: not in a
URL's `token`/`access_token`, not in an `Authorization` header, not in a request dump or a
traceback, whichever logger (ours or tornado's) wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

from .settings import LoggingSettings

REDACTED = "[redacted]"
CREDENTIALS = (
    # ?token=…, &access_token=… (a URL in an access line, a request repr, an error message)
    (re.compile(r"([?&;](?:access_)?token=)[^&;\s\"'#]*", re.IGNORECASE), r"\1" + REDACTED),
    # Authorization: Bearer …, 'Authorization': '…', authorization=…
    (re.compile(r"(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"',;}]+",
                re.IGNORECASE), r"\1" + REDACTED),
    # Anything shaped like a JWT, wherever it appears: header and payload are base64url JSON.
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
)
# The loggers tornado writes request lines and dumps to, which may hold a URL or headers.
TORNADO_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


def redact(text: str) -> str:
    for pattern, replacement in CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text


class RedactCredentials(logging.Filter):
    """Rewrites a record's message and traceback text with credentials removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_REDACTION = RedactCredentials()


def redact_tornado_logs() -> None:
    """Put the redaction on tornado's own loggers, so it holds even where `configure_logging`
    was not called (an app embedded in another program, the tests). Idempotent."""
    for name in TORNADO_LOGGERS:
        logging.getLogger(name).addFilter(_REDACTION)


ACCESS = logging.getLogger("mojavox_notify.access")


def log_access(method: str, path: str, status: int, seconds: float, user: str | None,
               client: str | None, error: tuple[str, str] | None = None) -> None:
    """The one line of a request (or of a socket's whole life): readable as text, and the same
    values as fields of a JSON line. `path` never carries the query (where tokens travel)."""
    level = logging.ERROR if status >= 500 and status != 503 else (
        logging.WARNING if status == 503 else logging.INFO)
    if not ACCESS.isEnabledFor(level):  # built on every request otherwise, for nothing
        return
    fields = {"method": method, "path": path, "status": status,
              "duration_ms": round(seconds * 1000, 2), "user": user, "client": client}
    text = f"{method} {path} {status} {fields['duration_ms']:.1f}ms"
    text += f" user={user or '-'} client={client or '-'}"
    if error is not None:
        fields["error"], fields["error_message"] = error
        text += f" error={error[0]}: {error[1]}"
    ACCESS.log(level, "%s", text, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def configure_logging(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_REDACTION)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    redact_tornado_logs()
