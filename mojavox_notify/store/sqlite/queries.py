"""The embedded engine's functions run on the file other than storing notifications (insertion.py)
and start-up (schema.py): reads, and the writes of one transaction each. Each takes the
connection first; reads of many users go by chunks, each aggregated into one JSON array.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator

import orjson

from ...errors import NotFoundError
from ...model import PRIORITIES, ChannelPreference, PushSubscription
from ...tenants import EVERYONE
from .. import EventClaim, TopicFullError, UserState
from .execution import transaction
from .rows import (BROADCAST_COLUMNS, EVENT_COLUMNS, NEVER_MS,
                   NOTIFICATION_READ, NOTIFICATIONS_READ, STATE_COLUMNS, _event, _state)

CLEANUP_CHUNK = 5000
IN_CHUNK = 500  # ids per `IN (...)`, well under SQLite's variable limit


# -- reads --------------------------------------------------------------------------------------

def _select(connection: sqlite3.Connection, sql: str, parameters: tuple) -> list[tuple]:
    return connection.execute(sql, parameters).fetchall()


def _page(connection, user_id, limit, offset, unread_only, now_ms) -> list[tuple]:
    unread = "AND n.read = 0" if unread_only else ""
    return connection.execute(f"""
        SELECT {NOTIFICATION_READ} FROM {NOTIFICATIONS_READ}
        WHERE n.user_id = ? {unread} AND n.expires_at > ? ORDER BY n.seq DESC LIMIT ? OFFSET ?""",
        (user_id, now_ms, limit, offset)).fetchall()


def _active_broadcasts(connection, now_ms: int, limit: int, tenant: str | None) -> list[tuple]:
    """Unexpired broadcasts, newest first: the newest `limit` a tenant sees (its own and
    everyone's), or with no tenant the newest `limit` of each audience."""
    if tenant is not None:
        return connection.execute(f"""
            SELECT {BROADCAST_COLUMNS} FROM broadcasts
            WHERE audience IN (?, ?) AND expires_at > ?
            ORDER BY created_at DESC, id DESC LIMIT ?""", (tenant, EVERYONE, now_ms, limit)).fetchall()
    return connection.execute(f"""
        SELECT {BROADCAST_COLUMNS} FROM (
            SELECT {BROADCAST_COLUMNS}, row_number() OVER (
                PARTITION BY audience ORDER BY created_at DESC, id DESC) AS newest
            FROM broadcasts WHERE expires_at > ?)
        WHERE newest <= ? ORDER BY created_at DESC, id DESC""", (now_ms, limit)).fetchall()


def _topic_members(connection, topic: str, limit: int, after: str | None) -> list[str]:
    """A range of the primary key: as fast at the end of a 100,000-member topic as at its start."""
    if after is None:
        rows = connection.execute("""
            SELECT member FROM topic_members WHERE topic = ? ORDER BY member LIMIT ?""",
            (topic, limit))
    else:
        rows = connection.execute("""
            SELECT member FROM topic_members WHERE topic = ? AND member > ?
            ORDER BY member LIMIT ?""", (topic, after, limit))
    return [member for (member,) in rows]


def _topic_size(connection, topic: str) -> int:
    return connection.execute("SELECT count(*) FROM topic_members WHERE topic = ?",
                              (topic,)).fetchone()[0]


def _state_rows(connection, user_ids: set[str]) -> dict[str, tuple]:
    """Each of these users' `seq, total, unread_*, expiry_due`, by user (those with a row)."""
    rows = _json_rows(connection, f"""
        SELECT json_group_array(json_array(user_id, {STATE_COLUMNS}, expiry_due))
        FROM user_state WHERE user_id IN ({{users}})""", user_ids)
    return {row[0]: tuple(row[1:]) for row in rows}


def _counters_of(connection, user_ids: set[str]) -> dict[str, tuple[int, int, dict[str, int]]]:
    return {user: (row[0], row[1], dict(zip(PRIORITIES, row[2:2 + len(PRIORITIES)])))
            for user, row in _state_rows(connection, user_ids).items()}


def _channel_settings(connection, user_ids: set[str]) -> list[list[str]]:
    """[user_id, channels JSON] of those of these users who changed their channel settings."""
    return _json_rows(connection, """
        SELECT json_group_array(json_array(user_id, channels)) FROM channel_settings
        WHERE user_id IN ({users})""", user_ids)


def _preferences(rows: dict[str, str], users: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
    """Each of `users` that has a `channel_settings` row: its choices by type."""
    return {user: {name: ChannelPreference(**value) for name, value in json.loads(rows[user]).items()}
            for user in users if user in rows}


def _subscribed(connection, user_ids: set[str]) -> set[str]:
    """Which of these users have at least one push subscription."""
    return set(_json_rows(connection, """
        SELECT json_group_array(DISTINCT user_id) FROM push_subscriptions
        WHERE user_id IN ({users})""", user_ids))


def _holds(connection, claim: EventClaim) -> bool:
    """Whether the claim is still its owner's and pending (inside the caller's transaction)."""
    return connection.execute("""
        SELECT 1 FROM events WHERE id = ? AND owner IS ? AND state = 'pending'""",
        (claim.key, claim.owner)).fetchone() is not None


def _json_rows(connection, query: str, user_ids: set[str]) -> list:
    """A query that aggregates its rows into one JSON array (one step, one GIL hand-off, however
    many rows), for each chunk of `user_ids` bound as `{users}`; the arrays joined."""
    found = []
    for chunk in _chunks(sorted(user_ids), IN_CHUNK):
        found += orjson.loads(connection.execute(
            query.format(users=", ".join("?" * len(chunk))), chunk).fetchone()[0])
    return found


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- writes, one transaction each ---------------------------------------------------------------

def _execute(connection: sqlite3.Connection, sql: str, parameters: tuple) -> int:
    with transaction(connection):
        return connection.execute(sql, parameters).rowcount


def _change_state(connection, user_id: str, total: int, unread: Counter,
                  expiry_due: int | None = None) -> UserState:
    """Add `total` and per-priority `unread` deltas to the user's counters; the state after."""
    assignments = ["total = total + ?"] + [f"unread_{p} = unread_{p} + ?" for p in PRIORITIES]
    parameters = [total] + [unread.get(p, 0) for p in PRIORITIES]
    if expiry_due is not None:
        assignments.append("expiry_due = ?")
        parameters.append(expiry_due)
    row = connection.execute(
        f"UPDATE user_state SET {', '.join(assignments)} WHERE user_id = ? RETURNING {STATE_COLUMNS}",
        (*parameters, user_id)).fetchone()
    return _state(row) if row else UserState()


def _next_expiry(connection, user_id: str) -> int:
    row = connection.execute(f"""
        SELECT min(expires_at) FROM notifications WHERE user_id = ? AND expires_at < {NEVER_MS}""",
        (user_id,)).fetchone()
    return row[0] if row[0] is not None else NEVER_MS


def _sweep_user(connection, user_id: str, now_ms: int) -> UserState:
    """Delete the user's expired notifications and correct their counters."""
    with transaction(connection):
        deleted = connection.execute(f"""
            DELETE FROM notifications
            WHERE user_id = ? AND expires_at <= ? AND expires_at < {NEVER_MS}
            RETURNING read, priority""", (user_id, now_ms)).fetchall()
        unread = Counter()
        for read, priority in deleted:
            if not read:
                unread[priority] -= 1
        return _change_state(connection, user_id, -len(deleted), unread,
                             expiry_due=_next_expiry(connection, user_id))


def _mark_read(connection, user_id: str, notification_id: str, now_ms: int) -> tuple[bool, UserState]:
    with transaction(connection):
        row = connection.execute("""
            UPDATE notifications SET read = 1, read_at = ?
            WHERE id = ? AND user_id = ? AND read = 0 RETURNING priority""",
            (now_ms, notification_id, user_id)).fetchone()
        if row is not None:
            return True, _change_state(connection, user_id, 0, Counter({row[0]: -1}))
        exists = connection.execute("""
            SELECT 1 FROM notifications WHERE id = ? AND user_id = ? AND expires_at > ?""",
            (notification_id, user_id, now_ms)).fetchone()
        if exists is None:
            raise NotFoundError("no such notification")
        return False, _change_state(connection, user_id, 0, Counter())


def _mark_all_read(connection, user_id: str, now_ms: int) -> tuple[int, UserState]:
    with transaction(connection):
        changed = connection.execute("""
            UPDATE notifications SET read = 1, read_at = ? WHERE user_id = ? AND read = 0""",
            (now_ms, user_id)).rowcount
        row = connection.execute(f"""
            UPDATE user_state SET {", ".join(f"unread_{p} = 0" for p in PRIORITIES)}
            WHERE user_id = ? RETURNING {STATE_COLUMNS}""", (user_id,)).fetchone()
        return changed, _state(row) if row else UserState()


def _delete(connection, user_id: str, notification_id: str) -> UserState:
    with transaction(connection):
        row = connection.execute("""
            DELETE FROM notifications WHERE id = ? AND user_id = ? RETURNING read, priority""",
            (notification_id, user_id)).fetchone()
        if row is None:
            raise NotFoundError("no such notification")
        read, priority = row
        return _change_state(connection, user_id, -1, Counter() if read else Counter({priority: -1}))


def _delete_expired_chunk(connection, now_ms: int, cutoff_ms: int) -> int:
    with transaction(connection):
        deleted = connection.execute(f"""
            DELETE FROM notifications WHERE (user_id, seq) IN (
                SELECT user_id, seq FROM notifications
                WHERE (expires_at <= ? AND expires_at < {NEVER_MS}) OR created_at < ?
                LIMIT {CLEANUP_CHUNK})
            RETURNING user_id, read, priority""", (now_ms, cutoff_ms)).fetchall()
        totals: Counter = Counter()
        unread: dict[str, Counter] = defaultdict(Counter)
        for user_id, read, priority in deleted:
            totals[user_id] -= 1
            if not read:
                unread[user_id][priority] -= 1
        for user_id, total in totals.items():
            _change_state(connection, user_id, total, unread[user_id],
                          expiry_due=_next_expiry(connection, user_id))
        return len(deleted)


def _update_topic(connection, topic: str, add: list[str], remove: list[str],
                  max_members: int) -> int:
    """Members added (those already in ignored), then removed, then counted; rolled back with
    TopicFullError when that grew the topic past `max_members` (one already past it, the limit
    since lowered, may still lose members)."""
    with transaction(connection):
        added = connection.executemany("""
            INSERT INTO topic_members (topic, member) VALUES (?, ?) ON CONFLICT DO NOTHING""",
            [(topic, member) for member in add]).rowcount
        removed = connection.executemany("""
            DELETE FROM topic_members WHERE topic = ? AND member = ?""",
            [(topic, member) for member in remove]).rowcount
        size = _topic_size(connection, topic)
        if size > max_members and added > removed:
            raise TopicFullError(size, max_members)
        return size


def _update_preferences(connection, user_id: str, changes: dict[str, dict[str, bool]], now_ms: int) -> None:
    with transaction(connection):
        row = connection.execute("SELECT channels FROM channel_settings WHERE user_id = ?",
                                 (user_id,)).fetchone()
        channels = json.loads(row[0]) if row else {}
        for name, change in changes.items():
            channels[name] = {**channels.get(name, {}), **change}
        connection.execute("""
            INSERT INTO channel_settings (user_id, channels, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (user_id) DO UPDATE SET channels = excluded.channels,
                updated_at = excluded.updated_at""", (user_id, json.dumps(channels), now_ms))


def _claim_pushes(connection, now_ms: int, lease_until: int, limit: int) -> list[tuple]:
    with transaction(connection):
        return connection.execute("""
            UPDATE push_outbox SET leased_until = ? WHERE id IN (
                SELECT id FROM push_outbox WHERE due_at <= ? AND leased_until <= ?
                ORDER BY due_at LIMIT ?)
            RETURNING id, user_id, notification_id, priority, created_at, attempts, done""",
            (lease_until, now_ms, now_ms, limit)).fetchall()


def _claim_event(connection, key: str, fingerprint: str, owner: str,
                 now_ms: int) -> dict[str, Any] | None:
    with transaction(connection):
        inserted = connection.execute("""
            INSERT INTO events (id, type, state, notifications, created_at, owner)
            VALUES (?, ?, 'pending', '[]', ?, ?) ON CONFLICT (id) DO NOTHING""",
            (key, fingerprint, now_ms, owner)).rowcount
        if inserted:
            return None
        return _event(connection.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?",
                                         (key,)).fetchone())


def _claim_events(connection, claims: list[tuple[str, str, str]],
                  now_ms: int) -> list[dict[str, Any] | None]:
    """`_claim_event` for each of several distinct keys, in one transaction."""
    with transaction(connection):
        earlier = []
        for key, fingerprint, owner in claims:
            inserted = connection.execute("""
                INSERT INTO events (id, type, state, notifications, created_at, owner)
                VALUES (?, ?, 'pending', '[]', ?, ?) ON CONFLICT (id) DO NOTHING""",
                (key, fingerprint, now_ms, owner)).rowcount
            earlier.append(None if inserted else _event(connection.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (key,)).fetchone()))
        return earlier


def _save_subscription(connection, user_id: str, subscription: PushSubscription, keep: int,
                       now_ms: int) -> bool:
    """Insert, or renew for its owner only, as the user's newest row (a renewal replaces the
    row, so rowids follow the order of registration); then keep the user's `keep` newest."""
    with transaction(connection):
        row = connection.execute("SELECT user_id, created_at FROM push_subscriptions "
                                 "WHERE endpoint = ?", (subscription.endpoint,)).fetchone()
        if row is not None and row[0] != user_id:
            return False
        connection.execute("""
            INSERT OR REPLACE INTO push_subscriptions
                (endpoint, user_id, p256dh, auth, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)""", (subscription.endpoint, user_id, subscription.p256dh,
                                           subscription.auth, row[1] if row else now_ms, now_ms))
        connection.execute("""
            DELETE FROM push_subscriptions WHERE user_id = ? AND rowid NOT IN (
                SELECT rowid FROM push_subscriptions WHERE user_id = ?
                ORDER BY rowid DESC LIMIT ?)""", (user_id, user_id, keep))
        return True
