"""The embedded engine's tables and indexes, and files of earlier schemas brought up to date
once, at start-up (`PRAGMA user_version` holds the schema a file has).
"""

from __future__ import annotations

import logging
import sqlite3

from ...model import PRIORITIES
from ...tenants import DEFAULT
from .execution import transaction
from .rows import NEVER_MS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
# The notification columns files of schema 1 to 4 have (5 adds the escalation's two).
EARLIER_NOTIFICATION_COLUMNS = ("id, user_id, seq, type, title, message, priority, data, "
                                "action_url, read, read_at, created_at, expires_at, event_id")

# Stored by user and sequence number (the table is its own (user_id, seq) index): a user's
# page, backlog and unread ones are neighbours, and a new notification changes one page of the
# table where schema 1 also changed a (user, seq) index and an unread index, two pages at
# random places each (a 1,000-user alert at a million stored: 45 → 30 ms).
CREATE_NOTIFICATIONS = """
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    priority TEXT NOT NULL,
    data TEXT NOT NULL,
    action_url TEXT,
    read INTEGER NOT NULL,
    read_at INTEGER,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    event_id TEXT,
    escalation_id TEXT,
    escalation TEXT,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID"""

# A broadcast stored before audiences existed (schema 3) is the default tenant's.
BROADCAST_AUDIENCE = f"audience TEXT NOT NULL DEFAULT '{DEFAULT}'"

SCHEMA = f"""
{CREATE_NOTIFICATIONS};
CREATE UNIQUE INDEX IF NOT EXISTS notifications_id ON notifications (id);
CREATE INDEX IF NOT EXISTS notifications_expiring ON notifications (expires_at)
    WHERE expires_at < {NEVER_MS};
CREATE INDEX IF NOT EXISTS notifications_user_expiring ON notifications (user_id, expires_at)
    WHERE expires_at < {NEVER_MS};
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at);
-- An escalation's notifications (its recipients), and the escalations a user receives. Only
-- escalations' notifications are in these indexes, so other insertions do not write them.
CREATE INDEX IF NOT EXISTS notifications_escalation ON notifications (escalation_id, user_id)
    WHERE escalation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_user_escalation ON notifications (user_id, escalation_id)
    WHERE escalation_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS user_state (
    user_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    total INTEGER NOT NULL,
    {", ".join(f"unread_{priority} INTEGER NOT NULL" for priority in PRIORITIES)},
    expiry_due INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS channel_settings (
    user_id TEXT PRIMARY KEY,
    channels TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS push_subscriptions (
    endpoint TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_subscriptions_user ON push_subscriptions (user_id);

CREATE TABLE IF NOT EXISTS push_outbox (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    done TEXT NOT NULL,
    leased_until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_outbox_due ON push_outbox (due_at);

CREATE TABLE IF NOT EXISTS heartbeat (
    process TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    notifications TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    owner TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);

CREATE TABLE IF NOT EXISTS broadcasts (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    priority TEXT NOT NULL,
    data TEXT NOT NULL,
    action_url TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    {BROADCAST_AUDIENCE}
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS broadcasts_expiring ON broadcasts (expires_at);
CREATE INDEX IF NOT EXISTS broadcasts_audience ON broadcasts (audience, created_at);

-- A topic's members are neighbours in the table itself (a page or a count is a range of its
-- primary key, as fast at 100,000 members as at ten), and the index finds a member's topics.
CREATE TABLE IF NOT EXISTS topic_members (
    topic TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (topic, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS topic_members_member ON topic_members (member, topic);

-- An escalation is a JSON document (`body`) with the fields it is found by beside it: its key
-- while it is unresolved (unique: one unresolved escalation per key), when its next step or
-- lease is due, and its version, which every change compares and sets.
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY,
    live_key TEXT,
    state TEXT NOT NULL,
    due_at INTEGER,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS escalations_live_key ON escalations (live_key)
    WHERE live_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS escalations_due ON escalations (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS escalations_updated ON escalations (updated_at);

-- What happened to an escalation, in order. `once` (when set) keeps an event that may be
-- reported by several processes or tabs (seen, delivered) to one row.
CREATE TABLE IF NOT EXISTS escalation_events (
    position INTEGER PRIMARY KEY,
    escalation_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    user_id TEXT,
    step INTEGER,
    channel TEXT,
    once TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS escalation_events_of ON escalation_events (escalation_id, at);
"""


