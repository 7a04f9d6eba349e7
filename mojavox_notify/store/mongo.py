"""The MongoDB engine, through PyMongo's async API: for several hosts and a replica set.

Each user has a counter document in `user_state` (`_id` = user id) with the newest `seq`, the
number stored (`total`), the unread counts per priority (`unread_low` … `unread_critical`) and
`expiry_due`, the earliest expiry among their notifications in epoch milliseconds, so no hot
path counts documents. The fields are flat integers: plain `$inc`/`$max`/`$min` on them behave
the same on every server that speaks MongoDB's protocol.

Sequence numbers stay gap-free without transactions: a writer reads the counter (by `_id`),
inserts `seq` = counter + 1 under the unique (user_id, seq) index, and only then raises the
counter with `$max`. The counter therefore never passes a number that is not stored, so N+1 is
only ever inserted after N. A writer that loses a race gets a duplicate-key error, raises the
counter to the number it saw taken (the owner may not have yet) and tries the next one.

Only plain driver features that real MongoDB has are used; the tests run this engine over the
wire against nx-27017. Every document is written with all of its fields (a notification that
never expires has a far-future `expires_at`), so queries are plain equality and range matches.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from ..errors import NotFoundError, StorageUnavailableError
from ..model import NEVER, PRIORITIES, ChannelPreference, Draft, PushSubscription, to_document, utcnow
from ..settings import MongoSettings
from . import Created, NotificationStore, PushJob, UserState, push_flags

log = logging.getLogger(__name__)

SEQ_RETRIES = 100
CLEANUP_CHUNK = 5000
DUPLICATE_KEY = 11000
SCHEMA_VERSION = 2  # 2: per-user counter documents in user_state
PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # this process's heartbeat document
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


NEVER_MS = to_ms(NEVER)


def _storage_errors(method):
    """Any driver failure (a timeout included) becomes a 503 `storage_unavailable` for the
    caller and is reported to the storage watchdog."""
    @functools.wraps(method)
    async def translated(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except PyMongoError as error:
            failure = StorageUnavailableError(f"MongoDB failed: {error}")
            self._report_failure(failure)
            raise failure from error
    return translated


def _unhurried(method):
    """Start-up and background work: no operation timeout (they may touch many documents)."""
    @functools.wraps(method)
    async def without_timeout(self, *args, **kwargs):
        with pymongo.timeout(None):
            return await method(self, *args, **kwargs)
    return without_timeout


def _state(document: dict | None) -> UserState:
    if document is None:
        return UserState()
    return UserState(seq=document.get("seq", 0), total=document.get("total", 0),
                     unread={p: document.get(f"unread_{p}", 0) for p in PRIORITIES})


def redacted(url: str) -> str:
    """A MongoDB URL for logs and health reports, without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


