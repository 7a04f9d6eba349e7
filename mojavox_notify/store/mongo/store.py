"""`MongoStore`, the storage interface on MongoDB: each operation one driver call or one
transaction, in this process's turn (transactions.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from ...coalesce import Coalescer
from ...errors import NotFoundError
from ...ids import ObjectId
from ...model import NEVER, PRIORITIES, ChannelPreference, Draft, PushSubscription, utcnow
from ...settings import MongoSettings
from ...tenants import DEFAULT, EVERYONE
from .. import (ClaimLostError, Created, DueShare, EscalationChange, EventClaim, InsertGroup,
                Insertion, NotificationStore, PushJob, UserState, push_flags)
from .documents import EPOCH, NEVER_MS, _state, to_ms
from . import claims, escalations, topics
from .insertion import store_batch
from .schema import (SCHEMA_VERSION, _adopt_earlier_claims, _check_transactions,
                     _create_collections, _drop_retired_indexes, _rebuild_states)
from .transactions import _storage_errors, _unhurried, in_turn

log = logging.getLogger(__name__)

CLEANUP_CHUNK = 5000
#: Drafts (of every insertion queued meanwhile) stored in one transaction at most.
BATCH_DRAFTS = 2000
PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # this process's heartbeat document


def redacted(url: str) -> str:
    """A MongoDB URL for logs and health reports, without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


