"""The embedded engine: SQLite in this process, WAL mode, real indexes.

Writes run on one thread and reads on another, each with its own connection, so a long write
transaction (a 1,000-user alert) neither blocks the event loop nor holds up reads; a third
copies the write-ahead log back into the file (checkpoints), so no commit waits for that. Small
operations (a create's preference lookup and its insert, up to `storage.sqlite_inline_limit`
drafts or users) run on the event loop itself: they take tens of microseconds, while a trip
to a thread costs a hand-off and waiting for the GIL back, which under load was most of a
create's latency. While another process holds the write turn, a small insert is tried again
from the loop every half millisecond (the loop serves everything else meanwhile, and never
waits for a lock); one that fails goes to its thread, which reports the failure.

Every write is one `BEGIN IMMEDIATE` transaction, which SQLite serializes across threads and
processes: a notification and its user's counters change together, and sequence number N+1 can
only be committed after N. Several processes on one host may share the file (WAL); a writer
waits up to `storage.busy_timeout_seconds` for another's lock, taking turns through `WriteTurn`.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import orjson

from ..coalesce import Coalescer
from ..errors import NotFoundError, StorageUnavailableError
from ..ids import ObjectId
from ..model import NEVER, PRIORITIES, ChannelPreference, Draft, PushSubscription, to_document, utcnow
from ..settings import StorageSettings
from . import (ClaimLostError, Created, EventClaim, Insertion, NotificationStore, PushJob, UserState,
               push_flags)

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NEVER_MS = (NEVER - EPOCH) // timedelta(milliseconds=1)
SCHEMA_VERSION = 3
CLEANUP_CHUNK = 5000
IN_CHUNK = 500  # ids per `IN (...)`, well under SQLite's variable limit
# Drafts (or users looked up) that queue while a transaction runs are served by the next one,
# up to this many at once (a single insertion of more is served alone).
BATCH_DRAFTS = 2000
PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # this process's heartbeat row
# The first write after a checkpoint has the checkpoint thread copy the write-ahead log back into
# the file this long after it (SQLite's own checkpoint runs inside the commit that passes 1,000
# pages). Not at once: the copy would compete with delivering what was just written; and a page
# written many times meanwhile (a user's counters, an index's newest page) is copied once. A
# second rather than a quarter took a tenth off the CPU of a 1,000-user alert at 1M stored.
CHECKPOINT_DELAY_SECONDS = 1.0
# A log a checkpoint cannot catch up with (writes back to back, e.g. an import) never starts
# over; past this many pages the committing write checkpoints itself, so the log restarts.
CHECKPOINT_IN_WRITE_PAGES = 16384
CHECKPOINT_NICENESS = 10
# Below this, the disk counts as full: writes are about to fail, so health says so first.
MIN_FREE_BYTES = 1 << 20

UNREAD_COLUMNS = ", ".join(f"unread_{priority}" for priority in PRIORITIES)
STATE_COLUMNS = f"seq, total, {UNREAD_COLUMNS}"
NOTIFICATION_COLUMNS = ("id, user_id, seq, type, title, message, priority, data, action_url, "
                        "read, read_at, created_at, expires_at, event_id")

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
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID"""

SCHEMA = f"""
{CREATE_NOTIFICATIONS};
CREATE UNIQUE INDEX IF NOT EXISTS notifications_id ON notifications (id);
CREATE INDEX IF NOT EXISTS notifications_expiring ON notifications (expires_at)
    WHERE expires_at < {NEVER_MS};
CREATE INDEX IF NOT EXISTS notifications_user_expiring ON notifications (user_id, expires_at)
    WHERE expires_at < {NEVER_MS};
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at);

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
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS broadcasts_expiring ON broadcasts (expires_at);
"""
BROADCAST_COLUMNS = "id, title, message, priority, data, action_url, created_at, expires_at"

# One counter row per user, created by its first notification. `expiry_due` is the earliest
# expiry among the user's notifications that expire at all: reads sweep only when it has come.
# A batch computes the new counters itself (it holds the write lock) and writes them back here.
SAVE_STATES = (f"INSERT INTO user_state (user_id, {STATE_COLUMNS}, expiry_due) VALUES {{rows}} "
               f"""ON CONFLICT (user_id) DO UPDATE SET
    seq = excluded.seq,
    total = excluded.total,
    {", ".join(f"unread_{p} = excluded.unread_{p}" for p in PRIORITIES)},
    expiry_due = min(expiry_due, excluded.expiry_due)""")
