"""The dashboard socket's frames as JSON Schema (draft 2020-12): one schema per frame type the
server sends and per frame type a client may send.

Served at `GET /protocol.json` for client authors and code generators; the test suite validates
every frame the server sends in any test against `SERVER_FRAMES`, so this document cannot drift
from what the server does. Bounds come from the same constants the server checks with.
"""

from __future__ import annotations

from typing import Any

from .model import MAX_ACTION_URL, MAX_MESSAGE, MAX_TITLE, PRIORITIES

OBJECT_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
TIMESTAMP = {"type": "string", "format": "date-time",
             "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"}
COUNT = {"type": "integer", "minimum": 0}


def object_schema(required: dict[str, Any], optional: dict[str, Any] | None = None,
            description: str = "") -> dict[str, Any]:
    properties = {**required, **(optional or {})}
    schema = {"type": "object", "properties": properties, "required": sorted(required),
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def _frame(frame_type: str, description: str, required: dict[str, Any] | None = None,
           optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return object_schema({"type": {"const": frame_type}, **(required or {})}, optional, description)


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
}, description="A notification, as REST and the socket deliver it")

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

UNREAD = {
    "count": COUNT,
    "byPriority": object_schema({priority: COUNT for priority in PRIORITIES}),
}

SERVER_FRAMES: dict[str, dict[str, Any]] = {
    "connected": _frame("connected", "First frame of every socket",
                        {"clientId": {"type": "string"}, "timestamp": TIMESTAMP,
                         "unreadCount": object_schema(UNREAD)}),
    "notification": _frame("notification", "A new notification on a subscribed channel",
                           {"payload": NOTIFICATION}),
    "broadcast": _frame("broadcast", "An announcement to every connected user, on every "
                        "socket whatever its channels: as it is published, and the ones still "
                        "active right after connected", {"payload": BROADCAST_PAYLOAD}),
    "unread_count": _frame("unread_count", "The user's unread counts, after every change", UNREAD),
    "notification_read": _frame(
        "notification_read", "A notification (or all: notificationId null, all true) was read",
        {"notificationId": {"oneOf": [OBJECT_ID, {"type": "null"}]}}, {"all": {"const": True}}),
    "notification_deleted": _frame("notification_deleted", "A notification was deleted",
                                   {"notificationId": OBJECT_ID}),
    "history": _frame("history", "Answer to get_history, newest first",
                      {"notifications": {"type": "array", "items": NOTIFICATION},
                       "total": COUNT, "hasMore": {"type": "boolean"}}),
    "resumed": _frame("resumed", "End of a replay after ?since= or resume",
                      {"count": COUNT, "hasMore": {"type": "boolean"},
                       "lastId": {"oneOf": [OBJECT_ID, {"type": "null"}]}}),
    "resynced": _frame("resynced", "The server lost its broker (Redis) for a while and filled "
                       "what this socket missed from storage: the count notifications just before "
                       "this frame; reads and deletions made elsewhere meanwhile are not replayed",
                       {"count": COUNT}),
    "subscribed": _frame("subscribed", "The channels now subscribed (['all'] for every type)",
                         {"channels": {"type": "array", "items": {"type": "string"}}}),
    "pong": _frame("pong", "Answer to ping", {"timestamp": TIMESTAMP}),
    "token_expiring": _frame("token_expiring", "Sent before the token expires: refresh_token",
                             {"expiresAt": TIMESTAMP}),
    "token_refreshed": _frame("token_refreshed", "Answer to refresh_token", {"expiresAt": TIMESTAMP}),
    "error": _frame("error", "A frame was refused; the socket stays open",
                    {"code": {"type": "string", "pattern": "^[a-z_]+$"},
                     "message": {"type": "string"}}),
}

CLIENT_FRAMES: dict[str, dict[str, Any]] = {
    "subscribe": _frame("subscribe", "Add channels (types, or 'all')",
                        {"channels": {"type": "array", "items": {"type": "string"}}}),
    "unsubscribe": _frame("unsubscribe", "Remove channels",
                          {"channels": {"type": "array", "items": {"type": "string"}}}),
    "mark_read": _frame("mark_read", "Mark one notification read", {"notificationId": OBJECT_ID}),
    "mark_all_read": _frame("mark_all_read", "Mark every notification read"),
    "get_history": _frame("get_history", "A page of history", optional={
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
        "offset": {"type": "integer", "minimum": 0, "maximum": 2 ** 31 - 1, "default": 0},
        "unreadOnly": {"type": "boolean", "default": False}}),
    "resume": _frame("resume", "Replay what was missed after a notification",
                     {"since": OBJECT_ID}),
    "refresh_token": _frame("refresh_token", "Extend the socket with a new token of the same user",
                            {"token": {"type": "string", "minLength": 1}}),
    "ping": _frame("ping", "Answered with pong"),
}


def protocol_document() -> dict[str, Any]:
    """One JSON Schema document: a server frame is one of `$defs/server/*`, a client frame one
    of `$defs/client/*`."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://mojavox.ai/schemas/notify-socket.json",
        "title": "MOJAVOX Notify dashboard socket frames",
        "$defs": {"server": SERVER_FRAMES, "client": CLIENT_FRAMES},
        "oneOf": [{"$ref": f"#/$defs/server/{name}"} for name in SERVER_FRAMES]
        + [{"$ref": f"#/$defs/client/{name}"} for name in CLIENT_FRAMES],
    }
