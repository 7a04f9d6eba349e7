"""The wire format in one place: notification types, draft validation, storage documents, payloads.

A draft is what a plugin or a service caller asks for (camelCase, as on the wire); a document is
what the store keeps (snake_case); a payload is what clients receive. Nothing else builds these.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

import nh3
import orjson

from .errors import NotFoundError, ValidationError
from .ids import ObjectId, new_object_id

PRIORITIES = ("low", "medium", "high", "critical")
MAX_USER_ID = 128
MAX_TITLE = 255
MAX_MESSAGE = 2000
MAX_DATA_BYTES = 16 * 1024
MAX_DATA_DEPTH = 20
MAX_ACTION_URL = 2048
# Whitespace (Unicode included), control characters and backslashes: never in an actionUrl.
UNSAFE_IN_URL = re.compile(r"[\s\x00-\x1f\\]")
MAX_JSON_DEPTH = 32
MAX_PAGE = 100
MAX_OFFSET = 2 ** 31 - 1  # within what every engine takes for a skip
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# Stored as the expiry of notifications that never expire, so every query is a plain range.
NEVER = datetime(9999, 12, 31, tzinfo=timezone.utc)
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DRAFT_FIELDS = {"userId", "type", "title", "message", "priority", "data", "actionUrl", "expiresAt"}


@dataclass(frozen=True)
class NotificationType:
    """A kind of notification a plugin registers: also a WebSocket channel name."""

    name: str
    default_priority: str
    description: str = ""
    plugin: str = ""


class NotificationTypes:
    """The registered types; filled from the plugins' `mojavox_register_types` hook."""

    def __init__(self, types: Iterable[NotificationType] = ()):
        self._types: dict[str, NotificationType] = {}
        self._all: frozenset[str] | None = None
        for notification_type in types:
            self.register(notification_type)

    @property
    def all(self) -> frozenset[str]:
        """Every type's name: the `all` channel, one set shared by every socket on it."""
        if self._all is None:
            self._all = frozenset(self._types)
        return self._all

    def register(self, notification_type: NotificationType) -> None:
        name = notification_type.name
        if not isinstance(name, str) or not TYPE_NAME.match(name):
            raise ValueError(f"notification type name {name!r} must match {TYPE_NAME.pattern}")
        if name == "all":
            raise ValueError("'all' is reserved for the channel of every type")
        if notification_type.default_priority not in PRIORITIES:
            raise ValueError(f"notification type {name}: default priority must be one of "
                             f"{', '.join(PRIORITIES)}")
        existing = self._types.get(name)
        if existing and _settings_of(existing) != _settings_of(notification_type):
            raise ValueError(f"notification type {name} is registered twice "
                             f"({existing.plugin or 'core'} and {notification_type.plugin or 'core'})")
        self._types[name] = notification_type
        self._all = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._types

    def __iter__(self):
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> NotificationType:
        return self._types[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._types)


def _settings_of(notification_type: NotificationType) -> tuple[str, str, str]:
    """What must agree when two plugins register one type (which plugin it is may differ)."""
    return (notification_type.name, notification_type.default_priority,
            notification_type.description)


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
    """Walk without recursion, so no input can exhaust the stack."""
    pending: list[tuple[Any, Where, int]] = [(value, None, 0)]
    while pending:
        item, where, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item, where, name)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not INT64_MIN <= item <= INT64_MAX:
                raise ValidationError(field_path(where, name), "integers must fit in 64 bits")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise ValidationError(field_path(where, name),
                                      f"nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, (where, key), name)
                    pending.append((child, (where, key), depth + 1))
            else:
                pending.extend((child, (where, index), depth + 1) for index, child in enumerate(item))


def _check_text(text: str, where: Where, name: str) -> None:
    if "\x00" in text:
        raise ValidationError(field_path(where, name), "must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValidationError(field_path(where, name),
                              "must be valid Unicode (a lone surrogate is not)") from None


def _printable(path: str) -> str:
    """A field path fit for an error message, whatever the client put in its keys (the error
    shortens it)."""
    return path.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


@dataclass(slots=True)  # not frozen: made per notification, and frozen ones cost 3× to make
class Draft:
    """A validated, sanitized request to notify one user."""

    user_id: str
    type: str
    title: str
    message: str
    priority: str
    data: dict[str, Any] = field(default_factory=dict)
    action_url: str | None = None
    expires_at: datetime | None = None

    def to(self, user_id: str) -> "Draft":
        """The same notification for another (validated) recipient."""
        return Draft(user_id, self.type, self.title, self.message, self.priority, self.data,
                     self.action_url, self.expires_at)


def validate_draft(raw: Any, types: NotificationTypes, action_url_hosts: Iterable[str] = (),
                   now: datetime | None = None) -> Draft:
    """Check every field of a draft and return it sanitized; errors name the field."""
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    if not DRAFT_FIELDS.issuperset(raw):
        unknown = sorted(set(raw) - DRAFT_FIELDS)
        raise ValidationError(unknown[0], f"unknown field; allowed: {', '.join(sorted(DRAFT_FIELDS))}")
    user_id = validate_recipient(raw.get("userId"))
    type_name = raw.get("type")
    if type_name not in types:
        raise ValidationError("type", f"must be one of {', '.join(types.names)}")
    priority = raw.get("priority")
    if priority is None:
        priority = types.get(type_name).default_priority
    elif priority not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(PRIORITIES)}")
    return Draft(
        user_id=user_id,
        type=type_name,
        title=_plain_text(raw.get("title"), "title", MAX_TITLE),
        message=_plain_text(raw.get("message"), "message", MAX_MESSAGE),
        priority=priority,
        data=_data(raw.get("data")),
        action_url=_action_url(raw.get("actionUrl"), tuple(action_url_hosts)),
        expires_at=_expires_at(raw.get("expiresAt"), now),
    )