def _create_schema(connection: sqlite3.Connection) -> None:
    """Create the tables, or bring a file of an earlier schema up to date, in one transaction
    (processes starting together on one file: the first does it, the others find it done)."""
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch {mode} journal to WAL")
    with transaction(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"the file was written by a newer version (schema {version})")
        if version == 1:
            _cluster_notifications(connection)
        if version in (1, 2, 3):
            _broadcast_audiences(connection)
        if version in (2, 3, 4):
            _escalation_columns(connection)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        if version in (1, 2):
            _owned_claims(connection)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if version == 1:  # the rebuilt table went through the log: copy it back, truncate the log
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def _broadcast_audiences(connection: sqlite3.Connection) -> None:
    """Schema 3 → 4: broadcasts have an audience, the default tenant for those stored before
    (a column with a default: no row is rewritten). Before the schema's statements, which
    index the column; `topic_members` is new, so they create it."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(broadcasts)")}
    if columns and "audience" not in columns:
        connection.execute(f"ALTER TABLE broadcasts ADD COLUMN {BROADCAST_AUDIENCE}")


def _escalation_columns(connection: sqlite3.Connection) -> None:
    """Schema 4 → 5: a notification may belong to an escalation (columns with no default: no
    row is rewritten). Before the schema's statements, which index them."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(notifications)")}
    for column in ("escalation_id", "escalation"):
        if columns and column not in columns:
            connection.execute(f"ALTER TABLE notifications ADD COLUMN {column} TEXT")


def _owned_claims(connection: sqlite3.Connection) -> None:
    """Schema 2 → 3: claims have owners, and their keys namespaces."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
    if "owner" not in columns:
        connection.execute("ALTER TABLE events ADD COLUMN owner TEXT")
    _adopt_earlier_claims(connection)
    connection.execute("DROP INDEX IF EXISTS notifications_event")


def _adopt_earlier_claims(connection: sqlite3.Connection) -> None:
    """Claims an earlier release wrote, brought to this one's rules: a pending claim whose
    notifications were stored counts as done with them (a claim is now completed in the
    transaction that stores them), and keys get namespaces (`event:<id>` beside
    `request:<caller>:<key>`, so an event id can never pre-claim another caller's key)."""
    stored = connection.execute("""
        SELECT event_id, json_group_array(id) FROM notifications
        WHERE event_id IN (SELECT id FROM events WHERE state = 'pending') GROUP BY event_id""").fetchall()
    connection.executemany("""
        UPDATE events SET state = 'done', completed_at = created_at, notifications = ?
        WHERE id = ?""", [(ids, key) for key, ids in stored])
    connection.execute("""
        UPDATE OR IGNORE events SET id = 'event:' || id
        WHERE id NOT LIKE 'request:%' AND id NOT LIKE 'event:%'""")


def _cluster_notifications(connection: sqlite3.Connection) -> None:
    """Schema 1 → 2: the notifications table rebuilt in (user_id, seq) order, once."""
    count = connection.execute("SELECT count(*) FROM notifications").fetchone()[0]
    log.warning("storing %d notifications by user (storage schema 2), once; this takes about "
                "a minute per million", count)
    connection.execute("ALTER TABLE notifications RENAME TO notifications_schema1")
    connection.execute(CREATE_NOTIFICATIONS)
    connection.execute(f"""
        INSERT INTO notifications ({EARLIER_NOTIFICATION_COLUMNS})
        SELECT {EARLIER_NOTIFICATION_COLUMNS} FROM notifications_schema1 ORDER BY user_id, seq""")
    connection.execute("DROP TABLE notifications_schema1")  # and its indexes