class MongoStore(NotificationStore):
    def __init__(self, client: AsyncMongoClient, database: str, description: str = "MongoDB"):
        self._client = client
        self._db = client.get_default_database(default=database)
        self.description = description
        self.notifications = self._db["notifications"]
        self.states = self._db["user_state"]
        self.preferences = self._db["channel_settings"]
        self.push_subscriptions = self._db["push_subscriptions"]
        self.events = self._db["events"]
        self.push_outbox = self._db["push_outbox"]
        self.meta = self._db["meta"]
        self.broadcasts = self._db["broadcasts"]

    @classmethod
    def connect(cls, url: str, settings: MongoSettings,
                operation_timeout: float | None = None) -> "MongoStore":
        """`operation_timeout` bounds every request-path operation (server selection included),
        so a lost server is a 503 within it rather than a hang."""
        options = {"serverSelectionTimeoutMS": int(settings.server_selection_timeout_seconds * 1000)}
        if operation_timeout is not None:
            options["timeoutMS"] = int(operation_timeout * 1000)
        client = AsyncMongoClient(url, tz_aware=True, **options)
        return cls(client, settings.database, description=redacted(url))

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> bool:
        try:
            await self._db.command("ping")
            return True
        except PyMongoError:
            return False

    @_storage_errors
    async def probe(self) -> None:
        await self.meta.find_one({"_id": "schema"})
        await self.meta.update_one({"_id": f"heartbeat:{PROCESS}"}, {"$set": {"at": utcnow()}},
                                   upsert=True)

    @_storage_errors
    @_unhurried
    async def open(self) -> None:
        """Create every index (safe from several instances at once) and, once, the counter
        documents of data written before they existed."""
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_unread",
            partialFilterExpression={"read": False})
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("expires_at", ASCENDING)], name="user_expiry")
        await self.notifications.create_index("expires_at", name="expiry")
        await self.notifications.create_index("created_at", name="created")
        await self.notifications.create_index("event_id", name="event", sparse=True)
        await self.push_subscriptions.create_index("endpoint", name="endpoint", unique=True)
        await self.push_subscriptions.create_index("user_id", name="user")
        await self.push_outbox.create_index("due_at", name="due")
        await self.broadcasts.create_index("expires_at", name="expiry")
        # A TTL index would delete behind the counters' back: cleanup deletes and counts instead.
        for retired in ("expiry_ttl", "user_recent"):
            try:
                await self.notifications.drop_index(retired)
            except OperationFailure:
                pass
        meta = await self.meta.find_one({"_id": "schema"})
        if (meta or {}).get("version", 0) < SCHEMA_VERSION:
            users = await self.rebuild_states()
            await self.meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}},
                                       upsert=True)
            if users:
                log.info("built the counter documents of %d users from stored notifications", users)

    @_storage_errors
    @_unhurried
    async def rebuild_states(self) -> int:
        """Recompute every user's counter document from the stored notifications."""
        states: dict[str, dict] = {}
        cursor = self.notifications.find(
            {}, {"user_id": 1, "seq": 1, "read": 1, "priority": 1, "expires_at": 1, "_id": 0})
        async for document in cursor:
            state = states.setdefault(document["user_id"], {
                "seq": 0, "total": 0, **{f"unread_{p}": 0 for p in PRIORITIES},
                "expiry_due": NEVER_MS})
            state["seq"] = max(state["seq"], document["seq"])
            state["total"] += 1
            if not document["read"]:
                state[f"unread_{document['priority']}"] += 1
            state["expiry_due"] = min(state["expiry_due"], to_ms(document["expires_at"]))
        for user_id, state in states.items():
            await self.states.replace_one({"_id": user_id}, state, upsert=True)
        return len(states)

    # -- notifications -------------------------------------------------------------------------

    @_storage_errors
    async def insert_many(self, drafts: list[Draft], event_id: str | None = None,
                          push: Sequence[bool] = ()) -> list[Created]:
        """One bulk insert per round, each round holding at most one draft per user (so two
        of one user's numbers are never in flight in one write); then the push jobs, in one
        more write (without a transaction, a crash between the two loses those pushes)."""
        created_at = utcnow()
        documents: list[dict | None] = [None] * len(drafts)
        pending = list(enumerate(drafts))
        while pending:
            this_round, later, users = [], [], set()
            for index, draft in pending:
                (later if draft.user_id in users else this_round).append((index, draft))
                users.add(draft.user_id)
            await self._insert_round(this_round, event_id, created_at, documents)
            pending = later
        states = {document["_id"]: _state(document) async for document in self.states.find(
            {"_id": {"$in": list({draft.user_id for draft in drafts})}})}
        flags = push_flags(push, len(drafts))
        wanted = {draft.user_id for draft, flag in zip(drafts, flags) if flag}
        subscribed = set(await self.push_subscriptions.distinct(
            "user_id", {"user_id": {"$in": list(wanted)}})) if wanted else set()
        created = [Created(document, states.get(document["user_id"], UserState()),
                           pushed=flag and document["user_id"] in subscribed)
                   for document, flag in zip(documents, flags)]
        jobs = [{"user_id": record.document["user_id"],
                 "notification_id": str(record.document["_id"]),
                 "priority": record.document["priority"], "created_at": to_ms(created_at),
                 "due_at": to_ms(created_at), "attempts": 0, "done": [], "leased_until": 0}
                for record in created if record.pushed]
        if jobs:
            await self.push_outbox.insert_many(jobs)
        return created

    async def _insert_round(self, round_: list[tuple[int, Draft]], event_id, created_at,
                            documents: list) -> None:
        seqs = {document["_id"]: document.get("seq", 0) async for document in self.states.find(
            {"_id": {"$in": [draft.user_id for _, draft in round_]}}, {"seq": 1})}
        attempt = {index: to_document(draft, created_at, seqs.get(draft.user_id, 0) + 1, event_id)
                   for index, draft in round_}
        lost: set[int] = set()
        try:
            await self.notifications.insert_many(list(attempt.values()), ordered=False)
        except BulkWriteError as error:
            positions = list(attempt)
            for write_error in error.details.get("writeErrors", []):
                if write_error.get("code") != DUPLICATE_KEY:
                    raise
                lost.add(positions[write_error["index"]])
        stored = [attempt[index] for index in attempt if index not in lost]
        if stored:
            await self.states.bulk_write([_count_created(document) for document in stored],
                                         ordered=False)
        for index in attempt:
            documents[index] = attempt[index]
        for index, draft in round_:
            if index in lost:
                await self._raise_counter(draft.user_id, attempt[index]["seq"])
                documents[index] = await self._insert_one(draft, event_id, created_at)

    async def _insert_one(self, draft: Draft, event_id, created_at) -> dict:
        for _ in range(SEQ_RETRIES):
            counter = await self.states.find_one({"_id": draft.user_id}, {"seq": 1})
            document = to_document(draft, created_at, (counter or {}).get("seq", 0) + 1, event_id)
            try:
                await self.notifications.insert_one(document)
            except DuplicateKeyError:
                await self._raise_counter(draft.user_id, document["seq"])
                continue
            await self.states.bulk_write([_count_created(document)])
            return document
        raise StorageUnavailableError("could not allocate a sequence number (too much contention)")

    async def _raise_counter(self, user_id: str, taken_seq: int) -> None:
        """`taken_seq` is stored (its insert collided): let the counter reach it."""
        await self.states.update_one({"_id": user_id}, {"$max": {"seq": taken_seq}}, upsert=True)

    @_storage_errors
    async def state(self, user_id: str) -> UserState:
        document = await self.states.find_one({"_id": user_id})
        if document is None:
            return UserState()
        if document.get("expiry_due", NEVER_MS) <= to_ms(utcnow()):
            await self._delete_counted({"user_id": user_id, "expires_at": {"$lte": utcnow()}})
            document = await self.states.find_one({"_id": user_id})
        return _state(document)

    @_storage_errors
    async def list(self, user_id: str, limit: int, offset: int,
                   unread_only: bool) -> tuple[list[dict], int]:
        state = await self.state(user_id)
        query = _visible(user_id)
        if unread_only:
            query["read"] = False
        cursor = self.notifications.find(query).sort("seq", DESCENDING).skip(offset).limit(limit)
        documents = await cursor.to_list(length=limit)
        return documents, (state.unread_total if unread_only else state.total)

    @_storage_errors
    async def after(self, user_id: str, seq: int, limit: int) -> list[dict]:
        query = {**_visible(user_id), "seq": {"$gt": seq}}
        return await self.notifications.find(query).sort("seq", ASCENDING).limit(limit).to_list(length=limit)

    @_storage_errors
    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        query = {**_visible(user_id), "seq": {"$gt": after_seq, "$lte": up_to_seq}}
        return await self.notifications.find(query).sort("seq", DESCENDING).limit(limit).to_list(length=limit)

    @_storage_errors
    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        document = await self.notifications.find_one({"_id": notification_id, **_visible(user_id)})
        if document is None:
            raise NotFoundError("no such notification")
        return document

    @_storage_errors
    async def mark_read(self, user_id: str, notification_id: ObjectId) -> tuple[bool, UserState]:
        before = await self.notifications.find_one_and_update(
            {"_id": notification_id, "user_id": user_id, "read": False},
            {"$set": {"read": True, "read_at": utcnow()}}, projection={"priority": 1})
        if before is None:
            await self.get(user_id, notification_id)
            return False, await self.state(user_id)
        return True, await self._add_to_state(user_id, 0, {before["priority"]: -1})

    @_storage_errors
    async def mark_all_read(self, user_id: str) -> tuple[int, UserState]:
        """Per priority, so each count taken off the counters is exactly what changed."""
        now = utcnow()
        results = await asyncio.gather(*(
            self.notifications.update_many({"user_id": user_id, "read": False, "priority": priority},
                                           {"$set": {"read": True, "read_at": now}})
            for priority in PRIORITIES))
        changed = {priority: -result.modified_count for priority, result in zip(PRIORITIES, results)}
        return sum(-count for count in changed.values()), await self._add_to_state(user_id, 0, changed)

    @_storage_errors
    async def delete(self, user_id: str, notification_id: ObjectId) -> UserState:
        deleted = await self.notifications.find_one_and_delete(
            {"_id": notification_id, "user_id": user_id}, projection={"read": 1, "priority": 1})
        if deleted is None:
            raise NotFoundError("no such notification")
        return await self._add_to_state(user_id, -1, {} if deleted["read"] else {deleted["priority"]: -1})

    async def _add_to_state(self, user_id: str, total: int, unread: dict[str, int]) -> UserState:
        increments = {"total": total, **{f"unread_{p}": count for p, count in unread.items() if count}}
        document = await self.states.find_one_and_update(
            {"_id": user_id}, {"$inc": increments}, upsert=True,
            return_document=ReturnDocument.AFTER)
        return _state(document)

    @_storage_errors
    @_unhurried
    async def delete_expired(self, retention_days: int) -> int:
        now = utcnow()
        query = {"$or": [{"expires_at": {"$lte": now}},
                         {"created_at": {"$lt": now - timedelta(days=retention_days)}}]}
        removed = 0
        while True:
            deleted = await self._delete_counted(query)
            removed += deleted
            if deleted < CLEANUP_CHUNK:
                return removed

    async def _delete_counted(self, query: dict) -> int:
        """Delete up to CLEANUP_CHUNK matching notifications and take exactly what went off
        their users' counters: unread ones are deleted per (user, priority) with `read: False`
        in the filter, so one marked read meanwhile is counted once, by `mark_read`."""
        found = await self.notifications.find(
            query, {"user_id": 1, "read": 1, "priority": 1}).limit(CLEANUP_CHUNK).to_list(length=None)
        by_user: dict[str, list[dict]] = defaultdict(list)
        for document in found:
            by_user[document["user_id"]].append(document)
        for user_id, documents in by_user.items():
            unread_ids: dict[str, list] = defaultdict(list)
            for document in documents:
                if not document["read"]:
                    unread_ids[document["priority"]].append(document["_id"])
            unread: Counter = Counter()
            total = 0
            for priority, ids in unread_ids.items():
                result = await self.notifications.delete_many({"_id": {"$in": ids}, "read": False})
                unread[priority] -= result.deleted_count
                total -= result.deleted_count
            result = await self.notifications.delete_many(
                {"_id": {"$in": [document["_id"] for document in documents]}})
            total -= result.deleted_count
            await self._add_to_state(user_id, total, unread)
            await self.states.update_one({"_id": user_id},
                                         {"$set": {"expiry_due": await self._next_expiry(user_id)}})
        return len(found)

    async def _next_expiry(self, user_id: str) -> int:
        soonest = await self.notifications.find_one(
            {"user_id": user_id, "expires_at": {"$lt": NEVER}}, {"expires_at": 1},
            sort=[("expires_at", ASCENDING)])
        return to_ms(soonest["expires_at"]) if soonest else NEVER_MS

    # -- broadcasts ----------------------------------------------------------------------------

    @_storage_errors
    async def insert_broadcast(self, document: dict[str, Any]) -> None:
        await self.broadcasts.insert_one(dict(document))

    @_storage_errors
    async def active_broadcasts(self, limit: int) -> list[dict[str, Any]]:
        cursor = self.broadcasts.find({"expires_at": {"$gt": utcnow()}}).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return await cursor.to_list(length=None)

    @_storage_errors
    @_unhurried
    async def delete_expired_broadcasts(self) -> int:
        result = await self.broadcasts.delete_many({"expires_at": {"$lte": utcnow()}})
        return result.deleted_count

    # -- channel preferences -----------------------------------------------------------------

    @_storage_errors
    async def preferences_of_many(self, user_ids: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
        cursor = self.preferences.find({"_id": {"$in": list(dict.fromkeys(user_ids))}})
        return {document["_id"]: {name: ChannelPreference(**value)
                                  for name, value in document.get("channels", {}).items()}
                async for document in cursor}

    @_storage_errors
    async def update_preferences(self, user_id: str, changes: dict[str, dict[str, bool]]) -> None:
        fields = {f"channels.{name}.{key}": value
                  for name, change in changes.items() for key, value in change.items()}
        if not fields:
            return
        fields["updated_at"] = utcnow()
        await self.preferences.update_one({"_id": user_id}, {"$set": fields}, upsert=True)

    # -- push subscriptions ------------------------------------------------------------------

    @_storage_errors
    async def save_push_subscription(self, user_id: str, subscription: PushSubscription,
                                     keep: int) -> bool:
        if not await self._save_subscription(user_id, subscription):
            return False
        stale = await self.push_subscriptions.find({"user_id": user_id}, {"_id": 1}).sort(
            "registered", DESCENDING).skip(keep).to_list(length=None)
        if stale:
            await self.push_subscriptions.delete_many({"_id": {"$in": [d["_id"] for d in stale]}})
        return True

    async def _save_subscription(self, user_id: str, subscription: PushSubscription) -> bool:
        """Renew the owner's, else insert; False when the endpoint is another user's.
        `registered` (an ObjectId made here, so growing) orders them by their last registration."""
        now = utcnow()
        fields = {"keys": {"p256dh": subscription.p256dh, "auth": subscription.auth},
                  "updated_at": now, "registered": ObjectId()}
        owned = {"endpoint": subscription.endpoint, "user_id": user_id}
        if (await self.push_subscriptions.update_one(owned, {"$set": fields})).matched_count:
            return True
        try:
            await self.push_subscriptions.insert_one({**owned, **fields, "created_at": now})
        except DuplicateKeyError:  # another user's, or the owner's own registration meanwhile
            renewed = await self.push_subscriptions.update_one(owned, {"$set": fields})
            return bool(renewed.matched_count)
        return True

    @_storage_errors
    async def remove_push_subscription(self, user_id: str, endpoint: str) -> None:
        result = await self.push_subscriptions.delete_one({"endpoint": endpoint, "user_id": user_id})
        if not result.deleted_count:
            raise NotFoundError("no such push subscription")

    @_storage_errors
    async def forget_push_subscription(self, endpoint: str) -> None:
        await self.push_subscriptions.delete_one({"endpoint": endpoint})

    @_storage_errors
    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushJob]:
        now = to_ms(utcnow())
        jobs = []
        for _ in range(limit):
            document = await self.push_outbox.find_one_and_update(
                {"due_at": {"$lte": now}, "leased_until": {"$lte": now}},
                {"$set": {"leased_until": now + int(lease_seconds * 1000)}},
                sort=[("due_at", ASCENDING)], return_document=ReturnDocument.AFTER)
            if document is None:
                break
            jobs.append(PushJob(str(document["_id"]), document["user_id"],
                                document["notification_id"], document["priority"],
                                EPOCH + timedelta(milliseconds=document["created_at"]),
                                document["attempts"], tuple(document["done"])))
        return jobs

    @_storage_errors
    async def reschedule_push(self, job_id: str, delay_seconds: float, attempts: int,
                              done: Sequence[str]) -> None:
        await self.push_outbox.update_one({"_id": ObjectId(job_id)}, {"$set": {
            "due_at": to_ms(utcnow()) + int(delay_seconds * 1000), "attempts": attempts,
            "done": list(done), "leased_until": 0}})

    @_storage_errors
    async def finish_push(self, job_id: str) -> None:
        await self.push_outbox.delete_one({"_id": ObjectId(job_id)})

    @_storage_errors
    async def push_backlog(self) -> int:
        return await self.push_outbox.count_documents({})

    @_storage_errors
    async def push_subscriptions_of(self, user_id: str) -> list[dict]:
        cursor = self.push_subscriptions.find(
            {"user_id": user_id}, {"_id": 0, "registered": 0}).sort("created_at", ASCENDING)
        return await cursor.to_list(length=None)

    # -- idempotent events -------------------------------------------------------------------

    @_storage_errors
    async def claim_event(self, event_id: str, event_type: str) -> dict[str, Any] | None:
        while True:
            try:
                await self.events.insert_one({"_id": event_id, "type": event_type,
                                              "state": "pending", "notifications": [],
                                              "created_at": utcnow()})
                return None
            except DuplicateKeyError:
                record = await self.events.find_one({"_id": event_id})
            if record is not None:
                return record
            # The earlier claim was released between our insert and read: claim again.

    @_storage_errors
    async def complete_event(self, event_id: str, notification_ids: list[str]) -> None:
        await self.events.update_one({"_id": event_id}, {"$set": {
            "state": "done", "notifications": notification_ids, "completed_at": utcnow()}})

    @_storage_errors
    async def release_event(self, event_id: str) -> None:
        await self.events.delete_one({"_id": event_id, "state": "pending"})

    @_storage_errors
    async def event(self, event_id: str) -> dict[str, Any] | None:
        return await self.events.find_one({"_id": event_id})

    @_storage_errors
    async def notifications_of_event(self, event_id: str) -> list[dict]:
        cursor = self.notifications.find({"event_id": event_id}).sort("_id", ASCENDING)
        return await cursor.to_list(length=None)

    # -- export (for importing into the embedded engine) --------------------------------------

    @_storage_errors
    @_unhurried
    async def export(self) -> dict[str, list[dict]]:
        """Every stored document, by collection (the old embedded data, read once at import)."""
        return {name: await self._db[name].find({}).to_list(length=None)
                for name in ("notifications", "channel_settings", "push_subscriptions", "events")}


def _visible(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "expires_at": {"$gt": utcnow()}}


def _count_created(document: dict) -> UpdateOne:
    """The counter change of one stored notification: raise `seq` to it, count it unread."""
    update = {"$max": {"seq": document["seq"]},
              "$inc": {"total": 1, f"unread_{document['priority']}": 1},
              "$min": {"expiry_due": to_ms(document["expires_at"])}}
    return UpdateOne({"_id": document["user_id"]}, update, upsert=True)