DEFAULT_BROADCAST_TTL = 3600
MAX_BROADCAST_TTL = 7 * 24 * 3600


@dataclass(slots=True)
class BroadcastDraft:
    """A validated announcement to every connected dashboard user: not one user's notification
    (no seq, no unread count), shown while it lasts."""

    title: str
    message: str
    priority: str
    ttl_seconds: int
    data: dict[str, Any] = field(default_factory=dict)
    action_url: str | None = None


def validate_broadcast(raw: Mapping[str, Any], action_url_hosts: Iterable[str] = ()) -> BroadcastDraft:
    """A broadcast (`POST /api/broadcasts`) that passed `schemas.BROADCAST`, sanitized: what
    the schema cannot say (markup removed, `data` as stored, a safe `actionUrl`), with the
    defaults filled in; errors name the field."""
    return BroadcastDraft(
        title=_plain_text(raw.get("title"), "title", MAX_TITLE),
        message=_plain_text(raw.get("message"), "message", MAX_MESSAGE),
        priority=raw.get("priority", "high"),
        ttl_seconds=raw.get("ttlSeconds", DEFAULT_BROADCAST_TTL),
        data=_data(raw.get("data")),
        action_url=_action_url(raw.get("actionUrl"), tuple(action_url_hosts)),
    )


def validate_recipient(value: Any) -> str:
    """A draft's `userId`."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER_ID or value != value.strip():
        raise ValidationError("userId", f"must be a user id of 1 to {MAX_USER_ID} characters "
                                        "without surrounding spaces")
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


def _plain_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    if len(value) > limit:
        raise ValidationError(name, f"must be at most {limit} characters (got {len(value)})")
    text = strip_markup(value)
    if not text:
        raise ValidationError(name, "must not be empty (markup is removed)")
    return text


def _data(value: Any) -> dict[str, Any]:
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


def _action_url(value: Any, allowed_hosts: tuple[str, ...]) -> str | None:
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


def _expires_at(value: Any, now: datetime | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_time(value, "expiresAt")
    if moment <= (now or utcnow()):
        raise ValidationError("expiresAt", "must be in the future")
    return moment


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


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond that BSON dates keep."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return _iso(moment)


@functools.lru_cache(maxsize=256)
def _iso(moment: datetime) -> str:
    """Memoized: the notifications of one batch (a 1,000-user alert) share their time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_document(draft: Draft, created_at: datetime, seq: int, event_id: str | None = None) -> dict:
    """The stored form of a new notification; `seq` orders one user's notifications."""
    document = {
        "_id": new_object_id(),
        "user_id": draft.user_id,
        "seq": seq,
        "type": draft.type,
        "title": draft.title,
        "message": draft.message,
        "priority": draft.priority,
        "data": draft.data,
        "action_url": draft.action_url,
        "read": False,
        "read_at": None,
        "created_at": created_at,
        "expires_at": draft.expires_at or NEVER,
    }
    if event_id is not None:
        document["event_id"] = event_id
    return document


def to_payload(document: Mapping[str, Any]) -> dict[str, Any]:
    """The notification as clients see it (DESIGN.md's payload)."""
    return {
        "id": str(document["_id"]),
        "type": document["type"],
        "title": document["title"],
        "message": document["message"],
        "timestamp": iso(document["created_at"]),
        "priority": document["priority"],
        "read": bool(document.get("read")),
        "data": document.get("data") or {},
        "actionUrl": document.get("action_url"),
    }


def to_broadcast_document(draft: BroadcastDraft, created_at: datetime) -> dict:
    """The stored form of a new broadcast: kept until `expires_at`."""
    return {
        "_id": new_object_id(),
        "title": draft.title,
        "message": draft.message,
        "priority": draft.priority,
        "data": draft.data,
        "action_url": draft.action_url,
        "created_at": created_at,
        "expires_at": created_at + timedelta(seconds=draft.ttl_seconds),
    }


def to_broadcast_payload(document: Mapping[str, Any]) -> dict[str, Any]:
    """A broadcast as clients see it (the `broadcast` frame's payload)."""
    return {
        "id": str(document["_id"]),
        "title": document["title"],
        "message": document["message"],
        "priority": document["priority"],
        "timestamp": iso(document["created_at"]),
        "expiresAt": iso(document["expires_at"]),
        "data": document.get("data") or {},
        "actionUrl": document.get("action_url"),
    }


