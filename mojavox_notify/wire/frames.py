"""The dashboard socket's frames as JSON Schema (draft 2020-12): one schema per frame type the
server sends and per frame type a client may send.

Served at `GET /protocol.json` for client authors and code generators; the test suite validates
every frame the server sends in any test against `SERVER_FRAMES`, and the session validates every
client frame against `CLIENT_FRAMES` (`check_client_frame`), so this document cannot drift from
what the server does.
"""

from __future__ import annotations

from typing import Any

from ..errors import ECHO_CHARS, ValidationError
from ..redaction import shorten
from .broadcast import BROADCAST_PAYLOAD
from .escalation import ESCALATION, NOTIFICATION_IDS
from .input import parse_json
from .notification import MAX_OFFSET, MAX_PAGE, NOTIFICATION, UNREAD
from .schema import COUNT, OBJECT_ID, TIMESTAMP, Checker, object_schema

def _frame(frame_type: str, description: str, required: dict[str, Any] | None = None,
           optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return object_schema({"type": {"const": frame_type}, **(required or {})}, optional, description)


SERVER_FRAMES: dict[str, dict[str, Any]] = {
    "connected": _frame("connected", "First frame of every socket",
                        {"clientId": {"type": "string"}, "timestamp": TIMESTAMP,
                         "unreadCount": object_schema(UNREAD),
                         "tenant": {"type": "string", "description": "The user's tenant (the "
                                    "token's tenant claim, or the default tenant)"}}),
    "notification": _frame("notification", "A new notification on a subscribed channel",
                           {"payload": NOTIFICATION}),
    "broadcast": _frame("broadcast", "An announcement to every connected user, on every "
                        "socket whatever its channels: as it is published, and the ones still "
                        "active right after connected", {"payload": BROADCAST_PAYLOAD}),
    "escalation": _frame("escalation", "An escalation the user receives changed (acknowledged "
                         "by someone, escalated a step, resolved, unanswered), on every socket "
                         "whatever its channels; also the answer to ack when it changed nothing",
                         {"payload": ESCALATION}),
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


def _client_frame(frame_type: str, description: str, required: dict[str, Any] | None = None,
                  optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A client may add fields a frame does not name: they are ignored, so a newer client still
    talks to an older server."""
    schema = _frame(frame_type, description, required, optional)
    del schema["additionalProperties"]
    return schema


CHANNELS = {"type": "array", "items": {"type": "string", "x-error": "must be a channel name"},
            "x-error": "must be a list of channel names"}

CLIENT_FRAMES: dict[str, dict[str, Any]] = {
    "subscribe": _client_frame("subscribe", "Add channels (types, or 'all')", {"channels": CHANNELS}),
    "unsubscribe": _client_frame("unsubscribe", "Remove channels", {"channels": CHANNELS}),
    "mark_read": _client_frame("mark_read", "Mark one notification read", {"notificationId": {
        "type": "string", "description": "Its id: any other string is answered not_found",
        "x-error": "must be a notification id string"}}),
    "mark_all_read": _client_frame("mark_all_read", "Mark every notification read"),
    "ack": _client_frame("ack", "Acknowledge (take) the escalation of one of your notifications: "
                         "every recipient's sockets get its escalation frame; refused with "
                         "already_acknowledged, escalation_resolved or not_found", {
                             "notificationId": {"type": "string",
                                                "x-error": "must be a notification id string"}}),
    "seen": _client_frame("seen", "Notifications now on screen (recorded in their escalations' "
                          "timelines; read state does not change)",
                          {"notificationIds": NOTIFICATION_IDS}),
    "get_history": _client_frame("get_history", "A page of history", optional={
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50,
                  "x-error": f"must be an integer between 1 and {MAX_PAGE}"},
        "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0,
                   "x-error": f"must be an integer between 0 and {MAX_OFFSET}"},
        "unreadOnly": {"type": "boolean", "default": False, "x-error": "must be true or false"}}),
    "resume": _client_frame("resume", "Replay what was missed after a notification", {"since": {
        "type": "string", "description": "The id of the last notification received",
        "x-error": "must be the id of the last notification you received"}}),
    "refresh_token": _client_frame(
        "refresh_token", "Extend the socket with a new token of the same user",
        {"token": {"type": "string", "minLength": 1, "x-error": "must be a JWT string"}}),
    "ping": _client_frame("ping", "Answered with pong"),
}
CLIENT_MESSAGES = tuple(CLIENT_FRAMES)
_CLIENT_CHECKS = {name: Checker(schema) for name, schema in CLIENT_FRAMES.items()}


def check_client_frame(raw: str | bytes) -> dict[str, Any]:
    """A client's frame parsed and checked against its type's schema, or a ValidationError:
    `invalid_json`, `invalid_message` (not an object naming its type), `unknown_type`, or
    `invalid_request` naming the field."""
    try:
        frame = parse_json(raw, "message")
    except ValidationError as error:
        raise ValidationError("", error.message, code="invalid_json") from None
    if not isinstance(frame, dict):
        raise ValidationError("", "the message must be a JSON object", code="invalid_message")
    frame_type = frame.get("type")
    if not isinstance(frame_type, str):
        raise ValidationError("type", "must be a string naming the message", code="invalid_message")
    check = _CLIENT_CHECKS.get(frame_type)
    if check is None:
        raise ValidationError("type", f"unknown message type {shorten(frame_type, ECHO_CHARS)!r}; "
                              f"allowed: {', '.join(CLIENT_MESSAGES)}", code="unknown_type")
    check.check(frame, "message")
    return frame


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