STATE_WIDTH = 4 + len(PRIORITIES)

INSERT_NOTIFICATIONS = f"INSERT INTO notifications ({NOTIFICATION_COLUMNS}) VALUES {{rows}}"
NOTIFICATION_WIDTH = 14

INSERT_PUSH_JOBS = """
INSERT INTO push_outbox (user_id, notification_id, priority, created_at, due_at, attempts, done,
                         leased_until) VALUES {rows}"""
PUSH_JOB_WIDTH = 8
# Rows per multi-row statement, at most (a power of two; a batch takes as few as it can).
ROWS_PER_STATEMENT = 256


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
    (id_, user_id, seq, type_, title, message, priority, data, action_url, read, read_at,
     created_at, expires_at, event_id) = row
    document = {
        "_id": ObjectId(id_), "user_id": user_id, "seq": seq, "type": type_, "title": title,
        "message": message, "priority": priority, "data": json.loads(data),
        "action_url": action_url, "read": bool(read), "read_at": from_ms(read_at),
        "created_at": from_ms(created_at), "expires_at": from_ms(expires_at),
    }
    if event_id is not None:
        document["event_id"] = event_id
    return document


def _row(document: dict[str, Any]) -> tuple:
    return (str(document["_id"]), document["user_id"], document["seq"], document["type"],
            document["title"], document["message"], document["priority"],
            _json(document["data"]),
            document["action_url"], int(document["read"]), to_ms(document["read_at"]),
            to_ms(document["created_at"]), to_ms(document["expires_at"]), document.get("event_id"))


def _broadcast_row(document: dict[str, Any]) -> tuple:
    return (str(document["_id"]), document["title"], document["message"], document["priority"],
            _json(document["data"]), document["action_url"], to_ms(document["created_at"]),
            to_ms(document["expires_at"]))


def _broadcast_document(row: tuple) -> dict[str, Any]:
    id_, title, message, priority, data, action_url, created_at, expires_at = row
    return {"_id": ObjectId(id_), "title": title, "message": message, "priority": priority,
            "data": json.loads(data), "action_url": action_url,
            "created_at": from_ms(created_at), "expires_at": from_ms(expires_at)}


