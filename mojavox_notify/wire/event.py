"""A domain event from a MOJAVOX service (`POST /api/events`): `{type, id?, data, occurredAt?,
tenant?}`."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from ..errors import ValidationError
from ..model import Event
from ..tenants import Reach
from .input import parse_time
from .schema import OBJECT_ID, TENANT, TIME, Checker, object_schema

MAX_EVENT_ID = 128
EVENT_FIELDS = {"type", "id", "data", "occurredAt", "tenant"}


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
            "tenant": {**TENANT, "description": "A platform service's choice of tenant (default: "
                       "the default tenant); a tenant service may name only its own"},
        },
    }


class EventCheck:
    """`POST /api/events` bodies (and stream entries): the schema, then the rules."""

    def __init__(self, event_types: Iterable[str]):
        self._known = sorted(event_types)
        self._schema = Checker(event_schema(self._known))

    def check(self, raw: Any, reach: Reach = Reach()) -> Event:
        """An event inside the caller's `reach` (its `tenant`, when it may name one)."""
        self._schema.check(raw)
        event = check_event_rules(raw, self._known)
        return dataclasses.replace(event, tenant=reach.tenant_named(raw.get("tenant")))


def check_event_rules(raw: Any, known_types: Iterable[str]) -> Event:
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


EVENT_ANSWER = object_schema({"notifications": {"type": "array", "items": OBJECT_ID}})
