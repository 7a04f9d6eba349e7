"""Watching the session's log records for anything shaped like a JWT (no token may be logged)."""

from __future__ import annotations

import logging
import re


class CredentialWatch(logging.Handler):
    """Sees every log record (INFO and up) of the session, formatted as a log file would hold
    it, and remembers any that carries something shaped like a JWT."""

    JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if self.JWT.search(text):
            self.leaks.append(text[:500])
