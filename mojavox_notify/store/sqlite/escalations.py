"""The embedded engine's escalations: each one a JSON document in `escalations.body` with the
columns it is found by, its timeline in `escalation_events`, its recipients the notifications
that carry its id. Functions take the connection first, as queries.py's do.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Sequence

import orjson

from .. import Created, DueShare, EscalationChange, Insertion, push_flags
from .execution import GivingWay, transaction
from .insertion import _insert_live, _insert_rows
from .queries import IN_CHUNK, _json_rows
from .rows import _json

EVENT_FIELDS = ("escalation_id", "at", "event", "user_id", "step", "channel", "once")
INSERT_EVENTS = (f"INSERT INTO escalation_events ({', '.join(EVENT_FIELDS)}) VALUES {{rows}} "
                 "ON CONFLICT (once) DO NOTHING")
# A multi-row update (insertion._insert_rows fills `{rows}`): the changes that won, the
# columns as _columns orders them.
CHANGE_ESCALATIONS = """
WITH changed (id, live_key, state, due_at, version, created_at, updated_at, body) AS (
    VALUES {rows})
UPDATE escalations SET live_key = changed.live_key, state = changed.state,
    due_at = changed.due_at, version = changed.version, created_at = changed.created_at,
    updated_at = changed.updated_at, body = changed.body
FROM changed WHERE escalations.id = changed.id"""
CHANGE_WIDTH = 8
#: Changes stored together (a few multi-row statements); a bulk write may let another write go
#: first between two parts, so a part is what a create may wait for.
CHANGE_PART = 25
#: Parts in one transaction at most when no write waits (its commit writes the pages they
#: changed; fewer parts per commit rewrote the shared pages more often: a 10,000-step burst
#: took 2.3 s with 4, 1.7 s with 20 in the full server, one run each; the store alone,
#: `bench escalation-writer`, was faster with 20 in 7 of 10 sweeps, by up to 0.35 s).
TRANSACTION_PARTS = 20


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
    return orjson.loads(row[0]), False


def _one(connection: sqlite3.Connection, where: str, value: str) -> dict | None:
    row = connection.execute(f"SELECT body FROM escalations WHERE {where} = ?", (value,)).fetchone()
    return orjson.loads(row[0]) if row else None


def _change(connection: sqlite3.Connection, way: GivingWay | None,
            changes: Sequence[EscalationChange], created_at: datetime) -> list[list[Created] | None]:
    """Compare-and-set on `version`; for the changes stored, their drafts inserted and their
    lines appended. CHANGE_PART changes at a time, each change with all that belongs to it;
    with `way` (a bulk write) the transaction is committed after a part when another write
    of this process waits for the turn, which then goes first."""
    outcomes: list[list[Created] | None] = []
    while len(outcomes) < len(changes):
        if outcomes and way is not None and way.wanted():
            way.give_way()
        with transaction(connection):
            for _ in range(TRANSACTION_PARTS):
                part = changes[len(outcomes):len(outcomes) + CHANGE_PART]
                outcomes += _change_part(connection, part, created_at)
                if len(outcomes) == len(changes) or (way is not None and way.wanted()):
                    break
    return outcomes


def _change_part(connection: sqlite3.Connection, changes: Sequence[EscalationChange],
                 created_at: datetime) -> list[list[Created] | None]:
    """A few statements for the part, each one step (one GIL hand-off, see _json_rows): the
    versions read in one row, which decides the changes that win while the write lock is
    held, then the winners written by multi-row statements."""
    versions = dict(_json_rows(connection, """
        SELECT json_group_array(json_array(id, version)) FROM escalations
        WHERE id IN ({users})""", {change.document["_id"] for change in changes}))
    outcomes = []
    for change in changes:  # (two changes of one escalation: the first wins)
        escalation_id = change.document["_id"]
        won = versions.get(escalation_id) == change.expected_version
        if won:
            versions[escalation_id] = change.document["version"]
        outcomes.append(won)
    won = [change for change, stored in zip(changes, outcomes) if stored]
    _insert_rows(connection, CHANGE_ESCALATIONS, CHANGE_WIDTH,
                 [(change.document["_id"], *_columns(change.document)) for change in won])
    created = iter(_insert_live(connection, [
        Insertion(list(change.drafts), None, push_flags(change.push, len(change.drafts)))
        for change in won if change.drafts], created_at))
    _insert_rows(connection, INSERT_EVENTS, len(EVENT_FIELDS),
                 [_event_row(event) for change in won for event in change.events])
    changed = iter(won)
    return [[next(created) for _ in next(changed).drafts] if stored else None
            for stored in outcomes]


def _due(connection: sqlite3.Connection, now_ms: int, limit: int,
         after: tuple[int, str] | None, share: DueShare | None) -> list[dict]:
    """In one row (one step, see _json_rows), sorted again here: the aggregate's order is
    the subquery's in practice, not by SQLite's promise."""
    conditions, parameters = ["due_at IS NOT NULL", "due_at <= ?"], [now_ms]
    if after is not None:
        conditions.append("(due_at, id) > (?, ?)")
        parameters += after
    if share is not None:
        conditions.append("(due_at % ? = ? OR due_at <= ?)")
        parameters += [share.count, share.index, share.everyone_before]
    [found] = connection.execute(f"""
        SELECT json_group_array(json(body)) FROM (
            SELECT body FROM escalations WHERE {" AND ".join(conditions)}
            ORDER BY due_at, id LIMIT ?)""", (*parameters, limit)).fetchone()
    return sorted(orjson.loads(found), key=lambda document: (document["due_at"], document["_id"]))


def _recipients(connection: sqlite3.Connection, escalation_ids: list[str]) -> dict[str, list]:
    recipients: dict[str, list] = {escalation_id: [] for escalation_id in escalation_ids}
    rows = _json_rows(connection, """
        SELECT json_group_array(json_array(
            escalation_id, user_id, id, coalesce(json_extract(escalation, '$.step'), 0),
            coalesce(json_extract(escalation, '$.round'), 0), created_at, read, read_at))
        FROM notifications WHERE escalation_id IN ({users})""", set(escalation_ids))
    rows.sort(key=lambda row: (row[5], row[2]))  # oldest first
    for escalation_id, user_id, notification_id, step, round_, created_at, read, read_at in rows:
        recipients[escalation_id].append({
            "user_id": user_id, "notification_id": notification_id, "step": step,
            "round": round_, "created_at": created_at, "read": bool(read), "read_at": read_at})
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
    return [orjson.loads(body) for (body,) in rows]


def _add_events(connection: sqlite3.Connection, events: Sequence[dict[str, Any]]) -> None:
    with transaction(connection):
        _insert_rows(connection, INSERT_EVENTS, len(EVENT_FIELDS), [_event_row(e) for e in events])


def _event_row(event: dict[str, Any]) -> tuple:
    return tuple(event.get(name) for name in EVENT_FIELDS)


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
            # Its notifications keep it as it ended (reads join the escalation while it exists).
            connection.execute(f"""
                UPDATE notifications SET escalation = json_set(notifications.escalation,
                                                               '$.current', json(e.body))
                FROM escalations e WHERE e.id = notifications.escalation_id
                AND e.id IN ({marks})""", chunk)
            connection.execute(f"DELETE FROM escalation_events WHERE escalation_id IN ({marks})",
                               chunk)
            connection.execute(f"DELETE FROM escalations WHERE id IN ({marks})", chunk)
    return len(ids)