def _json(value: Any) -> str:
    """Compact JSON for a stored `data` object (the standard library for what orjson refuses)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front (no upgrade deadlocks)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
    connection.commit()


#: What `_inline_run` answers for a write while another writer holds the turn.
TURN_TAKEN = object()
KEPT_WRITING = "another process kept writing past storage.busy_timeout_seconds"


class WriteTurn:
    """Whose turn it is to write among the processes sharing the file (`serve --workers`): an
    flock on `<file>-writer.lock`, tried every half millisecond until
    `storage.busy_timeout_seconds`. SQLite's own lock stays the guard of correctness; this only
    spares its busy handler, whose sleeps grow from 1 to 100 ms, so a waiting process no longer
    sleeps through the moments the other leaves the lock free (measured with two workers: lock
    waits of 80-110 ms at p99)."""

    POLL_SECONDS = 0.0005

    def __init__(self, database: Path, timeout: float):
        self._path = database.with_name(database.name + "-writer.lock")
        self._timeout = timeout
        self._fd: int | None = None

    def run(self, function: Callable, connection: sqlite3.Connection, *args: Any) -> Any:
        deadline = time.monotonic() + self._timeout
        while not self._take():
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"database is locked: {KEPT_WRITING}")
            time.sleep(self.POLL_SECONDS)
        return self._in_turn(function, connection, args)

    def run_now(self, function: Callable, connection: sqlite3.Connection,
                *args: Any) -> tuple[bool, Any]:
        """(True, result) when the turn was free at once, else (False, None) without waiting."""
        if not self._take():
            return False, None
        return True, self._in_turn(function, connection, args)

    def _take(self) -> bool:
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _in_turn(self, function: Callable, connection: sqlite3.Connection, args: tuple) -> Any:
        try:
            return function(connection, *args)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as error:
                raise sqlite3.OperationalError(f"cannot open {self._path}: "
                                               f"{error.strerror or error}") from None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SqliteStore(NotificationStore):
    def __init__(self, path: Path, settings: StorageSettings):
        self.path = Path(path)
        self.description = f"embedded SQLite {self.path}"
        self._settings = settings
        self._turn = WriteTurn(self.path, settings.busy_timeout_seconds)
        # The event loop's own connection and turn (a lock file descriptor of its own, so its
        # turn excludes the writer thread's as it does other processes').
        self._inline_turn = WriteTurn(self.path, 0)
        self._inline: sqlite3.Connection | None = None
        self._inline_limit = settings.sqlite_inline_limit
        # Inline writes only where a commit does not wait for the disk (WAL, synchronous=NORMAL).
        self._inline_writes = settings.sqlite_synchronous == "normal"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint",
                                                initializer=_lower_priority)
        self._checkpoint_queued = False
        self._closing = threading.Event()
        self._inserts = Coalescer(self._insert_batch, BATCH_DRAFTS,
                                  weight=lambda insertion: len(insertion.drafts))
        self._preference_reads = Coalescer(self._preferences_batch, BATCH_DRAFTS, weight=len)
        self._state_reads = Coalescer(self._states_batch, BATCH_DRAFTS)
        self._local = threading.local()

    # -- connections and threads ---------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open_connection(
                self._settings.busy_timeout_seconds)
        return connection

    def _open_connection(self, busy_timeout: float) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        connection.execute(f"PRAGMA synchronous = {self._settings.sqlite_synchronous.upper()}")
        connection.execute(f"PRAGMA cache_size = -{self._settings.sqlite_cache_mib * 1024}")  # KiB
        connection.execute("PRAGMA temp_store = MEMORY")
        # The checkpoint thread's work; past this many pages (64 MiB), writes keep up
        # without it, so the committing writer checkpoints as SQLite does by default.
        connection.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_IN_WRITE_PAGES}")
        return connection

    def _inline_run(self, write: bool, function: Callable, *args: Any) -> tuple[bool, Any]:
        """On the event loop, if it can start at once: (True, result), or (False, None) when it
        failed (its thread then runs it, and reports a failure), and always with
        `storage.sqlite_inline_limit` 0; (False, TURN_TAKEN) for a write while another writer
        holds the turn."""
        if not self._inline_limit:
            return False, None
        try:
            if self._inline is None:
                self._inline = self._open_connection(busy_timeout=0)
            if not write:
                return True, function(self._inline, *args)
            done, result = self._inline_turn.run_now(function, self._inline, *args)
        except sqlite3.Error:  # busy, or failing: the thread's attempt answers for it
            self._close_inline()
            return False, None
        if not done:
            return False, TURN_TAKEN
        self._queue_checkpoint()
        return True, result

    def _close_inline(self) -> None:
        connection, self._inline = self._inline, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def _discard_connection(self) -> None:
        """After a failure, reopen on the next call (the file may have come back)."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def _guarded(self, function: Callable, args: tuple) -> Any:
        try:
            return function(self._connection(), *args)
        except sqlite3.Error as error:
            self._discard_connection()
            raise StorageUnavailableError(f"embedded storage failed: {error}") from error

    def _written(self, function: Callable, connection: sqlite3.Connection, *args: Any) -> Any:
        """A write in its turn (on the writer thread); the first since the last checkpoint
        queues the next one, CHECKPOINT_DELAY_SECONDS later."""
        result = self._turn.run(function, connection, *args)
        self._queue_checkpoint()
        return result

    def _queue_checkpoint(self) -> None:
        if not self._checkpoint_queued:
            self._checkpoint_queued = True
            self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """PASSIVE: copies what no reader still needs and never waits for a lock, so it cannot
        hold up a write; the writer starts the log over once all of it is copied. Closing the
        store ends the wait."""
        self._closing.wait(CHECKPOINT_DELAY_SECONDS)
        self._checkpoint_queued = False  # writes from now on are not in this copy: queue another
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            self._discard_connection()
            log.warning("checkpointing %s failed (a later write retries): %s", self.path, error)

    @property
    def _write_timeout(self) -> float:
        """The operation timeout plus the time a write may wait for another process's lock."""
        return self._settings.operation_timeout_seconds + self._settings.busy_timeout_seconds

    async def _write(self, function: Callable, *args: Any) -> Any:
        """On the writer thread; gives up (503) after `_write_timeout`."""
        return await self._run(self._writer, functools.partial(self._written, function), args,
                               self._write_timeout)

    async def _read(self, function: Callable, *args: Any) -> Any:
        return await self._run(self._reader, function, args, self._settings.operation_timeout_seconds)

    async def _background(self, function: Callable, *args: Any) -> Any:
        """A write with no time limit: start-up, cleanup, import."""
        return await self._run(self._writer, functools.partial(self._written, function), args,
                               None)

    async def _run(self, executor: ThreadPoolExecutor, function: Callable, args: tuple,
                   timeout: float | None) -> Any:
        running = asyncio.get_running_loop().run_in_executor(executor, self._guarded, function, args)
        try:
            async with asyncio.timeout(timeout):  # (wait_for may swallow a cancellation in 3.11)
                return await running
        except StorageUnavailableError as error:
            self._report_failure(error)
            raise
        except asyncio.TimeoutError:
            raise self._unavailable(f"embedded storage did not answer within {timeout:g} s") from None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageUnavailableError(
                f"cannot create the storage folder {self.path.parent}: "
                f"{error.strerror or error}") from None
        await self._background(_create_schema)

    async def close(self) -> None:
        self._closing.set()
        self._close_inline()
        self._inline_turn.close()
        loop = asyncio.get_running_loop()
        for executor in (self._writer, self._reader, self._checkpointer):
            await loop.run_in_executor(executor, self._discard_connection)
            executor.shutdown(wait=True)
        self._turn.close()

    async def ping(self) -> bool:
        try:
            await self._read(lambda connection: connection.execute("SELECT 1").fetchone())
            return True
        except StorageUnavailableError:
            return False

    async def probe(self) -> None:
        free = await asyncio.get_running_loop().run_in_executor(self._reader, _free_bytes, self.path.parent)
        if free < MIN_FREE_BYTES:
            raise self._unavailable(f"the disk of {self.path} is full ({free} bytes free)")
        await self._read(lambda connection: connection.execute(
            "SELECT count(*) FROM heartbeat").fetchone())
        await self._write(_execute, """
            INSERT INTO heartbeat (process, at) VALUES (?, ?)
            ON CONFLICT (process) DO UPDATE SET at = excluded.at""",
            (PROCESS, to_ms(utcnow())))

    # -- notifications -------------------------------------------------------------------------

    async def insert_many(self, drafts: list[Draft], claim: EventClaim | None = None,
                          push: Sequence[bool] = ()) -> list[Created]:
        """Stored in one transaction with the other insertions queued meanwhile (coalesce.py).
        One given up on (503) is marked abandoned, so no later attempt of its batch on the
        loop writes it; one already on the writer thread may still commit, which its claim
        (if any) makes harmless: then the claim is completed, and a retry finds that."""
        if not drafts:
            return []
        insertion = Insertion(drafts, claim, push_flags(push, len(drafts)))
        try:
            created = await self._queued(self._inserts, insertion, self._write_timeout)
        except StorageUnavailableError:
            insertion.abandoned = True
            raise
        if isinstance(created, ClaimLostError):
            raise created
        return created

    async def _queued(self, coalescer: Coalescer, item: Any, timeout: float) -> Any:
        """A coalesced call, given up (503) `timeout` after it queued, not after its batch began.
        A write given up on may still be committed by its batch; its sockets then find it like
        any other gap (by the next notification, or `since`)."""
        try:
            async with asyncio.timeout(timeout):
                return await coalescer(item)
        except TimeoutError:
            raise self._unavailable(f"embedded storage did not answer within {timeout:g} s") from None

    async def _insert_batch(self, insertions: list["Insertion"]) -> list:
        if self._inline_writes and sum(len(i.drafts) for i in insertions) <= self._inline_limit:
            created = await self._insert_on_loop(insertions)
            if created is not None:
                return created
        return await self._write(_insert_many, insertions, utcnow())

    async def _insert_on_loop(self, insertions: list["Insertion"]) -> list | None:
        """While another writer (a worker) holds the turn, the loop tries again every
        WriteTurn.POLL_SECONDS, serving everything else in between, so the turn is then held
        only as long as the work takes (on the writer thread it was also held while the thread
        waited for the GIL back). None when it failed: the thread's attempt answers for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_timeout
        while True:
            done, created = self._inline_run(True, _insert_many, insertions, utcnow())
            if done:
                return created
            if created is not TURN_TAKEN:
                return None
            if loop.time() >= deadline:
                raise self._unavailable(f"embedded storage: {KEPT_WRITING}")
            await asyncio.sleep(WriteTurn.POLL_SECONDS)

    async def state(self, user_id: str) -> UserState:
        """On the loop when it can (a connect's one read), else together with the other users'
        states queued meanwhile (a reconnect storm)."""
        done, rows = self._inline_run(False, _state_rows, {user_id})
        if done:
            row = rows.get(user_id)
        else:
            row = await self._queued(self._state_reads, user_id,
                                     self._settings.operation_timeout_seconds)
        if row is None:
            return UserState()
        if row[-1] <= to_ms(utcnow()):
            return await self._write(_sweep_user, user_id, to_ms(utcnow()))
        return _state(row)

    async def list(self, user_id: str, limit: int, offset: int,
                   unread_only: bool) -> tuple[list[dict], int]:
        state = await self.state(user_id)
        rows = await self._read(_page, user_id, limit, offset, unread_only, to_ms(utcnow()))
        return [_document(row) for row in rows], (state.unread_total if unread_only else state.total)

    async def after(self, user_id: str, seq: int, limit: int) -> list[dict]:
        rows = await self._read(_select, f"""
            SELECT {NOTIFICATION_COLUMNS} FROM notifications
            WHERE user_id = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?""",
            (user_id, seq, to_ms(utcnow()), limit))
        return [_document(row) for row in rows]

    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        rows = await self._read(_select, f"""
            SELECT {NOTIFICATION_COLUMNS} FROM notifications
            WHERE user_id = ? AND seq > ? AND seq <= ? AND expires_at > ?
            ORDER BY seq DESC LIMIT ?""", (user_id, after_seq, up_to_seq, to_ms(utcnow()), limit))
        return [_document(row) for row in rows]

    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        rows = await self._read(_select, f"""
            SELECT {NOTIFICATION_COLUMNS} FROM notifications
            WHERE id = ? AND user_id = ? AND expires_at > ?""",
            (str(notification_id), user_id, to_ms(utcnow())))
        if not rows:
            raise NotFoundError("no such notification")
        return _document(rows[0])

    async def mark_read(self, user_id: str, notification_id: ObjectId) -> tuple[bool, UserState]:
        return await self._write(_mark_read, user_id, str(notification_id), to_ms(utcnow()))

    async def mark_all_read(self, user_id: str) -> tuple[int, UserState]:
        return await self._write(_mark_all_read, user_id, to_ms(utcnow()))

    async def delete(self, user_id: str, notification_id: ObjectId) -> UserState:
        return await self._write(_delete, user_id, str(notification_id))

    async def delete_expired(self, retention_days: int) -> int:
        now = utcnow()
        cutoff = to_ms(now - timedelta(days=retention_days))
        removed = 0
        while True:
            deleted = await self._background(_delete_expired_chunk, to_ms(now), cutoff)
            removed += deleted
            if deleted < CLEANUP_CHUNK:
                return removed

    # -- broadcasts ----------------------------------------------------------------------------

    async def insert_broadcast(self, document: dict[str, Any]) -> None:
        await self._write(_execute, f"INSERT INTO broadcasts ({BROADCAST_COLUMNS}) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _broadcast_row(document))

    async def active_broadcasts(self, limit: int) -> list[dict[str, Any]]:
        rows = await self._read(_select, f"""
            SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE expires_at > ?
            ORDER BY created_at DESC, id DESC LIMIT ?""", (to_ms(utcnow()), limit))
        return [_broadcast_document(row) for row in rows]

    async def delete_expired_broadcasts(self) -> int:
        return await self._background(_execute, "DELETE FROM broadcasts WHERE expires_at <= ?",
                                      (to_ms(utcnow()),))

    # -- channel preferences -----------------------------------------------------------------

    async def preferences_of_many(self, user_ids: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
        """Read together with the other lookups queued meanwhile (coalesce.py)."""
        wanted = tuple(dict.fromkeys(user_ids))
        if not wanted:
            return {}
        if len(wanted) <= self._inline_limit:
            done, rows = self._inline_run(False, _channel_settings, set(wanted))
            if done:
                return _preferences(dict(rows), wanted)
        return await self._queued(self._preference_reads, wanted, self._settings.operation_timeout_seconds)

    async def _states_batch(self, user_ids: list[str]) -> list[tuple | None]:
        found = await self._read(_state_rows, set(user_ids))
        return [found.get(user_id) for user_id in user_ids]

    async def _preferences_batch(self, lookups: list[tuple[str, ...]]) -> list[dict]:
        rows = dict(await self._read(_channel_settings, {user for users in lookups for user in users}))
        return [_preferences(rows, users) for users in lookups]

    async def update_preferences(self, user_id: str, changes: dict[str, dict[str, bool]]) -> None:
        if changes:
            await self._write(_update_preferences, user_id, changes, to_ms(utcnow()))

    # -- push subscriptions ------------------------------------------------------------------

    async def save_push_subscription(self, user_id: str, subscription: PushSubscription,
                                     keep: int) -> bool:
        return await self._write(self._save_subscription, user_id, subscription, keep,
                                 to_ms(utcnow()))

    @staticmethod
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

    async def remove_push_subscription(self, user_id: str, endpoint: str) -> None:
        removed = await self._write(_execute, """
            DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id = ?""", (endpoint, user_id))
        if not removed:
            raise NotFoundError("no such push subscription")

    async def forget_push_subscription(self, endpoint: str) -> None:
        await self._write(_execute, "DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))

    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushJob]:
        now = to_ms(utcnow())
        rows = await self._write(_claim_pushes, now, now + int(lease_seconds * 1000), limit)
        return [PushJob(str(id_), user_id, notification_id, priority, from_ms(created_at),
                        attempts, tuple(json.loads(done)))
                for id_, user_id, notification_id, priority, created_at, attempts, done in rows]

    async def reschedule_push(self, job_id: str, delay_seconds: float, attempts: int,
                              done: Sequence[str]) -> None:
        await self._write(_execute, """
            UPDATE push_outbox SET due_at = ?, attempts = ?, done = ?, leased_until = 0
            WHERE id = ?""", (to_ms(utcnow()) + int(delay_seconds * 1000), attempts,
                              json.dumps(list(done)), int(job_id)))

    async def finish_push(self, job_id: str) -> None:
        await self._write(_execute, "DELETE FROM push_outbox WHERE id = ?", (int(job_id),))

    async def push_backlog(self) -> int:
        rows = await self._read(_select, "SELECT count(*) FROM push_outbox", ())
        return rows[0][0]

    async def push_subscriptions_of(self, user_id: str) -> list[dict]:
        rows = await self._read(_select, """
            SELECT endpoint, user_id, p256dh, auth, created_at, updated_at
            FROM push_subscriptions WHERE user_id = ? ORDER BY created_at""", (user_id,))
        return [{"endpoint": endpoint, "user_id": owner, "keys": {"p256dh": p256dh, "auth": auth},
                 "created_at": from_ms(created_at), "updated_at": from_ms(updated_at)}
                for endpoint, owner, p256dh, auth, created_at, updated_at in rows]

    # -- idempotent events -------------------------------------------------------------------

    async def claim_event(self, key: str, fingerprint: str, owner: str) -> dict[str, Any] | None:
        return await self._write(_claim_event, key, fingerprint, owner, to_ms(utcnow()))

    async def take_over_event(self, key: str, stale_owner: str | None, owner: str) -> bool:
        return bool(await self._write(_execute, """
            UPDATE events SET owner = ?, created_at = ?
            WHERE id = ? AND owner IS ? AND state = 'pending'""",
            (owner, to_ms(utcnow()), key, stale_owner)))

    async def complete_event(self, claim: EventClaim, notification_ids: list[str]) -> None:
        await self._write(_execute, """
            UPDATE events SET state = 'done', notifications = ?, completed_at = ?
            WHERE id = ? AND owner IS ? AND state = 'pending'""",
            (json.dumps(notification_ids), to_ms(utcnow()), claim.key, claim.owner))

    async def release_event(self, claim: EventClaim) -> None:
        await self._write(_execute, """
            DELETE FROM events WHERE id = ? AND owner IS ? AND state = 'pending'""",
            (claim.key, claim.owner))

    async def event(self, key: str) -> dict[str, Any] | None:
        rows = await self._read(_select, f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (key,))
        return _event(rows[0]) if rows else None

    async def delete_expired_events(self, before: datetime) -> int:
        return await self._background(_execute, "DELETE FROM events WHERE created_at < ?",
                                      (to_ms(before),))

    # -- import and repair ---------------------------------------------------------------------

    async def import_documents(self, notifications: list[dict], preferences: list[dict],
                               subscriptions: list[dict], events: list[dict]) -> None:
        """Copy documents of the MongoDB shape in, keeping ids and sequence numbers (used by
        `mojavox-notify import-nx27017`); call `rebuild_states` afterwards."""
        await self._background(_import, notifications, preferences, subscriptions, events)

    async def rebuild_states(self) -> int:
        """Recompute every user's counters from the stored rows; how many users."""
        return await self._background(_rebuild_states)

    async def count(self) -> int:
        rows = await self._read(_select, "SELECT count(*) FROM notifications", ())
        return rows[0][0]


# -- functions run on the storage threads (each gets the thread's connection first) ----------------

def _lower_priority() -> None:
    """This thread yields the cores to the event loop and the writer: a checkpoint started
    right after a 1,000-user alert's commit must not slow the alert's fan-out."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_NICENESS)
    except OSError:  # not allowed, or not Linux (where a thread has a priority of its own)
        pass


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
        for statement in SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        if version in (1, 2):
            _owned_claims(connection)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if version == 1:  # the rebuilt table went through the log: copy it back, truncate the log
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


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
        INSERT INTO notifications ({NOTIFICATION_COLUMNS})
        SELECT {NOTIFICATION_COLUMNS} FROM notifications_schema1 ORDER BY user_id, seq""")
    connection.execute("DROP TABLE notifications_schema1")  # and its indexes


