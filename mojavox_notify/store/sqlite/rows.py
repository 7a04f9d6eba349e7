"""Rows and documents: the file keeps times as epoch milliseconds and `data` as JSON text;
callers get documents of the shape `model.to_document` makes. Each conversion is here once, with
the column order it reads or writes.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from ...ids import ObjectId
from ...model import NEVER, PRIORITIES
from ...tenants import DEFAULT
from .. import UserState

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NEVER_MS = (NEVER - EPOCH) // timedelta(milliseconds=1)

UNREAD_COLUMNS = ", ".join(f"unread_{priority}" for priority in PRIORITIES)
STATE_COLUMNS = f"seq, total, {UNREAD_COLUMNS}"
# The order of the columns in every row read or written by the conversions below.
NOTIFICATION_COLUMNS = ("id, user_id, seq, type, title, message, priority, data, action_url, "
                        "read, read_at, created_at, expires_at, event_id, escalation_id, escalation")
# What reads select: the columns above (of `notifications n`), and the body of the escalation the
# notification belongs to, if any (`NOTIFICATIONS_READ` joins it): clients see an escalation as
# it is now, which its notifications do not store.
NOTIFICATION_READ = ", ".join(f"n.{column}" for column in NOTIFICATION_COLUMNS.split(", ")) + ", e.body"
NOTIFICATIONS_READ = "notifications n LEFT JOIN escalations e ON e.id = n.escalation_id"
BROADCAST_COLUMNS = ("id, title, message, priority, data, action_url, created_at, expires_at, "
                     "audience")
EVENT_COLUMNS = "id, type, state, owner, notifications, created_at"


@functools.lru_cache(maxsize=1024)
def to_ms(moment: datetime | None) -> int | None:
    """Memoized: the rows of one batch share their creation time (and most never expire)."""
    if moment is None:
        return None
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(value: int | None) -> datetime | None:
    if value is None:
        return None
    return EPOCH + timedelta(milliseconds=value)


def _state(row: tuple) -> UserState:
    """A `UserState` from `seq, total, unread_*` columns."""
    return UserState(seq=row[0], total=row[1], unread=dict(zip(PRIORITIES, row[2:2 + len(PRIORITIES)])))


def _document(row: tuple) -> dict[str, Any]:
    """A row of NOTIFICATION_READ (or of NOTIFICATION_COLUMNS, without the escalation's body)."""
    (id_, user_id, seq, type_, title, message, priority, data, action_url, read, read_at,
     created_at, expires_at, event_id, escalation_id, escalation) = row[:16]
    document = {
        "_id": ObjectId(id_), "user_id": user_id, "seq": seq, "type": type_, "title": title,
        "message": message, "priority": priority, "data": json.loads(data),
        "action_url": action_url, "read": bool(read), "read_at": from_ms(read_at),
        "created_at": from_ms(created_at), "expires_at": from_ms(expires_at),
    }
    if event_id is not None:
        document["event_id"] = event_id
    if escalation_id is not None:
        document["escalation"] = {"id": escalation_id, **orjson.loads(escalation)}
        if len(row) > 16 and row[16] is not None:
            document["escalation"]["current"] = orjson.loads(row[16])
    return document


def _row(document: dict[str, Any]) -> tuple:
    return (str(document["_id"]), document["user_id"], document["seq"], document["type"],
            document["title"], document["message"], document["priority"],
            _json(document["data"]),
            document["action_url"], int(document["read"]), to_ms(document["read_at"]),
            to_ms(document["created_at"]), to_ms(document["expires_at"]), document.get("event_id"),
            *_escalation_columns(document.get("escalation")))


def _escalation_columns(escalation: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """A notification's escalation as its two columns: the id (indexed) and the rest as JSON."""
    if escalation is None:
        return None, None
    rest = {name: value for name, value in escalation.items() if name != "id"}
    return escalation["id"], _json(rest)


def _broadcast_row(document: dict[str, Any]) -> tuple:
    """A document without an audience is the default tenant's, as on MongoDB."""
    return (str(document["_id"]), document["title"], document["message"], document["priority"],
            _json(document["data"]), document["action_url"], to_ms(document["created_at"]),
            to_ms(document["expires_at"]), document.get("audience", DEFAULT))


def _broadcast_document(row: tuple) -> dict[str, Any]:
    id_, title, message, priority, data, action_url, created_at, expires_at, audience = row
    return {"_id": ObjectId(id_), "title": title, "message": message, "priority": priority,
            "data": json.loads(data), "action_url": action_url,
            "created_at": from_ms(created_at), "expires_at": from_ms(expires_at),
            "audience": audience}


def _event(row: tuple) -> dict[str, Any]:
    key, fingerprint, state, owner, notifications, created_at = row
    return {"_id": key, "type": fingerprint, "state": state, "owner": owner,
            "notifications": json.loads(notifications), "created_at": from_ms(created_at)}


def _json(value: Any) -> str:
    """Compact JSON for a stored `data` object (the standard library for what orjson refuses)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
