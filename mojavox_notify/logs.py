"""Logging set-up from settings: readable text for a terminal, JSON lines for collectors.

Every line passes one point, `RedactCredentials`: no token reaches a log (not in a URL's
`token`/`access_token`, not in an `Authorization` header, not in a request dump or a
traceback, whichever logger, ours or tornado's, wrote it), and no line is longer than
MAX_LINE_CHARS (a traceback than MAX_TRACEBACK_CHARS): what is past that is cut, after
redaction, with a marker saying how much was left out. Text lines escape control characters in
their message, so a value a client chose (a token's `sub`, a path) cannot start a line of its
own; JSON lines are escaped by JSON itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

from .redaction import shorten
from .settings import LoggingSettings

MAX_LINE_CHARS = 4096
MAX_TRACEBACK_CHARS = 16384
# The path and error message of an access line, in its text and as its JSON fields.
MAX_FIELD_CHARS = 1024
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# C0 and C1 controls (newline, carriage return, escape, NEL, ...) and Unicode's line and
# paragraph separators: each may end or rewrite a line in a terminal or a log viewer.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# tornado's loggers, which write what clients sent (URLs, headers, request dumps).
TORNADO_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


class RedactCredentials(logging.Filter):
    """Rewrites a record's message and traceback text with credentials removed and the length
    bounded."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = shorten(message, MAX_LINE_CHARS)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = shorten(record.exc_text, MAX_TRACEBACK_CHARS)
        if record.stack_info:
            record.stack_info = shorten(record.stack_info, MAX_TRACEBACK_CHARS)
        return True


_REDACTION = RedactCredentials()


def redact_tornado_logs() -> None:
    """Put the redaction on tornado's own loggers, so it holds even where `configure_logging`
    was not called (an app embedded in another program, the tests). Idempotent."""
    for name in TORNADO_LOGGERS:
        logging.getLogger(name).addFilter(_REDACTION)


# The access log carries every client's path and error: redacted and bounded at the logger
# itself, before any handler (a log collector's, the tests') sees a line, with or without
# `configure_logging`.
ACCESS = logging.getLogger("mojavox_notify.access")
ACCESS.addFilter(_REDACTION)


def log_access(method: str, path: str, status: int, seconds: float, user: str | None,
               client: str | None, error: tuple[str, str] | None = None) -> None:
    """The one line of a request (or of a socket's whole life): readable as text, and the same
    values as fields of a JSON line. `path` never carries the query (where tokens travel); it
    and the error message are bounded and redacted as fields too, which the line's filter does
    not see."""
    level = logging.ERROR if status >= 500 and status != 503 else (
        logging.WARNING if status == 503 else logging.INFO)
    if not ACCESS.isEnabledFor(level):  # built on every request otherwise, for nothing
        return
    path = shorten(path, MAX_FIELD_CHARS)
    if error is not None:
        error = (error[0], shorten(error[1], MAX_FIELD_CHARS))
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


class TextFormatter(logging.Formatter):
    """The terminal's format, with control characters in the message escaped (`\\n`, `\\x1b`);
    a traceback after it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def escape_controls(text: str) -> str:
    return CONTROL_CHARACTERS.sub(_escaped, text)


def _escaped(character: re.Match) -> str:
    return character.group().encode("unicode_escape").decode("ascii")


def log_handler(settings: LoggingSettings) -> logging.Handler:
    """The handler `configure_logging` installs: standard error, formatted as the settings say,
    through the redaction."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(_REDACTION)
    return handler


def configure_logging(settings: LoggingSettings) -> None:
    root = logging.getLogger()
    root.handlers[:] = [log_handler(settings)]
    root.setLevel(settings.level)
    redact_tornado_logs()
