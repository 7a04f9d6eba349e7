"""An escalation on the wire: the object a notification of an escalating type carries, the
socket's `escalation` frame and REST answer, the timeline, and the bodies a client sends
(ack, seen, resolve). The stored document is escalations/record.py's; times there are epoch
milliseconds, here ISO 8601.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping

from .. import tenants
from ..errors import ValidationError
from ..model import iso
from .input import plain_text
from .schema import OBJECT_ID, TENANT, TIMESTAMP, Checker, object_schema

STATES = ("open", "acknowledged", "resolved", "unanswered")
#: What can still happen to an escalation in these states (it is not resolved).
UNRESOLVED = ("open", "acknowledged", "unanswered")
TIMELINE_EVENTS = ("created", "notified", "delivered", "seen", "read", "acknowledged",
                   "escalated", "resolved", "unanswered")
CHANNELS = ("socket", "push", "stored")
MAX_KEY = 300
MAX_RESOLUTION = 500
MAX_SEEN = 100
KEY_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,%d}" % MAX_KEY)
KEY_RULE = f"must be 1 to {MAX_KEY} characters without control characters, such as call:4711"

ESCALATION_KEY = {"type": "string", "pattern": f"^[^\\x00-\\x1f\\x7f]{{1,{MAX_KEY}}}$",
                  "x-error": KEY_RULE,
                  "description": "The matter the escalation is about; one unresolved "
                                 "escalation per key (`call:<callId>` for calls)"}
NULLABLE_TIME = {"oneOf": [TIMESTAMP, {"type": "null"}]}
NULLABLE_TEXT = {"type": ["string", "null"]}

ESCALATION = object_schema({
    "id": OBJECT_ID,
    "key": {"type": "string"},
    "state": {"enum": list(STATES)},
    "step": {"type": "integer", "minimum": 0,
             "description": "The last step that ran (0: only the first recipients were told)"},
    "acknowledgedBy": NULLABLE_TEXT,
    "acknowledgedAt": NULLABLE_TIME,
    "resolvedAt": NULLABLE_TIME,
    "resolution": NULLABLE_TEXT,
    "createdAt": TIMESTAMP,
}, description="An escalation: what every one of its notifications carries and the socket's "
               "escalation frame holds, as it is now (`createdAt`: when it was opened, what its "
               "waiting time counts from)")

TIMELINE_ENTRY = object_schema(
    {"at": TIMESTAMP, "event": {"enum": list(TIMELINE_EVENTS)}},
    {"userId": {"type": "string"}, "step": {"type": "integer", "minimum": 0},
     "channel": {"enum": list(CHANNELS)}})
RECIPIENT = object_schema({
    "userId": {"type": "string"}, "notificationId": OBJECT_ID,
    "step": {"type": "integer", "minimum": 0}, "notifiedAt": TIMESTAMP,
    "read": {"type": "boolean"}, "readAt": NULLABLE_TIME})
ESCALATION_ANSWER = object_schema({"escalation": ESCALATION})
ESCALATION_DETAIL = object_schema({
    "escalation": ESCALATION,
    "recipients": {"type": "array", "items": RECIPIENT},
    "timeline": {"type": "array", "items": TIMELINE_ENTRY},
}, description="An escalation with who received it and what happened, in order")
LISTED_ESCALATION = {**ESCALATION, "properties": {
    **ESCALATION["properties"],
    "notificationId": {**OBJECT_ID, "description": "the caller's newest notification of it, "
                                                   "to acknowledge with"}},
    "required": sorted([*ESCALATION["required"], "notificationId"])}
ESCALATION_LIST = object_schema({"escalations": {"type": "array", "items": LISTED_ESCALATION}})
SEEN_ANSWER = object_schema({"seen": {"type": "integer", "minimum": 0,
                                      "description": "how many of them are escalations' (the "
                                                     "others are not recorded)"}})

RESOLVE = {
    "type": "object", "additionalProperties": False, "required": ["key"],
    "properties": {
        "key": ESCALATION_KEY,
        "resolution": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_RESOLUTION,
                       "x-error": f"must be a text of 1 to {MAX_RESOLUTION} characters"},
        "tenant": TENANT,
    },
    "description": "Resolve the unresolved escalation of `key` (a platform service names the "
                   "tenant; a tenant service resolves in its own)",
}
NOTIFICATION_IDS = {"type": "array", "minItems": 1, "maxItems": MAX_SEEN,
                    "items": {"type": "string", "x-error": "must be notification id strings"},
                    "x-error": f"must be a list of 1 to {MAX_SEEN} notification ids"}
SEEN = {"type": "object", "additionalProperties": False, "required": ["ids"],
        "properties": {"ids": NOTIFICATION_IDS},
        "description": "Notifications the user has seen on screen (recorded for escalations; "
                       "read state does not change)"}
_RESOLVE = Checker(RESOLVE)
_SEEN = Checker(SEEN)


def check_key(value: Any, field: str = "escalationKey") -> str:
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value):
        raise ValidationError(field, KEY_RULE)
    return value


def check_resolve(raw: Any) -> tuple[str, str | None, str | None]:
    """(key, resolution, tenant named) of a resolve body."""
    _RESOLVE.check(raw)
    resolution = raw.get("resolution")
    if resolution is not None:
        resolution = plain_text(resolution, "resolution", MAX_RESOLUTION)
    return raw["key"], resolution, raw.get("tenant")


def check_seen(raw: Any) -> list[str]:
    _SEEN.check(raw)
    return list(dict.fromkeys(raw["ids"]))


def ms_iso(value: int | None) -> str | None:
    if value is None:
        return None
    return iso(datetime.fromtimestamp(value / 1000, timezone.utc))


def shown_of(part: Mapping[str, Any]) -> dict[str, Any]:
    """The escalation of a notification (its `escalation` part) as clients see it: as it is now
    when the store attached it (`current`), else as it was when the notification was made."""
    current = part.get("current")
    return part["shown"] if current is None else to_escalation_payload(current)


def to_escalation_payload(document: Mapping[str, Any]) -> dict[str, Any]:
    """The escalation as clients see it (DESIGN.md's `escalation` object)."""
    acknowledged_by = document.get("acknowledged_by")
    return {
        "id": document["_id"],
        "key": tenants.name_of(document["key"]),
        "state": document["state"],
        "step": document.get("step", 0),
        "acknowledgedBy": tenants.name_of(acknowledged_by) if acknowledged_by else None,
        "acknowledgedAt": ms_iso(document.get("acknowledged_at")),
        "resolvedAt": ms_iso(document.get("resolved_at")),
        "resolution": document.get("resolution"),
        "createdAt": ms_iso(document["created_at"]),
    }


def to_timeline_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": ms_iso(event["at"]), "event": event["event"]}
    if event.get("user_id") is not None:
        entry["userId"] = tenants.name_of(event["user_id"])
    if event.get("step") is not None:
        entry["step"] = event["step"]
    if event.get("channel") is not None:
        entry["channel"] = event["channel"]
    return entry


def to_recipient(recipient: Mapping[str, Any]) -> dict[str, Any]:
    return {"userId": tenants.name_of(recipient["user_id"]),
            "notificationId": recipient["notification_id"], "step": recipient["step"],
            "notifiedAt": ms_iso(recipient["created_at"]), "read": recipient["read"],
            "readAt": ms_iso(recipient["read_at"])}