class MongoStore(NotificationStore):
    def __init__(self, client: AsyncMongoClient, database: str, description: str = "MongoDB",
                 operation_timeout: float | None = None):
        """`operation_timeout` bounds each request-path transaction as a whole (its turn, its
        operations and the driver's retries), as timeoutMS bounds each operation."""
        self._client = client
        self._operation_timeout = operation_timeout
        self._inserts = Coalescer(self._insert_batch, BATCH_DRAFTS,
                                  weight=lambda insertion: len(insertion.drafts))
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
        self.memberships = self._db["topic_members"]
        self.escalation_records = self._db["escalations"]
        self.escalation_lines = self._db["escalation_events"]

    @classmethod
    def connect(cls, url: str, settings: MongoSettings,
                operation_timeout: float | None = None) -> "MongoStore":
        """`operation_timeout` bounds every request-path operation (server selection included),
        so a lost server is a 503 within it rather than a hang."""
        options = {"serverSelectionTimeoutMS": int(settings.server_selection_timeout_seconds * 1000)}
        if operation_timeout is not None:
            options["timeoutMS"] = int(operation_timeout * 1000)
        client = AsyncMongoClient(url, tz_aware=True, **options)
        return cls(client, settings.database, description=redacted(url),
                   operation_timeout=operation_timeout)

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
        """Create every collection and index (safe from several instances at once), check that
        the server runs transactions, and bring data of earlier schemas up to date, once."""
        await _create_collections(self._db, self)
        await _check_transactions(self, self._transaction)
        meta = await self.meta.find_one({"_id": "schema"})
        version = (meta or {}).get("version", 0)
        if version < 2:
            users = await self.rebuild_states()
            if users:
                log.info("built the counter documents of %d users from stored notifications", users)
        if version < 3:
            await _adopt_earlier_claims(self)
        await _drop_retired_indexes(self)
        if version < SCHEMA_VERSION:
            await self.meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}},
                                       upsert=True)

    async def _transaction(self, work, bounded: bool = True) -> Any:
        """`await work(session)` in one transaction, in this process's turn (transactions.py);
        within `operation_timeout` as a whole unless `bounded` is False."""
        return await in_turn(self._client, work, self._operation_timeout if bounded else None,
                             self._unavailable)

    @_storage_errors
    @_unhurried
    async def rebuild_states(self) -> int:
        """Recompute every user's counter document from the stored notifications."""
        return await _rebuild_states(self)

    # -- notifications -------------------------------------------------------------------------

    @_storage_errors
    async def insert_many(self, drafts: list[Draft], claim: EventClaim | None = None,
                          push: Sequence[bool] = ()) -> list[Created]:
        """Stored in one transaction with the other insertions queued meanwhile. One given up
        on (503) is marked abandoned, so a batch that has not started it never writes it."""
        if not drafts:
            return []
        insertion = Insertion(drafts, claim, push_flags(push, len(drafts)))
        try:
            async with asyncio.timeout(self._operation_timeout):
                created = await self._inserts(insertion)
        except TimeoutError:
            insertion.abandoned = True
            raise self._unavailable(
                f"MongoDB did not store within {self._operation_timeout:g} s") from None
        if isinstance(created, ClaimLostError):
            raise created
        return created

    @_storage_errors
    async def insert_groups(self, groups: Sequence[InsertGroup]) -> list[list[Created] | ClaimLostError]:
        """Queued together, so they go into one transaction (coalesce.py); given up on (503)
        as `insert_many` is."""
        insertions = [Insertion(drafts, claim, push_flags(push, len(drafts)))
                      for drafts, claim, push in groups if drafts]
        if not insertions:
            return [[] for _ in groups]
        try:
            async with asyncio.timeout(self._operation_timeout):
                stored = iter(await self._inserts.many(insertions))
        except TimeoutError:
            for insertion in insertions:
                insertion.abandoned = True
            raise self._unavailable(
                f"MongoDB did not store within {self._operation_timeout:g} s") from None
        return [next(stored) if drafts else [] for drafts, _, _ in groups]

    async def _insert_batch(self, insertions: list[Insertion]) -> list:
        return await self._transaction(functools.partial(store_batch, self, insertions))

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
        documents = await escalations.with_current(self, await cursor.to_list(length=limit))
        return documents, (state.unread_total if unread_only else state.total)

    @_storage_errors
    async def after(self, user_id: str, seq: int, limit: int) -> list[dict]:
        query = {**_visible(user_id), "seq": {"$gt": seq}}
        return await escalations.with_current(self, await self.notifications.find(query).sort(
            "seq", ASCENDING).limit(limit).to_list(length=limit))

    @_storage_errors
    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        query = {**_visible(user_id), "seq": {"$gt": after_seq, "$lte": up_to_seq}}
        return await escalations.with_current(self, await self.notifications.find(query).sort(
            "seq", DESCENDING).limit(limit).to_list(length=limit))

    @_storage_errors
    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        document = await self.notifications.find_one({"_id": notification_id, **_visible(user_id)})
        if document is None:
            raise NotFoundError("no such notification")
        [document] = await escalations.with_current(self, [document])
        return document

    @_storage_errors
    async def mark_read(self, user_id: str, notification_id: ObjectId) -> tuple[bool, UserState]:
        async def work(session) -> tuple[bool, UserState]:
            before = await self.notifications.find_one_and_update(
                {"_id": notification_id, "user_id": user_id, "read": False},
                {"$set": {"read": True, "read_at": utcnow()}}, projection={"priority": 1},
                session=session)
            if before is None:
                if await self.notifications.find_one({"_id": notification_id, **_visible(user_id)},
                                                     {"_id": 1}, session=session) is None:
                    raise NotFoundError("no such notification")
                return False, _state(await self.states.find_one({"_id": user_id}, session=session))
            return True, await self._add_to_state(user_id, 0, {before["priority"]: -1}, session)
        return await self._transaction(work)

    @_storage_errors
    async def mark_all_read(self, user_id: str) -> tuple[int, UserState]:
        """Per priority, so each count taken off the counters is exactly what changed."""
        async def work(session) -> tuple[int, UserState]:
            now = utcnow()
            changed = {}
            for priority in PRIORITIES:
                result = await self.notifications.update_many(
                    {"user_id": user_id, "read": False, "priority": priority},
                    {"$set": {"read": True, "read_at": now}}, session=session)
                changed[priority] = -result.modified_count
            state = await self._add_to_state(user_id, 0, changed, session)
            return -sum(changed.values()), state
        return await self._transaction(work)

    @_storage_errors
    async def delete(self, user_id: str, notification_id: ObjectId) -> UserState:
        async def work(session) -> UserState:
            deleted = await self.notifications.find_one_and_delete(
                {"_id": notification_id, "user_id": user_id},
                projection={"read": 1, "priority": 1}, session=session)
            if deleted is None:
                raise NotFoundError("no such notification")
            return await self._add_to_state(
                user_id, -1, {} if deleted["read"] else {deleted["priority"]: -1}, session)
        return await self._transaction(work)

    async def _add_to_state(self, user_id: str, total: int, unread: dict[str, int],
                            session) -> UserState:
        increments = {"total": total, **{f"unread_{p}": count for p, count in unread.items() if count}}
        document = await self.states.find_one_and_update(
            {"_id": user_id}, {"$inc": increments}, upsert=True,
            return_document=ReturnDocument.AFTER, session=session)
        return _state(document)

    @_storage_errors
    @_unhurried
    async def delete_expired(self, retention_days: int) -> int:
        now = utcnow()
        query = {"$or": [{"expires_at": {"$lte": now}},
                         {"created_at": {"$lt": now - timedelta(days=retention_days)}}]}
        removed = 0
        while True:
            deleted = await self._delete_counted(query, bounded=False)
            removed += deleted
            if deleted < CLEANUP_CHUNK:
                return removed

    async def _delete_counted(self, query: dict, bounded: bool = True) -> int:
        """Delete up to CLEANUP_CHUNK matching notifications, each user's together with the
        change of their counters in one transaction; how many matched."""
        found = await self.notifications.find(query, {"user_id": 1}).limit(
            CLEANUP_CHUNK).to_list(length=None)
        by_user: dict[str, list] = defaultdict(list)
        for document in found:
            by_user[document["user_id"]].append(document["_id"])
        for user_id, ids in by_user.items():
            await self._transaction(functools.partial(self._delete_of_user, user_id, ids),
                                    bounded=bounded)
        return len(found)

    async def _delete_of_user(self, user_id: str, ids: list, session) -> None:
        current = await self.notifications.find({"_id": {"$in": ids}}, {"read": 1, "priority": 1},
                                                session=session).to_list(length=None)
        if not current:
            return
        await self.notifications.delete_many({"_id": {"$in": [d["_id"] for d in current]}},
                                             session=session)
        unread = Counter(d["priority"] for d in current if not d["read"])
        await self._add_to_state(user_id, -len(current), {p: -n for p, n in unread.items()}, session)
        soonest = await self.notifications.find_one(
            {"user_id": user_id, "expires_at": {"$lt": NEVER}}, {"expires_at": 1},
            sort=[("expires_at", ASCENDING)], session=session)
        await self.states.update_one({"_id": user_id}, {"$set": {
            "expiry_due": to_ms(soonest["expires_at"]) if soonest else NEVER_MS}}, session=session)

    # -- broadcasts ----------------------------------------------------------------------------

    @_storage_errors
    async def insert_broadcast(self, document: dict[str, Any]) -> None:
        await self.broadcasts.insert_one(dict(document))

    @_storage_errors
    async def active_broadcasts(self, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        """With no tenant, one query per audience among the unexpired broadcasts."""
        now = utcnow()
        if tenant is not None:
            found = await self._newest_broadcasts([tenant, EVERYONE], now, limit)
        else:
            audiences = set(await self.broadcasts.distinct("audience", {"expires_at": {"$gt": now}}))
            found = []
            for audience in (audiences - {None}) | {DEFAULT}:
                found += await self._newest_broadcasts([audience], now, limit)
            found.sort(key=lambda document: (document["created_at"], document["_id"]), reverse=True)
        for document in found:
            if document.get("audience") is None:
                document["audience"] = DEFAULT
        return found

    async def _newest_broadcasts(self, audiences: list[str], now: datetime,
                                 limit: int) -> list[dict[str, Any]]:
        if DEFAULT in audiences:
            audiences = [*audiences, None]  # stored before audiences existed: the default's
        cursor = self.broadcasts.find({"audience": {"$in": audiences}, "expires_at": {"$gt": now}}).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return await cursor.to_list(length=None)

    @_storage_errors
    @_unhurried
    async def delete_expired_broadcasts(self) -> int:
        result = await self.broadcasts.delete_many({"expires_at": {"$lte": utcnow()}})
        return result.deleted_count

    # -- topics: one document {topic, member} per membership (schema.py says why) -----------

    @_storage_errors
    async def update_topic(self, topic: str, add: list[str], remove: list[str],
                           max_members: int) -> int:
        return await self._transaction(functools.partial(
            topics.update_members, self, topic, add, remove, max_members))

    @_storage_errors
    async def topic_members(self, topic: str, limit: int, after: str | None = None) -> list[str]:
        query: dict[str, Any] = {"topic": topic}
        if after is not None:
            query["member"] = {"$gt": after}
        cursor = self.memberships.find(query, {"member": 1, "_id": 0}).sort(
            "member", ASCENDING).limit(limit)
        return [document["member"] async for document in cursor]

    @_storage_errors
    async def topic_size(self, topic: str) -> int:
        return await self.memberships.count_documents({"topic": topic})

    @_storage_errors
    async def delete_topic(self, topic: str) -> bool:
        return (await self.memberships.delete_many({"topic": topic})).deleted_count > 0

    @_storage_errors
    async def topics_of(self, member: str) -> list[str]:
        cursor = self.memberships.find({"member": member}, {"topic": 1, "_id": 0}).sort(
            "topic", ASCENDING)
        return [document["topic"] async for document in cursor]

    # -- escalations (escalations.py) -----------------------------------------------------------

    @_storage_errors
    async def open_escalation(self, document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return await escalations.open_escalation(self, document)

    @_storage_errors
    async def escalation(self, escalation_id: str) -> dict[str, Any] | None:
        return await escalations.escalation(self, {"_id": escalation_id})

    @_storage_errors
    async def unresolved_escalation(self, key: str) -> dict[str, Any] | None:
        return await escalations.escalation(self, {"live_key": key})

    @_storage_errors
    async def change_escalations(self, changes: Sequence[EscalationChange],
                                 created_at: datetime | None = None,
                                 giving_way: bool = False) -> list[list[Created] | None]:
        # (`giving_way` needs nothing here: the server interleaves other sessions' writes.)
        if not changes:
            return []
        return await escalations.change_escalations(self, changes, created_at or utcnow(),
                                                    self._transaction)

    @_storage_errors
    async def due_escalations(self, now_ms: int, limit: int, after: tuple[int, str] | None = None,
                              share: DueShare | None = None) -> list[dict[str, Any]]:
        return await escalations.due_escalations(self, now_ms, limit, after, share)

    @_storage_errors
    async def escalation_recipients(self, escalation_ids: Sequence[str]
                                    ) -> dict[str, list[dict[str, Any]]]:
        return await escalations.recipients(self, list(dict.fromkeys(escalation_ids)))

    @_storage_errors
    async def escalations_of(self, user_id: str, states: Sequence[str],
                             limit: int) -> list[dict[str, Any]]:
        return await escalations.escalations_of(self, user_id, states, limit)

    @_storage_errors
    async def add_escalation_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            await escalations.add_events(self, events)

    @_storage_errors
    async def escalation_events(self, escalation_id: str) -> list[dict[str, Any]]:
        return await escalations.events(self, escalation_id)

    @_storage_errors
    @_unhurried
    async def delete_finished_escalations(self, before_ms: int) -> int:
        return await escalations.delete_finished(self, before_ms)

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
    async def queue_pushes(self, jobs: Sequence[tuple[str, str, str]]) -> int:
        users = list({user_id for user_id, _, _ in jobs})
        if not users:
            return 0
        subscribed = {document["user_id"] for document in await self.push_subscriptions.find(
            {"user_id": {"$in": users}}, {"user_id": 1}).to_list(length=None)}
        now = to_ms(utcnow())
        documents = [{"user_id": user_id, "notification_id": notification_id,
                      "priority": priority, "created_at": now, "due_at": now, "attempts": 0,
                      "done": [], "leased_until": 0}
                     for user_id, notification_id, priority in jobs if user_id in subscribed]
        if documents:
            await self.push_outbox.insert_many(documents)
        return len(documents)

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
    async def claim_event(self, key: str, fingerprint: str, owner: str) -> dict[str, Any] | None:
        return await claims.claim_event(self, key, fingerprint, owner)

    @_storage_errors
    async def claim_events(self, wanted: Sequence[tuple[str, str, str]]
                           ) -> list[dict[str, Any] | None]:
        return await claims.claim_events(self, wanted)

    @_storage_errors
    async def take_over_event(self, key: str, stale_owner: str | None, owner: str) -> bool:
        result = await self.events.update_one(
            {"_id": key, "owner": stale_owner, "state": "pending"},
            {"$set": {"owner": owner, "created_at": utcnow()}})
        return result.modified_count == 1

    @_storage_errors
    async def complete_event(self, claim: EventClaim, notification_ids: list[str]) -> None:
        await self.events.update_one(
            {"_id": claim.key, "owner": claim.owner, "state": "pending"},
            {"$set": {"state": "done", "notifications": notification_ids, "completed_at": utcnow()}})

    @_storage_errors
    async def release_event(self, claim: EventClaim) -> None:
        await self.events.delete_one({"_id": claim.key, "owner": claim.owner, "state": "pending"})

    @_storage_errors
    async def event(self, key: str) -> dict[str, Any] | None:
        return await self.events.find_one({"_id": key})

    @_storage_errors
    @_unhurried
    async def delete_expired_events(self, before: datetime) -> int:
        result = await self.events.delete_many({"created_at": {"$lt": before}})
        return result.deleted_count

    # -- export (for importing into the embedded engine) --------------------------------------

    @_storage_errors
    @_unhurried
    async def export(self) -> dict[str, list[dict]]:
        """Every stored document, by collection (the old embedded data, read once at import)."""
        return {name: await self._db[name].find({}).to_list(length=None)
                for name in ("notifications", "channel_settings", "push_subscriptions", "events")}


def _visible(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "expires_at": {"$gt": utcnow()}}