def _free_bytes(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _select(connection: sqlite3.Connection, sql: str, parameters: tuple) -> list[tuple]:
    return connection.execute(sql, parameters).fetchall()


def _execute(connection: sqlite3.Connection, sql: str, parameters: tuple) -> int:
    with transaction(connection):
        return connection.execute(sql, parameters).rowcount


def _page(connection, user_id, limit, offset, unread_only, now_ms) -> list[tuple]:
    unread = "AND read = 0" if unread_only else ""
    return connection.execute(f"""
        SELECT {NOTIFICATION_COLUMNS} FROM notifications
        WHERE user_id = ? {unread} AND expires_at > ? ORDER BY seq DESC LIMIT ? OFFSET ?""",
        (user_id, now_ms, limit, offset)).fetchall()


def _insert_many(connection, insertions: list[Insertion], created_at) -> list:
    """All insertions' drafts in one transaction, in order: the users' counters are read once,
    advanced here (the write lock is held, so nobody else moves them) and written back once per
    user; the push jobs of flagged drafts whose users have a subscription go into the outbox with
    them, and each insertion's claim is completed with its ids. One list of records per
    insertion; an insertion given up on is skipped (an empty list, nobody reads it), and one
    whose claim is lost gets a ClaimLostError instead, having stored nothing."""
    with transaction(connection):
        outcomes: list = []
        live = []
        for insertion in insertions:
            if insertion.abandoned:
                outcomes.append([])
            elif insertion.claim is not None and not _holds(connection, insertion.claim):
                outcomes.append(ClaimLostError(f"the claim on {insertion.claim.key} was given up"))
            else:
                outcomes.append(None)
                live.append(insertion)
        created = _insert_live(connection, live, created_at)
    records = iter(created)
    return [[next(records) for _ in insertion.drafts] if outcome is None else outcome
            for insertion, outcome in zip(insertions, outcomes)]


def _insert_live(connection, insertions: list[Insertion], created_at) -> list[Created]:
    users = {draft.user_id for insertion in insertions for draft in insertion.drafts}
    counters = _counters_of(connection, users)
    subscribed = _subscribed(connection, {
        draft.user_id for insertion in insertions
        for draft, wanted in zip(insertion.drafts, insertion.push) if wanted})
    expiry: dict[str, int] = {}
    rows, created = [], []
    for insertion in insertions:
        key = insertion.claim.key if insertion.claim is not None else None
        for draft, wanted in zip(insertion.drafts, insertion.push):
            seq, total, unread = counters.get(draft.user_id) or (0, 0, dict.fromkeys(PRIORITIES, 0))
            unread = {**unread, draft.priority: unread[draft.priority] + 1}
            counters[draft.user_id] = (seq + 1, total + 1, unread)
            if draft.expires_at is not None:
                expiry[draft.user_id] = min(expiry.get(draft.user_id, NEVER_MS),
                                            to_ms(draft.expires_at))
            document = to_document(draft, created_at=created_at, seq=seq + 1, event_id=key)
            rows.append(_row(document))
            created.append(Created(document, UserState(seq + 1, total + 1, unread),
                                   pushed=wanted and draft.user_id in subscribed))
    _insert_rows(connection, INSERT_NOTIFICATIONS, NOTIFICATION_WIDTH, rows)
    _insert_rows(connection, INSERT_PUSH_JOBS, PUSH_JOB_WIDTH, [
        (record.document["user_id"], str(record.document["_id"]), record.document["priority"],
         to_ms(created_at), to_ms(created_at), 0, "[]", 0) for record in created if record.pushed])
    _insert_rows(connection, SAVE_STATES, STATE_WIDTH, [
        (user_id, seq, total, *(unread[p] for p in PRIORITIES), expiry.get(user_id, NEVER_MS))
        for user_id, (seq, total, unread) in counters.items()])
    records = iter(created)
    for insertion in insertions:
        stored = [next(records) for _ in insertion.drafts]
        if insertion.claim is not None:
            connection.execute("""
                UPDATE events SET state = 'done', notifications = ?, completed_at = ?
                WHERE id = ?""", (json.dumps([str(record.document["_id"]) for record in stored]),
                                  to_ms(created_at), insertion.claim.key))
    return created


def _channel_settings(connection, user_ids: set[str]) -> list[list[str]]:
    """[user_id, channels JSON] of those of these users who changed their channel settings."""
    return _json_rows(connection, """
        SELECT json_group_array(json_array(user_id, channels)) FROM channel_settings
        WHERE user_id IN ({users})""", user_ids)


def _insert_rows(connection, statement: str, width: int, rows: list[tuple]) -> None:
    """Rows inserted by multi-row statements: one step each (one GIL hand-off, see
    coalesce.py) for up to ROWS_PER_STATEMENT rows, where `executemany` takes one per row."""
    start = 0
    while start < len(rows):
        size = ROWS_PER_STATEMENT
        while size > len(rows) - start:
            size //= 2
        connection.execute(_multi_row(statement, width, size),
                           [value for row in rows[start:start + size] for value in row])
        start += size


@functools.lru_cache(maxsize=64)
def _multi_row(statement: str, width: int, count: int) -> str:
    """`statement` with its `{rows}` as `count` rows of `width` parameters."""
    row = "(" + ", ".join("?" * width) + ")"
    return statement.format(rows=", ".join([row] * count))


def _preferences(rows: dict[str, str], users: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
    """Each of `users` that has a `channel_settings` row: its choices by type."""
    return {user: {name: ChannelPreference(**value) for name, value in json.loads(rows[user]).items()}
            for user in users if user in rows}


def _json_rows(connection, query: str, user_ids: set[str]) -> list:
    """A query that aggregates its rows into one JSON array (one step, one GIL hand-off, however
    many rows), for each chunk of `user_ids` bound as `{users}`; the arrays joined."""
    found = []
    for chunk in _chunks(sorted(user_ids), IN_CHUNK):
        found += orjson.loads(connection.execute(
            query.format(users=", ".join("?" * len(chunk))), chunk).fetchone()[0])
    return found


def _subscribed(connection, user_ids: set[str]) -> set[str]:
    """Which of these users have at least one push subscription."""
    return set(_json_rows(connection, """
        SELECT json_group_array(DISTINCT user_id) FROM push_subscriptions
        WHERE user_id IN ({users})""", user_ids))


def _claim_pushes(connection, now_ms: int, lease_until: int, limit: int) -> list[tuple]:
    with transaction(connection):
        return connection.execute("""
            UPDATE push_outbox SET leased_until = ? WHERE id IN (
                SELECT id FROM push_outbox WHERE due_at <= ? AND leased_until <= ?
                ORDER BY due_at LIMIT ?)
            RETURNING id, user_id, notification_id, priority, created_at, attempts, done""",
            (lease_until, now_ms, now_ms, limit)).fetchall()


def _state_rows(connection, user_ids: set[str]) -> dict[str, tuple]:
    """Each of these users' `seq, total, unread_*, expiry_due`, by user (those with a row)."""
    rows = _json_rows(connection, f"""
        SELECT json_group_array(json_array(user_id, {STATE_COLUMNS}, expiry_due))
        FROM user_state WHERE user_id IN ({{users}})""", user_ids)
    return {row[0]: tuple(row[1:]) for row in rows}


def _counters_of(connection, user_ids: set[str]) -> dict[str, tuple[int, int, dict[str, int]]]:
    return {user: (row[0], row[1], dict(zip(PRIORITIES, row[2:2 + len(PRIORITIES)])))
            for user, row in _state_rows(connection, user_ids).items()}


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


EVENT_COLUMNS = "id, type, state, owner, notifications, created_at"


def _event(row: tuple) -> dict[str, Any]:
    key, fingerprint, state, owner, notifications, created_at = row
    return {"_id": key, "type": fingerprint, "state": state, "owner": owner,
            "notifications": json.loads(notifications), "created_at": from_ms(created_at)}


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


def _holds(connection, claim: EventClaim) -> bool:
    """Whether the claim is still its owner's and pending (inside the caller's transaction)."""
    return connection.execute("""
        SELECT 1 FROM events WHERE id = ? AND owner IS ? AND state = 'pending'""",
        (claim.key, claim.owner)).fetchone() is not None


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