def notification_id(value: Any) -> ObjectId:
    """Parse a notification id from a client; anything malformed is simply not found."""
    if isinstance(value, str) and ObjectId.is_valid(value) and len(value) == 24:
        return ObjectId(value)
    raise NotFoundError("no such notification")


@dataclass(frozen=True)
class ChannelPreference:
    """A user's choice for one type: whether it is created at all, and whether it may be pushed
    to their browsers. As stored, None means "never chosen": the default applies."""

    enabled: bool | None = None
    push: bool | None = None

    def over(self, default: "ChannelPreference") -> "ChannelPreference":
        """This choice, with the default where none was made."""
        return ChannelPreference(
            enabled=default.enabled if self.enabled is None else self.enabled,
            push=default.push if self.push is None else self.push)


def default_preferences(types: NotificationTypes,
                        push_priorities: Iterable[str]) -> dict[str, ChannelPreference]:
    """Every type enabled; pushed when its default priority is one of `push_priorities`
    (settings: push.default_priorities, high and critical)."""
    pushed = set(push_priorities)
    return {t.name: ChannelPreference(enabled=True, push=t.default_priority in pushed)
            for t in types}


def validate_preferences_update(raw: Any, types: NotificationTypes) -> dict[str, dict[str, bool]]:
    """`{"channels": {type: {enabled?, push?}}}` → the fields to change, per type."""
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(raw) - {"channels"})
    if unknown:
        raise ValidationError(unknown[0], "unknown field; allowed: channels")
    channels = raw.get("channels")
    if not isinstance(channels, Mapping):
        raise ValidationError("channels", "must be an object of type → {enabled, push}")
    changes: dict[str, dict[str, bool]] = {}
    for name, preference in channels.items():
        if name not in types:
            raise ValidationError(f"channels.{name}", f"unknown type; allowed: {', '.join(types.names)}")
        if not isinstance(preference, Mapping):
            raise ValidationError(f"channels.{name}", "must be an object with enabled and/or push")
        change = {}
        for key, value in preference.items():
            if key not in ("enabled", "push"):
                raise ValidationError(f"channels.{name}.{key}", "unknown field; allowed: enabled, push")
            if not isinstance(value, bool):
                raise ValidationError(f"channels.{name}.{key}", "must be true or false")
            change[key] = value
        changes[name] = change
    return changes


def preferences_payload(preferences: Mapping[str, ChannelPreference]) -> dict[str, Any]:
    return {"channels": {name: {"enabled": p.enabled, "push": p.push}
                         for name, p in sorted(preferences.items())}}


BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True)
class PushSubscription:
    endpoint: str
    p256dh: str
    auth: str


def validate_push_subscription(raw: Any) -> PushSubscription:
    """A browser's PushSubscription JSON: an https endpoint and its two base64url keys."""
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str) or len(endpoint) > 2048:
        raise ValidationError("endpoint", "must be a URL of at most 2048 characters")
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ValidationError("endpoint", "must be an https URL from the browser's push service")
    keys = raw.get("keys")
    if not isinstance(keys, Mapping):
        raise ValidationError("keys", "must be an object with p256dh and auth")
    for name in ("p256dh", "auth"):
        value = keys.get(name)
        if not isinstance(value, str) or not BASE64URL.match(value) or len(value) > 256:
            raise ValidationError(f"keys.{name}", "must be a base64url string")
    return PushSubscription(endpoint=endpoint, p256dh=keys["p256dh"], auth=keys["auth"])


def validate_endpoint(raw: Any) -> str:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("endpoint"), str):
        raise ValidationError("endpoint", "must be the subscription's endpoint URL")
    return raw["endpoint"]


MAX_EVENT_ID = 128
EVENT_FIELDS = {"type", "id", "data", "occurredAt"}


@dataclass(frozen=True)
class Event:
    """A domain event from a MOJAVOX service, as plugins receive it."""

    type: str
    data: dict[str, Any]
    id: str | None = None
    occurred_at: datetime | None = None


def validate_event(raw: Any, known_types: Iterable[str]) -> Event:
    """`{type, id?, data, occurredAt?}`; the type must be one some plugin handles."""
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(raw) - EVENT_FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field; allowed: {', '.join(sorted(EVENT_FIELDS))}")
    known = sorted(known_types)
    if raw.get("type") not in known:
        raise ValidationError("type", f"unknown event type; known: {', '.join(known)}",
                              code="unknown_event_type")
    event_id = raw.get("id")
    if event_id is not None and (not isinstance(event_id, str)
                                 or not 1 <= len(event_id) <= MAX_EVENT_ID):
        raise ValidationError("id", f"must be a string of 1 to {MAX_EVENT_ID} characters")
    data = raw.get("data")
    if not isinstance(data, dict):
        raise ValidationError("data", "must be a JSON object")
    occurred_at = raw.get("occurredAt")
    return Event(type=raw["type"], data=data, id=event_id,
                 occurred_at=parse_time(occurred_at, "occurredAt") if occurred_at is not None else None)
