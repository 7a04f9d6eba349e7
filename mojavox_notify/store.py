"""MongoDB persistence through PyMongo's async API: notifications, preferences, push subscriptions.

Only plain driver features that real MongoDB has are used. Every document is written with all of
its fields (a notification that never expires has a far-future `expires_at`), so queries are
plain equality and range matches that never lean on null or missing-field rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from .errors import NotFoundError, StorageUnavailableError
from .model import PRIORITIES, ChannelPreference, Draft, PushSubscription, to_document, utcnow

log = logging.getLogger(__name__)

SEQ_RETRIES = 100
UNREAD_SCAN_LIMIT = 1000


class NotificationStore:
    """All storage access. Callers get documents (dicts) and plain values back, never cursors."""

    def __init__(self, client: AsyncMongoClient, database: str):
        self._client = client
        self._db = client.get_default_database(default=database)
        self.notifications = self._db["notifications"]
        self.preferences = self._db["channel_settings"]
        self.push_subscriptions = self._db["push_subscriptions"]
        self.events = self._db["events"]

    @classmethod
    def connect(cls, url: str, database: str, server_selection_timeout: float) -> "NotificationStore":
        client = AsyncMongoClient(url, tz_aware=True,
                                  serverSelectionTimeoutMS=int(server_selection_timeout * 1000))
        return cls(client, database)

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> bool:
        try:
            await self._db.command("ping")
            return True
        except PyMongoError:
            return False

    async def ensure_indexes(self) -> None:
        """Create every index; safe to run at each start-up and from several instances at once."""
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("created_at", DESCENDING)], name="user_recent")
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
        await self.notifications.create_index(
            [("user_id", ASCENDING), ("read", ASCENDING)], name="user_unread",
            partialFilterExpression={"read": False})
        await self.notifications.create_index("expires_at", name="expiry_ttl", expireAfterSeconds=0)
        await self.push_subscriptions.create_index("endpoint", name="endpoint", unique=True)
        await self.push_subscriptions.create_index("user_id", name="user")

    # -- notifications ---------------------------------------------------------------------

    async def insert(self, draft: Draft, event_id: str | None = None) -> dict[str, Any]:
        """Persist a notification with the next per-user sequence number.

        The number is the user's highest stored `seq` plus one, and the unique (user_id, seq)
        index turns a race into a retry. So `seq` N+1 is only ever taken after N is stored:
        whoever reads seq > k sees a gap-free prefix, however many processes write.
        """
        for _ in range(SEQ_RETRIES):
            last = await self.notifications.find_one(
                {"user_id": draft.user_id}, sort=[("seq", DESCENDING)], projection={"seq": 1})
            seq = (last["seq"] + 1) if last else 1
            document = to_document(draft, created_at=utcnow(), seq=seq, event_id=event_id)
            try:
                await self.notifications.insert_one(document)
                return document
            except DuplicateKeyError:
                continue
        raise StorageUnavailableError("could not allocate a sequence number (too much contention)")

    async def list(self, user_id: str, limit: int, offset: int, unread_only: bool) -> tuple[list[dict], int]:
        query = self._visible(user_id)
        if unread_only:
            query["read"] = False
        cursor = (self.notifications.find(query)
                  .sort([("created_at", DESCENDING), ("seq", DESCENDING)])
                  .skip(offset).limit(limit))
        documents = await cursor.to_list(length=limit)
        total = await self.notifications.count_documents(query)
        return documents, total

    async def after(self, user_id: str, seq: int, limit: int) -> list[dict]:
        """The user's notifications created after `seq`, oldest first."""
        query = self._visible(user_id)
        query["seq"] = {"$gt": seq}
        cursor = self.notifications.find(query).sort("seq", ASCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        """The user's notifications with after_seq < seq <= up_to_seq, newest first."""
        query = self._visible(user_id)
        query["seq"] = {"$gt": after_seq, "$lte": up_to_seq}
        cursor = self.notifications.find(query).sort("seq", DESCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        document = await self.notifications.find_one({"_id": notification_id, "user_id": user_id})
        if document is None:
            raise NotFoundError("no such notification")
        return document

    async def last_seq(self, user_id: str) -> int:
        last = await self.notifications.find_one(
            {"user_id": user_id}, sort=[("seq", DESCENDING)], projection={"seq": 1})
        return last["seq"] if last else 0

    async def unread_counts(self, user_id: str) -> dict[str, int]:
        """Unread, unexpired notifications of the user, per priority.

        This runs after every change, so it reads the priorities of up to UNREAD_SCAN_LIMIT
        unread notifications in one indexed query and counts them here; only past that does it
        count per priority on the server. (A `$group` pipeline would be one round trip, but
        nx-27017 drops the `expires_at` range of its `$match`, and its `count` is slow.)
        """
        query = self._visible(user_id)
        query["read"] = False
        cursor = self.notifications.find(query, {"priority": 1, "_id": 0}).limit(UNREAD_SCAN_LIMIT)
        priorities = [document["priority"] async for document in cursor]
        if len(priorities) < UNREAD_SCAN_LIMIT:
            return dict(Counter(priorities))
        counts = await asyncio.gather(*(
            self.notifications.count_documents({**query, "priority": priority})
            for priority in PRIORITIES))
        return dict(zip(PRIORITIES, counts))

    async def mark_read(self, user_id: str, notification_id: ObjectId) -> bool:
        """Mark one notification read; False when it already was. NotFoundError if not the user's."""
        result = await self.notifications.update_one(
            {"_id": notification_id, "user_id": user_id, "read": False},
            {"$set": {"read": True, "read_at": utcnow()}})
        if result.modified_count:
            return True
        await self.get(user_id, notification_id)
        return False

    async def mark_all_read(self, user_id: str) -> int:
        result = await self.notifications.update_many(
            {"user_id": user_id, "read": False}, {"$set": {"read": True, "read_at": utcnow()}})
        return result.modified_count

    async def delete(self, user_id: str, notification_id: ObjectId) -> None:
        result = await self.notifications.delete_one({"_id": notification_id, "user_id": user_id})
        if not result.deleted_count:
            raise NotFoundError("no such notification")

    async def delete_expired(self, retention_days: int) -> int:
        """Remove notifications past their expiry or older than the retention period."""
        now = utcnow()
        result = await self.notifications.delete_many({"$or": [
            {"expires_at": {"$lte": now}},
            {"created_at": {"$lt": now - timedelta(days=retention_days)}},
        ]})
        return result.deleted_count

    @staticmethod
    def _visible(user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "expires_at": {"$gt": utcnow()}}

    # -- channel preferences ---------------------------------------------------------------

    async def preferences_of(self, user_id: str) -> dict[str, ChannelPreference]:
        """Only the types the user changed; callers fill in defaults for the rest."""
        document = await self.preferences.find_one({"_id": user_id})
        channels = (document or {}).get("channels", {})
        return {name: ChannelPreference(**value) for name, value in channels.items()}

    async def update_preferences(self, user_id: str, changes: dict[str, dict[str, bool]]) -> None:
        fields = {f"channels.{name}.{key}": value
                  for name, change in changes.items() for key, value in change.items()}
        if not fields:
            return
        # Each type's sub-document gets both keys so a stored preference is always complete.
        current = await self.preferences_of(user_id)
        for name in changes:
            base = current.get(name, ChannelPreference())
            fields.setdefault(f"channels.{name}.enabled", base.enabled)
            fields.setdefault(f"channels.{name}.push", base.push)
        fields["updated_at"] = utcnow()
        await self.preferences.update_one({"_id": user_id}, {"$set": fields}, upsert=True)

    # -- push subscriptions ----------------------------------------------------------------

    async def save_push_subscription(self, user_id: str, subscription: PushSubscription) -> None:
        """Upsert by endpoint: a browser's subscription belongs to whoever registered it last."""
        await self.push_subscriptions.update_one(
            {"endpoint": subscription.endpoint},
            {"$set": {"user_id": user_id, "keys": {"p256dh": subscription.p256dh,
                                                   "auth": subscription.auth},
                      "updated_at": utcnow()},
             "$setOnInsert": {"created_at": utcnow()}},
            upsert=True)

    async def remove_push_subscription(self, user_id: str, endpoint: str) -> None:
        result = await self.push_subscriptions.delete_one({"endpoint": endpoint, "user_id": user_id})
        if not result.deleted_count:
            raise NotFoundError("no such push subscription")

    async def push_subscriptions_of(self, user_id: str) -> list[dict]:
        cursor = self.push_subscriptions.find({"user_id": user_id})
        return await cursor.to_list(length=None)

    # -- idempotent events -------------------------------------------------------------------

    async def claim_event(self, event_id: str, event_type: str) -> dict[str, Any] | None:
        """Record that `event_id` is being handled. Returns the earlier record if it was seen."""
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

    async def complete_event(self, event_id: str, notification_ids: list[str]) -> None:
        await self.events.update_one({"_id": event_id}, {"$set": {
            "state": "done", "notifications": notification_ids, "completed_at": utcnow()}})

    async def release_event(self, event_id: str) -> None:
        """Forget a claim whose handling failed, so a retry of the event can succeed."""
        await self.events.delete_one({"_id": event_id, "state": "pending"})

    async def event(self, event_id: str) -> dict[str, Any] | None:
        return await self.events.find_one({"_id": event_id})

    async def notifications_of_event(self, event_id: str) -> list[dict]:
        cursor = self.notifications.find({"event_id": event_id}).sort("_id", ASCENDING)
        return await cursor.to_list(length=None)
