"""A notification: the draft a caller sends, and the payload REST and the socket deliver.

The draft's schema (also in /openapi.json) is checked first, then what it cannot say
(`input.py`), behind `DraftCheck`; `to_payload` is the one place a payload is built, and
`NOTIFICATION` its published schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

from .. import tenants
from ..errors import NotFoundError, ValidationError
from ..ids import ObjectId
from ..model import PRIORITIES, Draft, NotificationTypes, iso, utcnow
from ..tenants import Reach
from .input import (MAX_ACTION_URL, MAX_MESSAGE, MAX_TITLE, action_url, check_recipient,
                    json_data, parse_time, plain_text)
from .schema import (COUNT, OBJECT_ID, TENANT, TIME, TIMESTAMP, USER_ID, Checker, object_schema,
                     one_of, text_schema)
from .escalation import ESCALATION, ESCALATION_KEY, check_key, shown_of
from .topic import TOPIC_KEY, TOPIC_KEY_PATTERN, TOPIC_KEY_RULE

NOTIFICATION = object_schema({
    "id": OBJECT_ID,
    "type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
    "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
    "message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE},
    "timestamp": TIMESTAMP,
    "priority": {"enum": list(PRIORITIES)},
    "read": {"type": "boolean"},
    "data": {"type": "object"},
    "actionUrl": {"type": ["string", "null"], "maxLength": MAX_ACTION_URL},
}, {"escalation": ESCALATION}, description="A notification, as REST and the socket deliver it "
   "(`escalation` on the notifications of a type with an escalation policy)")

UNREAD = {
    "count": COUNT,
    "byPriority": object_schema({priority: COUNT for priority in PRIORITIES}),
}


DRAFT_FIELDS = {"userId", "topic", "tenant", "type", "title", "message", "priority", "data",
                "actionUrl", "expiresAt", "escalationKey"}
ONE_RECIPIENT = "a draft names one recipient: userId, or topic (every member of it)"


def draft_schema(type_names: Iterable[str]) -> dict[str, Any]:
    """A notification to create (`POST /api/notifications`, and what plugins return)."""
    return {
        "type": "object", "additionalProperties": False,
        "required": ["type", "title", "message"],
        "description": f"A notification to create: {ONE_RECIPIENT}. `tenant`: a platform "
                       "service's choice of tenant (default: the default tenant); a tenant "
                       "service may name only its own.",
        "properties": {
            "userId": USER_ID,
            "topic": TOPIC_KEY,
            "tenant": TENANT,
            "type": one_of(type_names),
            "title": text_schema(MAX_TITLE),
            "message": text_schema(MAX_MESSAGE),
            "priority": {**one_of(PRIORITIES, " (default: the type's)"), "enum": [*PRIORITIES, None]},
            "data": {"type": ["object", "null"], "x-error": "must be a JSON object"},
            "actionUrl": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ACTION_URL,
                          "x-error": f"must be a string of 1 to {MAX_ACTION_URL} characters"},
            "expiresAt": {**TIME, "type": ["string", "null"]},
            "escalationKey": {**ESCALATION_KEY, "type": ["string", "null"]},
        },
    }


class DraftCheck:
    """Drafts (`POST /api/notifications`, what event plugins return, an alert's recipients):
    the schema first, the one /openapi.json publishes, then what it cannot say; the draft comes
    back sanitized, or an error names the field.

    A draft that differs from the one before it only in `userId` (its other fields the very
    same objects: a system alert's drafts share them) gets only its recipient checked: its
    other fields were checked a moment ago. A 1,000-user alert's validation took 8 ms."""

    def __init__(self, types: NotificationTypes, action_url_hosts: Iterable[str] = ()):
        self._types = types
        self._hosts = tuple(action_url_hosts)
        self._schema = Checker(draft_schema(types.names))
        self._recipient = Checker(USER_ID)

    def check(self, raw: Any, reach: Reach = Reach()) -> Draft:
        """One draft, inside `reach` (the caller's: a tenant service's drafts stay in its
        tenant)."""
        self._schema.check(raw)
        return _sanitized(raw, self._types, self._hosts, reach)

    def check_many(self, raws: Iterable[Any], reach: Reach = Reach()) -> list[Draft]:
        drafts: list[Draft] = []
        previous: Any = None
        for raw in raws:
            if drafts and _same_but_recipient(raw, previous):
                self._recipient.check(raw["userId"], "userId")
                tenant = tenants.tenant_of(drafts[-1].user_id)
                drafts.append(drafts[-1].to(tenants.key(tenant, check_recipient(raw["userId"]))))
            else:
                drafts.append(self.check(raw, reach))
            previous = raw
        return drafts


def _sanitized(raw: Any, types: NotificationTypes, action_url_hosts: tuple[str, ...],
               reach: Reach, now: datetime | None = None) -> Draft:
    """What the schema cannot say about a draft (it may come from a plugin, unchecked by it)."""
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    if not DRAFT_FIELDS.issuperset(raw):
        unknown = sorted(set(raw) - DRAFT_FIELDS)
        raise ValidationError(unknown[0], f"unknown field; allowed: {', '.join(sorted(DRAFT_FIELDS))}")
    tenant = reach.tenant_named(raw.get("tenant"))
    user_id, topic = raw.get("userId"), raw.get("topic")
    if (user_id is None) == (topic is None):
        raise ValidationError("userId", ONE_RECIPIENT)
    if topic is not None:
        if not isinstance(topic, str) or not TOPIC_KEY_PATTERN.fullmatch(topic):
            raise ValidationError("topic", TOPIC_KEY_RULE)
        user_id, topic = "", tenants.key(tenant, topic)
    else:
        user_id = tenants.key(tenant, check_recipient(user_id))
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
        title=plain_text(raw.get("title"), "title", MAX_TITLE),
        message=plain_text(raw.get("message"), "message", MAX_MESSAGE),
        priority=priority,
        data=json_data(raw.get("data")),
        action_url=action_url(raw.get("actionUrl"), action_url_hosts),
        expires_at=_expires_at(raw.get("expiresAt"), now),
        topic=topic,
        escalation_key=_escalation_key(raw.get("escalationKey"), tenant),
    )


def _escalation_key(value: Any, tenant: str) -> str | None:
    """Keys are per tenant, as everything else a tenant names."""
    return None if value is None else tenants.key(tenant, check_key(value))


def _expires_at(value: Any, now: datetime | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_time(value, "expiresAt")
    if moment <= (now or utcnow()):
        raise ValidationError("expiresAt", "must be in the future")
    return moment


def to_payload(document: Mapping[str, Any]) -> dict[str, Any]:
    """The notification as clients see it (DESIGN.md's payload), with its escalation as it
    is now when it has one."""
    payload = {
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
    escalation = document.get("escalation")
    if escalation is not None:
        payload["escalation"] = shown_of(escalation)
    return payload


def notification_id(value: Any) -> ObjectId:
    """Parse a notification id from a client; anything malformed is simply not found."""
    if isinstance(value, str) and ObjectId.is_valid(value) and len(value) == 24:
        return ObjectId(value)
    raise NotFoundError("no such notification")


MAX_PAGE = 100
MAX_OFFSET = 2 ** 31 - 1  # within what every engine takes for a skip


def page_bounds(limit: Any, offset: Any) -> tuple[int, int]:
    """Validated paging for REST and the socket: limit 1..100, offset ≥ 0."""
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(name, "must be an integer")
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValidationError("offset", f"must be between 0 and {MAX_OFFSET}")
    return limit, offset


def _same_but_recipient(raw: Any, previous: dict) -> bool:
    """Whether `raw` holds the same fields as `previous`, each but `userId` the same object."""
    return (type(raw) is dict and raw.keys() == previous.keys() and "userId" in raw
            and all(value is previous[name] for name, value in raw.items() if name != "userId"))


PAGE = object_schema({"notifications": {"type": "array", "items": NOTIFICATION},
                     "total": {"type": "integer"}, "hasMore": {"type": "boolean"}},
                    {"unreadCount": {"type": "integer", "minimum": 0}})
UNREAD_COUNT = object_schema(UNREAD)
MUTED = object_schema({"notification": {"type": "null"}, "muted": {"const": True}})
SENT_TO_TOPIC = object_schema(
    {"topic": {"type": "string"}, "created": COUNT,
     "muted": {"type": ["integer", "null"], "minimum": 0,
               "description": "members who had turned the type off (null on a replay)"}},
    description="A draft to a topic: one notification created per member who has not muted it")
MUTED_OR_SENT_TO_TOPIC = {"oneOf": [MUTED, SENT_TO_TOPIC]}
