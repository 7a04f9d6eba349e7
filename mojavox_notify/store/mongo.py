"""The MongoDB engine, through PyMongo's async API: for several hosts and a replica set.

Each user has a counter document in `user_state` (`_id` = user id) with the newest `seq`, the
number stored (`total`), the unread counts per priority (`unread_low` … `unread_critical`) and
`expiry_due`, the earliest expiry among their notifications in epoch milliseconds, so no hot
path counts documents. The fields are flat integers.

Every change that touches a notification and its user's counters is one multi-document
transaction, so the counters cannot drift: a write that fails or times out halfway leaves
both as they were, and a late commit carries both. MongoDB runs transactions on a replica set
or a sharded cluster (a single-member replica set is enough); `open()` says so plainly when the
server cannot. A claim (idempotency.py) is completed in the transaction that stores its
notifications. This process runs its transactions one at a time, and insertions queued meanwhile
share the next one (coalesce.py): transactions on one user's counters conflict anyway (MongoDB
aborts all but one and the driver retries them), so taking turns costs no concurrency that
would have succeeded, and it keeps nx-27017, the wire-level test server, correct (it cannot run
two transactions of one client at once).

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
import weakref
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import pymongo
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure, PyMongoError

from ..coalesce import Coalescer
from ..errors import NotFoundError, StorageUnavailableError
from ..ids import ObjectId
from ..model import NEVER, PRIORITIES, ChannelPreference, Draft, PushSubscription, to_document, utcnow
from ..settings import MongoSettings
from . import (ClaimLostError, Created, EventClaim, Insertion, NotificationStore, PushJob,
               UserState, push_flags)

log = logging.getLogger(__name__)

CLEANUP_CHUNK = 5000
SCHEMA_VERSION = 3  # 2: per-user counter documents in user_state; 3: owned, namespaced claims
#: Drafts (of every insertion queued meanwhile) stored in one transaction at most.
BATCH_DRAFTS = 2000
COLLECTIONS = ("notifications", "user_state", "channel_settings", "push_subscriptions", "events",
               "push_outbox", "meta", "broadcasts")
#: What a server that cannot run transactions (a standalone mongod) answers.
ILLEGAL_OPERATION = 20
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
        the server runs transactions, and bring data of earlier schemas up to date, once.
        Collections are created here, not by a first write: a transaction cannot create one on
        every server."""
        existing = set(await self._db.list_collection_names())
        for collection in COLLECTIONS:
            if collection not in existing:
                try:
                    await self._db.create_collection(collection)
                except CollectionInvalid:  # another instance created it meanwhile
                    pass
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_unread",
            partialFilterExpression={"read": False})
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("expires_at", ASCENDING)], name="user_expiry")
        await self.notifications.create_index("expires_at", name="expiry")
        await self.notifications.create_index("created_at", name="created")
        await self.push_subscriptions.create_index("endpoint", name="endpoint", unique=True)
        await self.push_subscriptions.create_index("user_id", name="user")
        await self.push_outbox.create_index("due_at", name="due")
        await self.broadcasts.create_index("expires_at", name="expiry")
        await self.events.create_index("created_at", name="created")
        await self._check_transactions()
        meta = await self.meta.find_one({"_id": "schema"})
        version = (meta or {}).get("version", 0)
        if version < 2:
            users = await self.rebuild_states()
            if users:
                log.info("built the counter documents of %d users from stored notifications", users)
        if version < 3:
            await self._adopt_earlier_claims()
        # A TTL index would delete behind the counters' back: cleanup deletes and counts instead.
        # "event" found a claim's notifications; a claim now holds their ids itself.
        for retired in ("expiry_ttl", "user_recent", "event"):
            try:
                await self.notifications.drop_index(retired)
            except OperationFailure:
                pass
        if version < SCHEMA_VERSION:
            await self.meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}},
                                       upsert=True)

    async def _check_transactions(self) -> None:
        async def touch(session) -> None:
            await self.meta.update_one({"_id": "transactions"}, {"$set": {"checked_at": utcnow()}},
                                       upsert=True, session=session)
        try:
            await self._transaction(touch, bounded=False)
        except OperationFailure as error:
            if error.code != ILLEGAL_OPERATION and "transaction" not in str(error).lower():
                raise
            raise StorageUnavailableError(
                "this MongoDB server cannot run transactions (a standalone mongod), which keep "
                "the unread counters exact; run it as a replica set, a single member is enough "
                "(mongod --replSet rs0, then rs.initiate() once)") from None

    async def _adopt_earlier_claims(self) -> None:
        """Claims of schema 2: a pending one whose notifications were stored counts as done with
        them, and keys get namespaces (`event:<id>` beside `request:<caller>:<key>`, so an event
        id can never pre-claim another caller's key)."""
        async for record in self.events.find({}):
            key = record["_id"]
            if record.get("state") == "pending":
                stored = await self.notifications.find({"event_id": key}, {"_id": 1}).sort(
                    "_id", ASCENDING).to_list(length=None)
                if stored:
                    record.update(state="done", notifications=[str(d["_id"]) for d in stored],
                                  completed_at=record.get("created_at"))
                    await self.events.replace_one({"_id": key}, record)
            if isinstance(key, str) and not key.startswith(("request:", "event:")):
                try:
                    await self.events.insert_one({**record, "_id": f"event:{key}"})
                except DuplicateKeyError:
                    pass
                await self.events.delete_one({"_id": key})

    async def _transaction(self, work, bounded: bool = True) -> Any:
        """`await work(session)` in one transaction, in this process's turn (see the module
        docstring); within `operation_timeout` as a whole unless `bounded` is False."""
        timeout = self._operation_timeout if bounded else None
        turn = _turn_of(asyncio.get_running_loop())
        try:
            async with asyncio.timeout(timeout):
                await turn.acquire()
        except TimeoutError:
            raise self._unavailable(f"MongoDB: no turn to write within {timeout:g} s") from None
        try:
            with pymongo.timeout(timeout):
                async with self._client.start_session() as session:
                    return await session.with_transaction(work)
        finally:
            turn.release()

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

    async def _insert_batch(self, insertions: list[Insertion]) -> list:
        """One transaction for the batch: claims checked, notifications inserted with the next
        sequence numbers of their users, counters set, push jobs recorded, claims completed.
        One list of records per insertion (an abandoned one: empty), or a ClaimLostError."""
        async def work(session) -> list:
            held = await self._held_claims([i.claim for i in insertions if not i.abandoned
                                            and i.claim is not None], session)
            outcomes: list = []
            live = []
            for insertion in insertions:
                if insertion.abandoned:
                    outcomes.append([])
                elif insertion.claim is not None and insertion.claim.key not in held:
                    outcomes.append(ClaimLostError(f"the claim on {insertion.claim.key} was given up"))
                else:
                    outcomes.append(None)
                    live.append(insertion)
            created = iter(await self._insert_live(live, utcnow(), session))
            return [[next(created) for _ in insertion.drafts] if outcome is None else outcome
                    for insertion, outcome in zip(insertions, outcomes)]
        return await self._transaction(work)

    async def _held_claims(self, claims: list[EventClaim], session) -> set[str]:
        """The keys among `claims` still pending and their owner's."""
        if not claims:
            return set()
        owners = {claim.key: claim.owner for claim in claims}
        found = await self.events.find({"_id": {"$in": list(owners)}, "state": "pending"},
                                       {"owner": 1}, session=session).to_list(length=None)
        return {record["_id"] for record in found if record.get("owner") == owners[record["_id"]]}

    async def _insert_live(self, insertions: list[Insertion], created_at: datetime,
                           session) -> list[Created]:
        drafts = [(draft, wanted, insertion.claim) for insertion in insertions
                  for draft, wanted in zip(insertion.drafts, insertion.push)]
        if not drafts:
            return []
        users = list({draft.user_id for draft, _, _ in drafts})
        counters = {document["_id"]: _state(document) async for document in self.states.find(
            {"_id": {"$in": users}}, session=session)}
        wanted = list({draft.user_id for draft, flag, _ in drafts if flag})
        subscribed = {document["user_id"] for document in await self.push_subscriptions.find(
            {"user_id": {"$in": wanted}}, {"user_id": 1}, session=session).to_list(length=None)
        } if wanted else set()
        expiry: dict[str, int] = {}
        created = []
        for draft, flag, claim in drafts:
            before = counters.get(draft.user_id) or UserState()
            unread = {**before.unread, draft.priority: before.unread.get(draft.priority, 0) + 1}
            state = counters[draft.user_id] = UserState(before.seq + 1, before.total + 1, unread)
            document = to_document(draft, created_at, state.seq,
                                   claim.key if claim is not None else None)
            if draft.expires_at is not None:
                expiry[draft.user_id] = min(expiry.get(draft.user_id, NEVER_MS),
                                            to_ms(draft.expires_at))
            created.append(Created(document, state, pushed=flag and draft.user_id in subscribed))
        # The counters first: a concurrent transaction on one of them conflicts here, which
        # the driver retries, rather than on the (user, seq) index below, which it would not.
        await self.states.bulk_write([UpdateOne({"_id": user_id}, {
            "$set": {"seq": state.seq, "total": state.total,
                     **{f"unread_{p}": state.unread.get(p, 0) for p in PRIORITIES}},
            "$min": {"expiry_due": expiry.get(user_id, NEVER_MS)}}, upsert=True)
            for user_id, state in counters.items()], session=session)
        await self.notifications.insert_many([record.document for record in created],
                                             session=session)
        jobs = [{"user_id": record.document["user_id"],
                 "notification_id": str(record.document["_id"]),
                 "priority": record.document["priority"], "created_at": to_ms(created_at),
                 "due_at": to_ms(created_at), "attempts": 0, "done": [], "leased_until": 0}
                for record in created if record.pushed]
        if jobs:
            await self.push_outbox.insert_many(jobs, session=session)
        for insertion in insertions:
            if insertion.claim is None:
                continue
            ids = [str(record.document["_id"]) for record in created
                   if record.document.get("event_id") == insertion.claim.key]
            await self.events.update_one({"_id": insertion.claim.key}, {"$set": {
                "state": "done", "notifications": ids, "completed_at": created_at}},
                session=session)
        return created

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
    async def claim_event(self, key: str, fingerprint: str, owner: str) -> dict[str, Any] | None:
        while True:
            try:
                await self.events.insert_one({"_id": key, "type": fingerprint, "state": "pending",
                                              "owner": owner, "notifications": [],
                                              "created_at": utcnow()})
                return None
            except DuplicateKeyError:
                record = await self.events.find_one({"_id": key})
            if record is not None:
                return record
            # The earlier claim was released between our insert and read: claim again.

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


_turns: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _turn_of(loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
    """This process's turn to run a transaction (one per event loop, shared by every store)."""
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = asyncio.Lock()
    return turn


def _visible(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "expires_at": {"$gt": utcnow()}}
