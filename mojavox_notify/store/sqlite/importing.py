"""Documents of the MongoDB shape (an nx-27017 data folder of the earlier embedded storage, read by
store/importer.py) copied into the file with their ids and sequence numbers, and every user's
counters rebuilt from the rows afterwards.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ...model import NEVER, PRIORITIES, utcnow
from .execution import transaction
from .insertion import INSERT_NOTIFICATIONS, NOTIFICATION_WIDTH, _multi_row
from .rows import NEVER_MS, STATE_COLUMNS, _row, to_ms
from .schema import _adopt_earlier_claims


def _import(connection, notifications, preferences, subscriptions, events) -> None:
    with transaction(connection):
        connection.executemany(_multi_row(INSERT_NOTIFICATIONS, NOTIFICATION_WIDTH, 1)
                               + " ON CONFLICT DO NOTHING",
                               (_row(_complete(document)) for document in notifications))
        for document in preferences:
            connection.execute("""
                INSERT INTO channel_settings (user_id, channels, updated_at) VALUES (?, ?, ?)
                ON CONFLICT DO NOTHING""",
                (document["_id"], json.dumps(document.get("channels", {})),
                 to_ms(_aware(document.get("updated_at")) or utcnow())))
        for document in subscriptions:
            keys = document.get("keys", {})
            connection.execute("""
                INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (document["endpoint"], document["user_id"], keys.get("p256dh", ""),
                 keys.get("auth", ""), to_ms(_aware(document.get("created_at")) or utcnow()),
                 to_ms(_aware(document.get("updated_at")) or utcnow())))
        for document in events:
            connection.execute("""
                INSERT INTO events (id, type, state, notifications, created_at, completed_at)
                VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (document["_id"], document["type"], document["state"],
                 json.dumps(document.get("notifications", [])),
                 to_ms(_aware(document.get("created_at")) or utcnow()),
                 to_ms(_aware(document.get("completed_at")))))
        _adopt_earlier_claims(connection)


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document with every field, whatever version wrote it."""
    return {"action_url": None, "data": {}, **document,
            "created_at": _aware(document["created_at"]),
            "expires_at": _aware(document.get("expires_at") or NEVER),
            "read_at": _aware(document.get("read_at"))}


def _aware(moment: datetime | str | None) -> datetime | None:
    """A time as nx-27017 stored it (a datetime, or an ISO string when it came through `$set`),
    as an aware UTC datetime."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _rebuild_states(connection) -> int:
    with transaction(connection):
        connection.execute("DELETE FROM user_state")
        unread = ", ".join(f"sum(read = 0 AND priority = '{p}')" for p in PRIORITIES)
        return connection.execute(f"""
            INSERT INTO user_state (user_id, {STATE_COLUMNS}, expiry_due)
            SELECT user_id, max(seq), count(*), {unread},
                   coalesce(min(CASE WHEN expires_at < {NEVER_MS} THEN expires_at END), {NEVER_MS})
            FROM notifications GROUP BY user_id""").rowcount
