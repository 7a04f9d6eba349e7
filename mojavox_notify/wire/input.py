"""Rules for what clients send that JSON Schema cannot say: JSON storage and the wire can
keep, plain text without markup, `data` as stored, safe action URLs, times.

Each shape's module (notification, broadcast, event, ...) checks its schema first and then
these rules, behind one `check_…`.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import nh3
import orjson

from ..errors import ValidationError

MAX_USER_ID = 128
MAX_TITLE = 255
MAX_MESSAGE = 2000
MAX_DATA_BYTES = 16 * 1024
MAX_DATA_DEPTH = 20
MAX_ACTION_URL = 2048
# Whitespace (Unicode included), control characters and backslashes: never in an actionUrl.
UNSAFE_IN_URL = re.compile(r"[\s\x00-\x1f\\]")
MAX_JSON_DEPTH = 32
CONTROL_IN_ID = re.compile(r"[\x00-\x1f\x7f]")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def parse_json(raw: bytes | str, name: str = "body") -> Any:
    """JSON from a client, refused (400 naming the field) when neither storage nor the wire
    could keep it: nesting past MAX_JSON_DEPTH, NaN or Infinity, an integer past 64 bits, or a
    string holding a lone surrogate or NUL."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValidationError(name, f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError):
        raise ValidationError(name, "is not valid JSON") from None
    _check_json_values(value, name)
    return value


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


# Where a value is in a client's JSON: None for the whole of it, else (where its container is,
# its key or index). Linked, not written out: the path is spelled only for an error, since
# spelling it for every value copies each key once per value under it (a 30 KB key over a list
# of 17,000 numbers: half a gigabyte of copies at once).
Where = tuple | None


def field_path(where: Where, name: str) -> str:
    """`where` as an error names it: `data.items[2].id`; `name` for the whole value, and before
    an index at the top (`body[3]`)."""
    steps = []
    while where is not None:
        where, step = where
        steps.append(step)
    path = ""
    for step in reversed(steps):
        if isinstance(step, int):
            path = f"{path or name}[{step}]"
        else:
            path = f"{path}.{step}" if path else step
    return _printable(path or name)


def _check_json_values(value: Any, name: str) -> None:
    """Walk without recursion, so no input can exhaust the stack. Only containers wait on the
    stack: a scalar is checked where it is met, and its place made only for an error (a list of
    17,000 numbers made as many tuples, and the garbage collector's passes over them held the
    loop for 100 ms)."""
    problem = _scalar_problem(value)
    if problem:
        raise ValidationError(field_path(None, name), problem)
    pending: list[tuple[Any, Where, int]] = [(value, None, 0)]
    while pending:
        item, where, depth = pending.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise ValidationError(field_path(where, name),
                                  f"nests deeper than {MAX_JSON_DEPTH} levels")
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for step, child in children:
            if isinstance(step, str):
                problem = _text_problem(step)
                if problem:
                    raise ValidationError(field_path((where, step), name), problem)
            kind = type(child)
            if kind is int:  # the common scalars first, without a call
                if INT64_MIN <= child <= INT64_MAX:
                    continue
            elif kind in PLAIN_SCALARS:
                continue
            elif isinstance(child, (dict, list)):  # a plugin's data may hold their subclasses
                pending.append((child, (where, step), depth + 1))
                continue
            problem = _scalar_problem(child)
            if problem:
                raise ValidationError(field_path((where, step), name), problem)


PLAIN_SCALARS = (float, bool, type(None))


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            return "integers must fit in 64 bits"
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate is not)"
    return None


