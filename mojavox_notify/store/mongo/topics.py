"""The MongoDB engine's topics: one document {topic, member} per membership (schema.py says
why). `MongoStore` delegates its one transaction here."""

from __future__ import annotations

from pymongo import UpdateOne

from .. import TopicFullError
from .documents import Collections


async def update_members(collections: Collections, topic: str, add: list[str], remove: list[str],
                         max_members: int, session) -> int:
    """Members added (upserts: those already in are left as they are), then removed, then
    counted; TopicFullError, which aborts the transaction, when that grew the topic past
    `max_members` (one already past it, the limit since lowered, may still lose members)."""
    added = removed = 0
    if add:
        result = await collections.memberships.bulk_write([
            UpdateOne({"topic": topic, "member": member},
                      {"$setOnInsert": {"topic": topic, "member": member}}, upsert=True)
            for member in dict.fromkeys(add)], session=session)
        added = result.upserted_count
    if remove:
        result = await collections.memberships.delete_many(
            {"topic": topic, "member": {"$in": list(dict.fromkeys(remove))}}, session=session)
        removed = result.deleted_count
    size = await collections.memberships.count_documents({"topic": topic}, session=session)
    if size > max_members and added > removed:
        raise TopicFullError(size, max_members)
    return size
