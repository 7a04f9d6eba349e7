"""The MongoDB engine's collections and indexes, created at start-up (safe from several instances
at once), and data of earlier schemas brought up to date once; the `meta` collection's `schema`
document holds the version. `MongoStore.open` runs these in order.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

from ...errors import StorageUnavailableError
from ...model import PRIORITIES, utcnow
from .documents import NEVER_MS, Collections, to_ms

# 2: per-user counter documents in user_state; 3: owned, namespaced claims; 4: topic_members,
# broadcast audiences (nothing rewritten: a broadcast without one is the default tenant's);
# 5: escalations (new collections and indexes only).
SCHEMA_VERSION = 5
COLLECTIONS = ("notifications", "user_state", "channel_settings", "push_subscriptions", "events",
               "push_outbox", "meta", "broadcasts", "topic_members", "escalations", "escalation_events")
#: What a server that cannot run transactions (a standalone mongod) answers.
ILLEGAL_OPERATION = 20
# A TTL index would delete behind the counters' back: cleanup deletes and counts instead.
# "event" found a claim's notifications; a claim now holds their ids itself.
RETIRED_INDEXES = ("expiry_ttl", "user_recent", "event")


async def _create_collections(db: AsyncDatabase, collections: Collections) -> None:
    """Every collection and index. Collections are created here, not by a first write: a
    transaction cannot create one on every server."""
    existing = set(await db.list_collection_names())
    for collection in COLLECTIONS:
        if collection not in existing:
            try:
                await db.create_collection(collection)
            except CollectionInvalid:  # another instance created it meanwhile
                pass
    await collections.notifications.create_index(
        [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
    await collections.notifications.create_index(
        [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_unread",
        partialFilterExpression={"read": False})
    await collections.notifications.create_index(
        [("user_id", ASCENDING), ("expires_at", ASCENDING)], name="user_expiry")
    await collections.notifications.create_index("expires_at", name="expiry")
    await collections.notifications.create_index("created_at", name="created")
    await collections.push_subscriptions.create_index("endpoint", name="endpoint", unique=True)
    await collections.push_subscriptions.create_index("user_id", name="user")
    await collections.push_outbox.create_index("due_at", name="due")
    await collections.broadcasts.create_index("expires_at", name="expiry")
    await collections.broadcasts.create_index(
        [("audience", ASCENDING), ("created_at", DESCENDING)], name="audience_newest")
    # One document per membership, {topic, member}. The unique index keeps a member in a topic
    # once and is what a topic's page (member > after, in order) and count run on, ranges of
    # it. The pair as `_id` would have needed this index anyway (the `_id` index cannot serve a
    # match on `_id.t` alone), or range matches on whole embedded documents, whose order
    # depends on their fields' order. The other finds a member's topics.
    await collections.memberships.create_index(
        [("topic", ASCENDING), ("member", ASCENDING)], name="topic_member", unique=True)
    await collections.memberships.create_index(
        [("member", ASCENDING), ("topic", ASCENDING)], name="member_topic")
    await collections.events.create_index("created_at", name="created")
    # An escalation's notifications, and those of a user's escalations (sparse: only they have
    # one). One unresolved escalation per key: `live_key` is removed when it is resolved.
    await collections.notifications.create_index("escalation.id", name="escalation", sparse=True)
    await collections.notifications.create_index(
        [("user_id", ASCENDING), ("escalation.id", ASCENDING)], name="user_escalation", sparse=True)
    await collections.escalation_records.create_index("live_key", name="live_key", unique=True,
                                               sparse=True)
    await collections.escalation_records.create_index("due_at", name="due")
    await collections.escalation_records.create_index("updated_at", name="updated")
    await collections.escalation_lines.create_index(
        [("escalation_id", ASCENDING), ("at", ASCENDING)], name="escalation_at")
    await collections.escalation_lines.create_index("once", name="once", unique=True, sparse=True)


async def _drop_retired_indexes(collections: Collections) -> None:
    for retired in RETIRED_INDEXES:
        try:
            await collections.notifications.drop_index(retired)
        except OperationFailure:
            pass


async def _check_transactions(collections: Collections,
                              transaction: Callable[..., Awaitable[Any]]) -> None:
    """`transaction` is the store's: a touch of `meta` in one, unbounded."""
    async def touch(session) -> None:
        await collections.meta.update_one({"_id": "transactions"}, {"$set": {"checked_at": utcnow()}},
                                          upsert=True, session=session)
    try:
        await transaction(touch, bounded=False)
    except OperationFailure as error:
        if error.code != ILLEGAL_OPERATION and "transaction" not in str(error).lower():
            raise
        raise StorageUnavailableError(
            "this MongoDB server cannot run transactions (a standalone mongod), which keep "
            "the unread counters exact; run it as a replica set, a single member is enough "
            "(mongod --replSet rs0, then rs.initiate() once)") from None


async def _adopt_earlier_claims(collections: Collections) -> None:
    """Claims of schema 2: a pending one whose notifications were stored counts as done with
    them, and keys get namespaces (`event:<id>` beside `request:<caller>:<key>`, so an event
    id can never pre-claim another caller's key)."""
    async for record in collections.events.find({}):
        key = record["_id"]
        if record.get("state") == "pending":
            stored = await collections.notifications.find({"event_id": key}, {"_id": 1}).sort(
                "_id", ASCENDING).to_list(length=None)
            if stored:
                record.update(state="done", notifications=[str(d["_id"]) for d in stored],
                              completed_at=record.get("created_at"))
                await collections.events.replace_one({"_id": key}, record)
        if isinstance(key, str) and not key.startswith(("request:", "event:")):
            try:
                await collections.events.insert_one({**record, "_id": f"event:{key}"})
            except DuplicateKeyError:
                pass
            await collections.events.delete_one({"_id": key})


async def _rebuild_states(collections: Collections) -> int:
    """Recompute every user's counter document from the stored notifications."""
    states: dict[str, dict] = {}
    cursor = collections.notifications.find(
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
        await collections.states.replace_one({"_id": user_id}, state, upsert=True)
    return len(states)
