"""The embedded engine's escalations: each one a JSON document in `escalations.body` with the
columns it is found by, its timeline in `escalation_events`, its recipients the notifications
that carry its id. Functions take the connection first, as queries.py's do.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Sequence

from .execution import transaction
from .queries import IN_CHUNK
from .rows import _json

EVENT_FIELDS = ("escalation_id", "at", "event", "user_id", "step", "channel", "once")


def _columns(document: dict[str, Any]) -> tuple:
    return (document.get("live_key"), document["state"], document.get("due_at"),
            document["version"], document["created_at"], document["updated_at"],
            _json(document))


def _open(connection: sqlite3.Connection, document: dict[str, Any]) -> tuple[dict, bool]:
    """Inserted unless its key has an unresolved escalation (the unique index decides, so two
    processes opening one key at once cannot both succeed)."""
    with transaction(connection):
        inserted = connection.execute("""
            INSERT INTO escalations (id, live_key, state, due_at, version, created_at,
                                     updated_at, body)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (live_key) WHERE live_key IS NOT NULL
            DO NOTHING""", (document["_id"], *_columns(document))).rowcount
        if inserted:
            return document, True
        row = connection.execute("SELECT body FROM escalations WHERE live_key = ?",
                                 (document["live_key"],)).fetchone()
    return json.loads(row[0]), False


def _one(connection: sqlite3.Connection, where: str, value: str) -> dict | None:
    row = connection.execute(f"SELECT body FROM escalations WHERE {where} = ?", (value,)).fetchone()
    return json.loads(row[0]) if row else None


def _change(connection: sqlite3.Connection,
            changes: Sequence[tuple[dict[str, Any], int, dict[str, Any]]]) -> list[bool]:
    """Compare-and-set on `version`, and the new `shown` on the escalation's notifications."""
    stored = []
    with transaction(connection):
        for document, expected, shown in changes:
            changed = connection.execute("""
                UPDATE escalations SET live_key = ?, state = ?, due_at = ?, version = ?,
                                       created_at = ?, updated_at = ?, body = ?
                WHERE id = ? AND version = ?""",
                (*_columns(document), document["_id"], expected)).rowcount
            if changed:
                connection.execute("""
                    UPDATE notifications SET escalation = json_set(escalation, '$.shown', json(?))
                    WHERE escalation_id = ?""", (_json(shown), document["_id"]))
            stored.append(bool(changed))
    return stored


def _due(connection: sqlite3.Connection, now_ms: int, limit: int) -> list[dict]:
    rows = connection.execute("""
        SELECT body FROM escalations WHERE due_at IS NOT NULL AND due_at <= ?
        ORDER BY due_at LIMIT ?""", (now_ms, limit)).fetchall()
    return [json.loads(body) for (body,) in rows]


def _recipients(connection: sqlite3.Connection, escalation_ids: list[str]) -> dict[str, list]:
    recipients: dict[str, list] = {escalation_id: [] for escalation_id in escalation_ids}
    for start in range(0, len(escalation_ids), IN_CHUNK):
        chunk = escalation_ids[start:start + IN_CHUNK]
        rows = connection.execute(f"""
            SELECT escalation_id, user_id, id, escalation, created_at, read, read_at
            FROM notifications WHERE escalation_id IN ({", ".join("?" * len(chunk))})
            ORDER BY created_at, id""", chunk).fetchall()
        for escalation_id, user_id, notification_id, escalation, created_at, read, read_at in rows:
            told = json.loads(escalation)
            recipients[escalation_id].append({
                "user_id": user_id, "notification_id": notification_id,
                "step": told.get("step", 0), "round": told.get("round", 0),
                "created_at": created_at, "read": bool(read), "read_at": read_at})
    return recipients


def _of_user(connection: sqlite3.Connection, user_id: str, states: Sequence[str],
             limit: int) -> list[dict]:
    marks = ", ".join("?" * len(states))
    rows = connection.execute(f"""
        SELECT body FROM escalations
        WHERE id IN (SELECT DISTINCT escalation_id FROM notifications
                     WHERE user_id = ? AND escalation_id IS NOT NULL)
          AND state IN ({marks})
        ORDER BY created_at DESC, id DESC LIMIT ?""", (user_id, *states, limit)).fetchall()
    return [json.loads(body) for (body,) in rows]


def _add_events(connection: sqlite3.Connection, events: Sequence[dict[str, Any]]) -> None:
    with transaction(connection):
        connection.executemany(f"""
            INSERT INTO escalation_events ({", ".join(EVENT_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (once) DO NOTHING""",
            [tuple(event.get(name) for name in EVENT_FIELDS) for event in events])


def _events(connection: sqlite3.Connection, escalation_id: str) -> list[dict]:
    rows = connection.execute(f"""
        SELECT {", ".join(EVENT_FIELDS)} FROM escalation_events WHERE escalation_id = ?
        ORDER BY at, position""", (escalation_id,)).fetchall()
    return [dict(zip(EVENT_FIELDS, row)) for row in rows]


def _delete_finished(connection: sqlite3.Connection, before_ms: int) -> int:
    with transaction(connection):
        ids = [id_ for (id_,) in connection.execute("""
            SELECT id FROM escalations WHERE state IN ('resolved', 'unanswered')
            AND updated_at < ?""", (before_ms,))]
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            connection.execute(f"DELETE FROM escalation_events WHERE escalation_id IN ({marks})",
                               chunk)
            connection.execute(f"DELETE FROM escalations WHERE id IN ({marks})", chunk)
    return len(ids)
