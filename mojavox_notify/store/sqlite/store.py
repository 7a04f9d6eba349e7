"""`SqliteStore`, the storage interface on one SQLite file: each operation is one function of
this package run through `Execution`, and the insertions, state reads and preference lookups
queued while one runs are served together by the next (coalesce.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ...coalesce import Coalescer
from ...errors import NotFoundError, StorageUnavailableError
from ...ids import ObjectId
from ...model import ChannelPreference, Draft, PushSubscription, utcnow
from ...settings import StorageSettings
from .. import (ClaimLostError, Created, DueShare, EscalationChange, EventClaim, InsertGroup,
               Insertion, NotificationStore, PushJob, UserState, push_flags)
from . import escalations
from .execution import KEPT_WRITING, TURN_TAKEN, Execution, WriteTurn
from .importing import _import, _rebuild_states
from .insertion import _insert_many, _queue_pushes
from .queries import (CLEANUP_CHUNK, _active_broadcasts, _channel_settings, _claim_event,
                      _claim_events, _claim_pushes, _delete, _delete_expired_chunk, _execute,
                      _mark_all_read, _mark_read, _page, _preferences, _save_subscription,
                      _select, _state_rows, _sweep_user, _topic_members, _topic_size, _update_preferences,
                      _update_topic)
from .rows import (BROADCAST_COLUMNS, EVENT_COLUMNS, NOTIFICATION_READ, NOTIFICATIONS_READ,
                   _broadcast_document, _broadcast_row, _document, _event, _state, from_ms, to_ms)
from .schema import _create_schema

# Drafts (or users looked up) that queue while a transaction runs are served by the next one,
# up to this many at once (a single insertion of more is served alone).
BATCH_DRAFTS = 2000
PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # this process's heartbeat row
# Below this, the disk counts as full: writes are about to fail, so health says so first.
MIN_FREE_BYTES = 1 << 20


class SqliteStore(NotificationStore):
    def __init__(self, path: Path, settings: StorageSettings):
        self.path = Path(path)
        self.description = f"embedded SQLite {self.path}"
        self._settings = settings
        self._execution = Execution(self.path, settings, report=self._report_failure)
        self._inserts = Coalescer(self._insert_batch, BATCH_DRAFTS,
                                  weight=lambda insertion: len(insertion.drafts))
        self._preference_reads = Coalescer(self._preferences_batch, BATCH_DRAFTS, weight=len)
        self._state_reads = Coalescer(self._states_batch, BATCH_DRAFTS)

    # -- the ways to the file: every trip to a thread passes here (tests watch these) ----------

    @property
    def _inline(self) -> sqlite3.Connection | None:
        """The event loop's own connection, once opened."""
        return self._execution.inline

    async def _write(self, function: Callable, *args: Any) -> Any:
        """On the writer thread; gives up (503) after the write timeout."""
        return await self._execution.write(function, *args)

    async def _read(self, function: Callable, *args: Any) -> Any:
        return await self._execution.read(function, *args)

    async def _background(self, function: Callable, *args: Any) -> Any:
        """A write with no time limit: start-up, cleanup, import."""
        return await self._execution.background(function, *args)

    # -- opening and health --------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageUnavailableError(
                f"cannot create the storage folder {self.path.parent}: "
                f"{error.strerror or error}") from None
        await self._background(_create_schema)

    async def close(self) -> None:
        await self._execution.close()

    async def ping(self) -> bool:
        try:
            await self._read(lambda connection: connection.execute("SELECT 1").fetchone())
            return True
        except StorageUnavailableError:
            return False

    async def probe(self) -> None:
        free = await self._execution.free_bytes()
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
            created = await self._queued(self._inserts, insertion, self._execution.write_timeout)
        except StorageUnavailableError:
            insertion.abandoned = True
            raise
        if isinstance(created, ClaimLostError):
            raise created
        return created

    async def insert_groups(self, groups: Sequence[InsertGroup]) -> list[list[Created] | ClaimLostError]:
        """Queued together, so the coalescer serves them in one transaction (coalesce.py);
        given up on (503) as `insert_many` is."""
        insertions = [Insertion(drafts, claim, push_flags(push, len(drafts)))
                      for drafts, claim, push in groups if drafts]
        if not insertions:
            return [[] for _ in groups]
        try:
            async with asyncio.timeout(self._execution.write_timeout):
                stored = iter(await self._inserts.many(insertions))
        except TimeoutError:
            for insertion in insertions:
                insertion.abandoned = True
            raise self._unavailable(f"embedded storage did not answer within "
                                    f"{self._execution.write_timeout:g} s") from None
        except StorageUnavailableError:
            for insertion in insertions:
                insertion.abandoned = True
            raise
        return [next(stored) if drafts else [] for drafts, _, _ in groups]

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
        execution = self._execution
        if execution.inline_writes and sum(len(i.drafts) for i in insertions) <= execution.inline_limit:
            created = await self._insert_on_loop(insertions)
            if created is not None:
                return created
        return await self._write(_insert_many, insertions, utcnow())

    async def _insert_on_loop(self, insertions: list["Insertion"]) -> list | None:
        """While another writer (a worker, or this process's bulk write) holds the turn, the
        loop tries again every WriteTurn.POLL_SECONDS, serving everything else in between, so
        the turn is then held only as long as the work takes (on the writer thread it was also
        held while the thread waited for the GIL back); a bulk write sees it waiting and lets
        it go first. None when it failed: the thread's attempt answers for it."""
        done, created = self._execution.run_inline(True, _insert_many, insertions, utcnow())
        if done or created is not TURN_TAKEN:
            return created if done else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._execution.write_timeout
        with self._execution.waiters.waiting():  # a bulk write in progress lets it go first
            while True:
                if loop.time() >= deadline:
                    raise self._unavailable(f"embedded storage: {KEPT_WRITING}")
                await asyncio.sleep(WriteTurn.POLL_SECONDS)
                done, created = self._execution.run_inline(True, _insert_many, insertions,
                                                           utcnow())
                if done:
                    return created
                if created is not TURN_TAKEN:
                    return None

    async def state(self, user_id: str) -> UserState:
        """On the loop when it can (a connect's one read), else together with the other users'
        states queued meanwhile (a reconnect storm)."""
        done, rows = self._execution.run_inline(False, _state_rows, {user_id})
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
            SELECT {NOTIFICATION_READ} FROM {NOTIFICATIONS_READ}
            WHERE n.user_id = ? AND n.seq > ? AND n.expires_at > ? ORDER BY n.seq LIMIT ?""",
            (user_id, seq, to_ms(utcnow()), limit))
        return [_document(row) for row in rows]

    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        rows = await self._read(_select, f"""
            SELECT {NOTIFICATION_READ} FROM {NOTIFICATIONS_READ}
            WHERE n.user_id = ? AND n.seq > ? AND n.seq <= ? AND n.expires_at > ?
            ORDER BY n.seq DESC LIMIT ?""", (user_id, after_seq, up_to_seq, to_ms(utcnow()), limit))
        return [_document(row) for row in rows]

    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        rows = await self._read(_select, f"""
            SELECT {NOTIFICATION_READ} FROM {NOTIFICATIONS_READ}
            WHERE n.id = ? AND n.user_id = ? AND n.expires_at > ?""",
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
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _broadcast_row(document))

    async def active_broadcasts(self, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        rows = await self._read(_active_broadcasts, to_ms(utcnow()), limit, tenant)
        return [_broadcast_document(row) for row in rows]

    async def delete_expired_broadcasts(self) -> int:
        return await self._background(_execute, "DELETE FROM broadcasts WHERE expires_at <= ?",
                                      (to_ms(utcnow()),))

    # -- topics --------------------------------------------------------------------------------

    async def update_topic(self, topic: str, add: list[str], remove: list[str],
                           max_members: int) -> int:
        return await self._write(_update_topic, topic, add, remove, max_members)

    async def topic_members(self, topic: str, limit: int, after: str | None = None) -> list[str]:
        return await self._read(_topic_members, topic, limit, after)

    async def topic_size(self, topic: str) -> int:
        return await self._read(_topic_size, topic)

    async def delete_topic(self, topic: str) -> bool:
        return bool(await self._write(_execute, "DELETE FROM topic_members WHERE topic = ?",
                                      (topic,)))

    async def topics_of(self, member: str) -> list[str]:
        rows = await self._read(_select, """
            SELECT topic FROM topic_members WHERE member = ? ORDER BY topic""", (member,))
        return [topic for (topic,) in rows]

    # -- escalations ---------------------------------------------------------------------------

    async def open_escalation(self, document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return await self._write(escalations._open, document)

    async def escalation(self, escalation_id: str) -> dict[str, Any] | None:
        return await self._read(escalations._one, "id", escalation_id)

    async def unresolved_escalation(self, key: str) -> dict[str, Any] | None:
        return await self._read(escalations._one, "live_key", key)

    async def change_escalations(self, changes: Sequence[EscalationChange],
                                 created_at: datetime | None = None,
                                 giving_way: bool = False) -> list[list[Created] | None]:
        if not changes:
            return []
        if giving_way:
            return await self._execution.bulk(escalations._change, changes, created_at or utcnow())
        return await self._write(escalations._change, None, changes, created_at or utcnow())

    async def due_escalations(self, now_ms: int, limit: int, after: tuple[int, str] | None = None,
                              share: DueShare | None = None) -> list[dict[str, Any]]:
        return await self._read(escalations._due, now_ms, limit, after, share)

    async def escalation_recipients(self, escalation_ids: Sequence[str]
                                    ) -> dict[str, list[dict[str, Any]]]:
        return await self._read(escalations._recipients, list(dict.fromkeys(escalation_ids)))

    async def escalations_of(self, user_id: str, states: Sequence[str],
                             limit: int) -> list[dict[str, Any]]:
        return await self._read(escalations._of_user, user_id, states, limit)

    async def add_escalation_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            await self._write(escalations._add_events, events)

    async def escalation_events(self, escalation_id: str) -> list[dict[str, Any]]:
        return await self._read(escalations._events, escalation_id)

    async def delete_finished_escalations(self, before_ms: int) -> int:
        return await self._background(escalations._delete_finished, before_ms)

    # -- channel preferences -----------------------------------------------------------------

    async def preferences_of_many(self, user_ids: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
        """Read together with the other lookups queued meanwhile (coalesce.py)."""
        wanted = tuple(dict.fromkeys(user_ids))
        if not wanted:
            return {}
        if len(wanted) <= self._execution.inline_limit:
            done, rows = self._execution.run_inline(False, _channel_settings, set(wanted))
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
        return await self._write(_save_subscription, user_id, subscription, keep,
                                 to_ms(utcnow()))

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

    async def queue_pushes(self, jobs: Sequence[tuple[str, str, str]]) -> int:
        if not jobs:
            return 0
        return await self._write(_queue_pushes, list(jobs), to_ms(utcnow()))

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

    async def claim_events(self, claims: Sequence[tuple[str, str, str]]
                           ) -> list[dict[str, Any] | None]:
        return await self._write(_claim_events, list(claims), to_ms(utcnow()))

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
