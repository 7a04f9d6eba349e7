"""The shapes of what clients send and receive over REST, as JSON Schema (draft 2020-12).

One definition serves twice: a `Checker` validates request bodies against these schemas (model.py's
validators call it first, then check what a schema cannot say: markup, safe URLs, times in the
future), and openapi.py publishes the same objects in `/openapi.json`. Each property's
`x-error` is the message a client gets when that property is wrong, after the field's name.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import fastjsonschema
import jsonschema

from .errors import ValidationError
from .model import (DEFAULT_BROADCAST_TTL, MAX_ACTION_URL, MAX_BROADCAST_TTL, MAX_EVENT_ID,
                    MAX_MESSAGE, MAX_TITLE, MAX_USER_ID, PRIORITIES)
from .protocol import BROADCAST_PAYLOAD, NOTIFICATION, OBJECT_ID, UNREAD, object_schema

USER_ID = {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID, "pattern": r"^\S(.*\S)?$",
           "x-error": f"must be a user id of 1 to {MAX_USER_ID} characters without surrounding spaces"}
TIME = {"type": "string", "format": "date-time",
        "x-error": "must be an ISO 8601 time such as 2026-01-27T20:30:00Z"}
BASE64URL = {"type": "string", "pattern": "^[A-Za-z0-9_-]+={0,2}$", "maxLength": 256,
             "x-error": "must be a base64url string"}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit,
            "x-error": f"must be a string of at most {limit} characters (markup is removed)"}


def _one_of(values: Iterable[str], what: str = "") -> dict[str, Any]:
    values = sorted(values) if not isinstance(values, tuple) else list(values)
    return {"enum": values, "x-error": f"must be one of {', '.join(values)}{what}"}


def draft_schema(type_names: Iterable[str]) -> dict[str, Any]:
    """A notification to create (`POST /api/notifications`, and what plugins return)."""
    return {
        "type": "object", "additionalProperties": False,
        "required": ["userId", "type", "title", "message"],
        "properties": {
            "userId": USER_ID,
            "type": _one_of(type_names),
            "title": _text(MAX_TITLE),
            "message": _text(MAX_MESSAGE),
            "priority": {**_one_of(PRIORITIES, " (default: the type's)"), "enum": [*PRIORITIES, None]},
            "data": {"type": ["object", "null"], "x-error": "must be a JSON object"},
            "actionUrl": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ACTION_URL,
                          "x-error": f"must be a string of 1 to {MAX_ACTION_URL} characters"},
            "expiresAt": {**TIME, "type": ["string", "null"]},
        },
    }


BROADCAST = {
    "type": "object", "additionalProperties": False, "required": ["title", "message"],
    "description": "An announcement to every connected dashboard user, shown while it lasts",
    "properties": {
        "title": _text(MAX_TITLE),
        "message": _text(MAX_MESSAGE),
        "priority": _one_of(PRIORITIES, " (default: high)"),
        "ttlSeconds": {"type": "integer", "minimum": 1, "maximum": MAX_BROADCAST_TTL,
                       "default": DEFAULT_BROADCAST_TTL,
                       "x-error": f"must be an integer of 1 to {MAX_BROADCAST_TTL} seconds"},
        "data": {"type": ["object", "null"], "x-error": "must be a JSON object"},
        "actionUrl": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ACTION_URL,
                      "x-error": f"must be a string of 1 to {MAX_ACTION_URL} characters"},
    },
}


def event_schema(event_types: Iterable[str]) -> dict[str, Any]:
    """A domain event (`POST /api/events`); `data` is checked by the plugin that handles it."""
    known = sorted(event_types)
    return {
        "type": "object", "additionalProperties": False, "required": ["type", "data"],
        "properties": {
            "type": {"enum": known, "x-error": f"unknown event type; known: {', '.join(known)}",
                     "x-code": "unknown_event_type"},
            "id": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_EVENT_ID,
                   "x-error": f"must be a string of 1 to {MAX_EVENT_ID} characters"},
            "data": {"type": "object", "x-error": "must be a JSON object"},
            "occurredAt": {**TIME, "type": ["string", "null"]},
        },
    }


def preferences_update_schema(type_names: Iterable[str]) -> dict[str, Any]:
    names = sorted(type_names)
    choice = object_schema({}, {"enabled": {"type": "boolean", "x-error": "must be true or false"},
                          "push": {"type": "boolean", "x-error": "must be true or false"}})
    choice["x-error"] = "must be an object with enabled and/or push"
    return {
        "type": "object", "additionalProperties": False, "required": ["channels"],
        "properties": {"channels": {
            "type": "object", "x-error": "must be an object of type → {enabled, push}",
            "propertyNames": {"enum": names, "x-error": f"unknown type; allowed: {', '.join(names)}"},
            "additionalProperties": choice}},
    }


def preferences_schema(type_names: Iterable[str]) -> dict[str, Any]:
    choice = object_schema({"enabled": {"type": "boolean"}, "push": {"type": "boolean"}})
    return object_schema({"channels": object_schema({name: choice for name in sorted(type_names)})})


PUSH_SUBSCRIPTION = {
    "type": "object", "required": ["endpoint", "keys"],
    "description": "The browser's PushSubscription.toJSON()",
    "properties": {
        "endpoint": {"type": "string", "maxLength": 2048, "format": "uri",
                     "x-error": "must be an https URL of at most 2048 characters from the "
                                "browser's push service"},
        "expirationTime": {"type": ["number", "null"]},
        "keys": {"type": "object", "required": ["p256dh", "auth"],
                 "x-error": "must be an object with p256dh and auth",
                 "properties": {"p256dh": BASE64URL, "auth": BASE64URL}},
    },
}
ENDPOINT = {"type": "object", "required": ["endpoint"],
            "properties": {"endpoint": {"type": "string", "maxLength": 2048,
                                        "x-error": "must be the subscription's endpoint URL"}}}

ERROR = object_schema({"error": object_schema({"code": {"type": "string"}, "message": {"type": "string"}})},
                description="Every error answer")
SUCCESS = object_schema({"success": {"const": True}})
PAGE = object_schema({"notifications": {"type": "array", "items": NOTIFICATION}, "total": {"type": "integer"},
                "hasMore": {"type": "boolean"}},
               {"unreadCount": {"type": "integer", "minimum": 0}})
UNREAD_COUNT = object_schema(UNREAD)
MUTED = object_schema({"notification": {"type": "null"}, "muted": {"const": True}})
EVENT_ANSWER = object_schema({"notifications": {"type": "array", "items": OBJECT_ID}})
VAPID_KEY = object_schema({"publicKey": {"type": "string"}})
BROADCASTS = object_schema({"broadcasts": {"type": "array", "items": BROADCAST_PAYLOAD}})


RANKED_ERRORS = 50


class Checker:
    """One schema, compiled once. Valid input is checked by generated code (fastjsonschema: a
    1,000-user alert's drafts in a few milliseconds); only invalid input pays for jsonschema's
    report, from which the first problem is named: an unknown field first, then fields in the
    schema's order. The report is read up to RANKED_ERRORS problems: a body can hold thousands
    (an unknown channel per key: 7,700 in 64 KB, 0.4 s to list them all on the event loop)."""

    def __init__(self, schema: dict[str, Any]):
        self.schema = schema
        self._fast = fastjsonschema.compile(schema, use_formats=False)
        self._full = jsonschema.Draft202012Validator(schema)
        self._order = list(schema.get("properties", {}))

    def check(self, raw: Any, name: str = "body") -> None:
        if not isinstance(raw, dict) and self.schema.get("type") == "object":
            raise ValidationError(name, "must be a JSON object")
        try:
            self._fast(raw)
            return
        except fastjsonschema.JsonSchemaException:
            pass
        errors = list(itertools.islice(self._full.iter_errors(raw), RANKED_ERRORS))
        if errors:
            first = min(errors, key=lambda error: _rank(error, self._order))
            raise _as_validation_error(first, raw, self.schema, name)


PUSH_SUBSCRIPTION_CHECK = Checker(PUSH_SUBSCRIPTION)
BROADCAST_CHECK = Checker(BROADCAST)
ENDPOINT_CHECK = Checker(ENDPOINT)


def _rank(error: jsonschema.ValidationError, order: list[str]) -> tuple:
    if error.validator == "additionalProperties" and not error.path:
        return (0, 0, "")
    field = error.path[0] if error.path else (_missing(error) or "")
    position = order.index(field) if field in order else len(order)
    return (1, position, str(list(error.path)))


def _missing(error: jsonschema.ValidationError) -> str | None:
    if error.validator == "required":
        return error.message.split("'")[1]
    return None


def _as_validation_error(error: jsonschema.ValidationError, raw: Any, schema: dict,
                         name: str) -> ValidationError:
    if error.validator == "additionalProperties":
        container = _at(raw, error.path)
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(container) - set(allowed))[0]
        return ValidationError(_path(list(error.path) + [unknown]),
                               f"unknown field; allowed: {', '.join(allowed)}")
    if error.validator == "required":
        missing = _missing(error)
        field_schema = error.schema.get("properties", {}).get(missing, {})
        return ValidationError(_path(list(error.path) + [missing]),
                               field_schema.get("x-error", "is required"))
    if "propertyNames" in error.schema_path:  # reported at the object, about one of its keys
        key = _bad_key(_at(raw, error.path), error.schema)
        return ValidationError(_path(list(error.path) + [key]), error.schema["x-error"])
    path = list(error.path)
    field_schema = error.schema if "x-error" in error.schema else _schema_at(schema, path)
    message = field_schema.get("x-error", error.message)
    return ValidationError(_path(path) or name, message, code=field_schema.get("x-code"))


def _at(value: Any, path: Iterable) -> Any:
    for step in path:
        value = value[step]
    return value


def _schema_at(schema: dict, path: list) -> dict:
    for step in path:
        properties = schema.get("properties", {})
        schema = properties.get(step) or schema.get("additionalProperties") or {}
        if not isinstance(schema, dict):
            return {}
    return schema


def _bad_key(container: dict, names: dict) -> str:
    return sorted(key for key in container if key not in names["enum"])[0]


def _path(path: list) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text
