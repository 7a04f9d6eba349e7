"""A broadcast: an announcement to every dashboard user, as posted and as delivered.

`check_broadcast` takes a `POST /api/broadcasts` body through its schema and the rules the
schema cannot say; `to_broadcast_payload` builds what the socket's `broadcast` frame and
`GET /api/broadcasts` carry.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..model import PRIORITIES, BroadcastDraft, iso
from ..tenants import TENANT_RULE, Reach
from .input import MAX_ACTION_URL, MAX_MESSAGE, MAX_TITLE, action_url, json_data, plain_text
from .schema import OBJECT_ID, TIMESTAMP, Checker, one_of, text_schema, object_schema

#: The newest this many active broadcasts are shown to a connecting socket.
MAX_ACTIVE = 20


DEFAULT_BROADCAST_TTL = 3600
MAX_BROADCAST_TTL = 7 * 24 * 3600


BROADCAST_PAYLOAD = object_schema({
    "id": OBJECT_ID,
    "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
    "message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE},
    "priority": {"enum": list(PRIORITIES)},
    "timestamp": TIMESTAMP,
    "expiresAt": TIMESTAMP,
    "data": {"type": "object"},
    "actionUrl": {"type": ["string", "null"], "maxLength": MAX_ACTION_URL},
}, description="An announcement to every dashboard user, shown until expiresAt")


BROADCAST = {
    "type": "object", "additionalProperties": False, "required": ["title", "message"],
    "description": "An announcement to every connected dashboard user of a tenant, shown while "
                   "it lasts. `tenant`: the audience a platform service chooses (a tenant, or "
                   "\"*\" for every tenant; default: the default tenant); a tenant service's "
                   "broadcast is its own tenant's.",
    "properties": {
        "tenant": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,63}|\\*)$",
                   "x-error": f"{TENANT_RULE}, or * for every tenant"},
        "title": text_schema(MAX_TITLE),
        "message": text_schema(MAX_MESSAGE),
        "priority": one_of(PRIORITIES, " (default: high)"),
        "ttlSeconds": {"type": "integer", "minimum": 1, "maximum": MAX_BROADCAST_TTL,
                       "default": DEFAULT_BROADCAST_TTL,
                       "x-error": f"must be an integer of 1 to {MAX_BROADCAST_TTL} seconds"},
        "data": {"type": ["object", "null"], "x-error": "must be a JSON object"},
        "actionUrl": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ACTION_URL,
                      "x-error": f"must be a string of 1 to {MAX_ACTION_URL} characters"},
    },
}


_BROADCAST_CHECK = Checker(BROADCAST)


def check_broadcast(raw: Any, action_url_hosts: Iterable[str] = (),
                    reach: Reach = Reach()) -> BroadcastDraft:
    """A `POST /api/broadcasts` body through `BROADCAST`, then sanitized: what the schema cannot
    say (markup removed, `data` as stored, a safe `actionUrl`), with the defaults filled in;
    errors name the field."""
    _BROADCAST_CHECK.check(raw)
    audience = reach.tenant_named(raw.get("tenant"), everyone=True)
    return BroadcastDraft(
        title=plain_text(raw.get("title"), "title", MAX_TITLE),
        message=plain_text(raw.get("message"), "message", MAX_MESSAGE),
        priority=raw.get("priority", "high"),
        ttl_seconds=raw.get("ttlSeconds", DEFAULT_BROADCAST_TTL),
        data=json_data(raw.get("data")),
        action_url=action_url(raw.get("actionUrl"), tuple(action_url_hosts)),
        audience=audience,
    )


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


BROADCASTS = object_schema({"broadcasts": {"type": "array", "items": BROADCAST_PAYLOAD}})