def _printable(path: str) -> str:
    """A field path fit for an error message, whatever the client put in its keys (the error
    shortens it)."""
    return path.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def check_recipient(value: Any, field: str = "userId") -> str:
    """A draft's `userId` (no control characters: tenants.SEPARATOR is one)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER_ID or value != value.strip() \
            or CONTROL_IN_ID.search(value):
        raise ValidationError(field, f"must be a user id of 1 to {MAX_USER_ID} characters "
                                     "without surrounding spaces or control characters")
    return value


@functools.lru_cache(maxsize=4096)
def strip_markup(text: str) -> str:
    """Plain text with no markup: nh3 removes tags (and script/style content), entities decode.

    Decoding can reveal markup that was entity-escaped (`&lt;script&gt;`), so repeat until the
    text no longer changes. Memoized: the drafts of one alert to many users share their text.
    """
    for _ in range(5):
        cleaned = html.unescape(nh3.clean(text, tags=set(), attributes={}))
        if cleaned == text:
            break
        text = cleaned
    return text.strip()


def plain_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    if len(value) > limit:
        raise ValidationError(name, f"must be at most {limit} characters (got {len(value)})")
    text = strip_markup(value)
    if not text:
        raise ValidationError(name, "must not be empty (markup is removed)")
    return text


def json_data(value: Any) -> dict[str, Any]:
    """`data` as stored: JSON values only, at most MAX_DATA_BYTES as compact UTF-8 JSON."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("data", "must be a JSON object")
    _check_json(value, DATA, depth=0)
    if _json_size(value) > MAX_DATA_BYTES:
        raise ValidationError("data", f"must be at most {MAX_DATA_BYTES} bytes as JSON")
    return value


DATA: Where = (None, "data")


def _check_json(value: Any, where: Where, depth: int) -> None:
    """Objects, arrays, strings, finite numbers, booleans and null, nested at most
    MAX_DATA_DEPTH deep, with keys that are strings, not starting with $ and without NUL
    (a plugin may hand over anything)."""
    if depth > MAX_DATA_DEPTH:
        raise ValidationError(field_path(where, "data"), f"nests deeper than {MAX_DATA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(field_path(where, "data"), "keys must be strings")
            if key.startswith("$") or "\x00" in key:
                raise ValidationError(field_path((where, key), "data"),
                                      "keys must not start with $ or hold NUL")
            _check_json(item, (where, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, (where, index), depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field_path(where, "data"), "must be a finite number")
    elif not isinstance(value, (str, int)) and value is not None:  # bool is an int
        raise ValidationError(field_path(where, "data"), "must be a JSON value (object, array, "
                                                         "string, number, boolean or null)")


def _json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON, as stored (orjson; the standard library for
    integers past 64 bits, which orjson refuses)."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        pass
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise ValidationError("data", "must be valid Unicode (a lone surrogate is not)") from None


def action_url(value: Any, allowed_hosts: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ACTION_URL:
        raise ValidationError("actionUrl", f"must be a string of 1 to {MAX_ACTION_URL} characters")
    return _checked_action_url(value, allowed_hosts)


@functools.lru_cache(maxsize=1024)
def _checked_action_url(value: str, allowed_hosts: tuple[str, ...]) -> str:
    """Memoized (errors are not): the drafts of one alert share their URL."""
    if UNSAFE_IN_URL.search(value):
        raise ValidationError("actionUrl", "must not contain spaces, control characters or backslashes")
    if value.startswith("/") and not value.startswith("//"):
        return value
    parsed = urlparse(value)
    hosts = {host.lower() for host in allowed_hosts}
    if parsed.scheme in ("http", "https") and parsed.hostname and parsed.hostname.lower() in hosts:
        return value
    allowed = f"or an http(s) URL on {', '.join(sorted(hosts))}" if hosts else "(no absolute URL hosts are allowed)"
    raise ValidationError("actionUrl", f"must be a relative path starting with / {allowed}")


def parse_time(value: Any, name: str) -> datetime:
    """An ISO 8601 time with a zone (a bare one is taken as UTC), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise ValidationError(name, "must be an ISO 8601 time such as 2026-01-27T20:30:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(name, "must be an ISO 8601 time such as 2026-01-27T20:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is in the year 10000 in UTC
        raise ValidationError(name, "must be a time between the years 1 and 9999 in UTC") from None
