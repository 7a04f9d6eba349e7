"""The rules settings keys are checked by: `SettingsError`, and the checks a dataclass field's
metadata names (`_check(rule, default=…)`), shared by settings.py and stream_settings.py."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable
from urllib.parse import urlparse


class SettingsError(ValueError):
    """A settings key is unknown or holds a value that is not allowed."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"settings: {key}: {problem}")
        self.key = key
        self.problem = problem


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value):
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value):
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _url_with_scheme(*schemes: str) -> Callable[[Any], str | None]:
    def check(value):
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme in schemes and parsed.netloc:
            return None
        return f"must be a {' or '.join(s + '://' for s in schemes)} URL"

    return check


def _path_prefix(value: str) -> str | None:
    if value.startswith("/") and not value.startswith("//") and " " not in value:
        return None
    return "must be an absolute URL path such as /ws/notifications"


def _storage_url(value: str) -> str | None:
    if value == "embedded" or value.startswith(("mongodb://", "mongodb+srv://")):
        return None
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    return "must be 'embedded', a sqlite:///path URL or a mongodb:// URL"


def _key_prefix(value: str) -> str | None:
    if value and len(value) <= 64 and not any(c.isspace() for c in value):
        return None
    return "must be 1 to 64 characters without spaces"


def _check(check: Callable[[Any], str | None], **kwargs):
    return field(metadata={"check": check}, **kwargs)
