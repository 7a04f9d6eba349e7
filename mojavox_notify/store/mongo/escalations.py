"""The MongoDB engine's escalations: one document each in `escalations` (its `live_key` only
while unresolved, under a sparse unique index), its timeline in `escalation_events`, its
recipients the notifications carrying `escalation.id`. `MongoStore` delegates here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

from pymongo import ASCENDING, DESCENDING, InsertOne, UpdateMany
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .. import Created, DueShare, EscalationChange, Insertion, push_flags
from .documents import DUPLICATE_KEY, Collections, to_ms
from .insertion import _insert_live



def _stored_form(document: dict[str, Any]) -> dict[str, Any]:
    """Without the fields that are absent rather than empty (a sparse index skips only those)."""
    return {name: value for name, value in document.items()
            if not (name == "live_key" and value is None)}


def _caller_form(document: dict[str, Any] | None) -> dict[str, Any] | None:
    if document is not None:
        document.setdefault("live_key", None)
    return document


async def open_escalation(collections: Collections, document: dict[str, Any]) -> tuple[dict, bool]:
    """Inserted unless its key has an unresolved escalation; the unique index decides, and an
    escalation resolved between the refusal and the look-up lets the next attempt insert."""
    while True:
        try:
            await collections.escalation_records.insert_one(_stored_form(document))
            return document, True
        except DuplicateKeyError:
            existing = await collections.escalation_records.find_one({"live_key": document["live_key"]})
            if existing is not None:
                return _caller_form(existing), False


async def escalation(collections: Collections, query: dict[str, Any]) -> dict | None:
    return _caller_form(await collections.escalation_records.find_one(query))


async def change_escalations(collections: Collections, changes: Sequence[EscalationChange],
                             created_at: datetime,
                             transaction: Callable[..., Awaitable[Any]]) -> list[list[Created] | None]:
    """Compare-and-set on `version`; for the changes stored, their drafts inserted (in one
    insertion) and their lines appended, in one transaction."""
    async def work(session) -> list[list[Created] | None]:
        won: list[EscalationChange] = []
        outcomes: list[bool] = []
        for change in changes:
            document = change.document
            result = await collections.escalation_records.replace_one(
                {"_id": document["_id"], "version": change.expected_version},
                _stored_form(document), session=session)
            outcomes.append(bool(result.matched_count))
            if not result.matched_count:
                continue
            won.append(change)
        created = iter(await _insert_live(collections, [
            Insertion(list(change.drafts), None, push_flags(change.push, len(change.drafts)))
            for change in won if change.drafts], created_at, session))
        lines = [_line(event) for change in won for event in change.events]
        if lines:
            await collections.escalation_lines.insert_many(lines, session=session)
        changed = iter(won)
        return [[next(created) for _ in next(changed).drafts] if stored else None
                for stored in outcomes]
    return await transaction(work)


async def with_current(collections: Collections, documents: list[dict]) -> list[dict]:
    """Notifications read, each of an escalation with that escalation as it is now (`current`
    in its part; one more query, only when some belong to one)."""
    ids = {d["escalation"]["id"] for d in documents if d.get("escalation") is not None}
    if not ids:
        return documents
    found = {record["_id"]: _caller_form(record) async for record in
             collections.escalation_records.find({"_id": {"$in": list(ids)}})}
    for document in documents:
        part = document.get("escalation")
        if part is not None and part["id"] in found:
            part["current"] = found[part["id"]]
    return documents


async def due_escalations(collections: Collections, now_ms: int, limit: int,
                          after: tuple[int, str] | None, share: DueShare | None) -> list[dict]:
    conditions: list[dict[str, Any]] = [{"due_at": {"$lte": now_ms}}]
    if after is not None:
        due_at, escalation_id = after
        conditions.append({"$or": [{"due_at": {"$gt": due_at}},
                                   {"due_at": due_at, "_id": {"$gt": escalation_id}}]})
    if share is not None:
        conditions.append({"$or": [{"due_at": {"$mod": [share.count, share.index]}},
                                   {"due_at": {"$lte": share.everyone_before}}]})
    found = await collections.escalation_records.find({"$and": conditions}).sort(
        [("due_at", ASCENDING), ("_id", ASCENDING)]).limit(limit).to_list(length=None)
    return [_caller_form(document) for document in found]


async def recipients(collections: Collections, escalation_ids: list[str]) -> dict[str, list]:
    found = await collections.notifications.find(
        {"escalation.id": {"$in": escalation_ids}},
        {"user_id": 1, "escalation": 1, "created_at": 1, "read": 1, "read_at": 1}).sort(
        [("created_at", ASCENDING), ("_id", ASCENDING)]).to_list(length=None)
    recipients: dict[str, list] = {escalation_id: [] for escalation_id in escalation_ids}
    for document in found:
        told = document["escalation"]
        recipients[told["id"]].append({
            "user_id": document["user_id"], "notification_id": str(document["_id"]),
            "step": told.get("step", 0), "round": told.get("round", 0),
            "created_at": _ms(document["created_at"]), "read": document["read"],
            "read_at": _ms(document.get("read_at"))})
    return recipients


async def escalations_of(collections: Collections, user_id: str, states: Sequence[str],
                         limit: int) -> list[dict]:
    ids = await collections.notifications.distinct(
        "escalation.id", {"user_id": user_id, "escalation.id": {"$exists": True}})
    if not ids:
        return []
    found = await collections.escalation_records.find(
        {"_id": {"$in": ids}, "state": {"$in": list(states)}}).sort(
        [("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit).to_list(length=None)
    return [_caller_form(document) for document in found]


async def add_events(collections: Collections, events: Sequence[dict[str, Any]]) -> None:
    """Unordered, so an event already stored under its `once` skips only itself."""
    operations = [InsertOne(_line(event)) for event in events]
    try:
        await collections.escalation_lines.bulk_write(operations, ordered=False)
    except BulkWriteError as error:
        if any(failure.get("code") != DUPLICATE_KEY for failure in error.details["writeErrors"]):
            raise


def _line(event: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in event.items() if value is not None}


async def events(collections: Collections, escalation_id: str) -> list[dict]:
    found = await collections.escalation_lines.find({"escalation_id": escalation_id}).sort(
        [("at", ASCENDING), ("_id", ASCENDING)]).to_list(length=None)
    return [{name: document.get(name) for name in
             ("escalation_id", "at", "event", "user_id", "step", "channel", "once")}
            for document in found]


async def delete_finished(collections: Collections, before_ms: int) -> int:
    ended = await collections.escalation_records.find(
        {"state": {"$in": ["resolved", "unanswered"]}, "updated_at": {"$lt": before_ms}}
    ).to_list(length=None)
    if ended:
        ids = [record["_id"] for record in ended]
        # Their notifications keep each as it ended (reads attach it while it exists).
        await collections.notifications.bulk_write([UpdateMany(
            {"escalation.id": record["_id"]},
            {"$set": {"escalation.current": _caller_form(record)}}) for record in ended])
        await collections.escalation_lines.delete_many({"escalation_id": {"$in": ids}})
        await collections.escalation_records.delete_many({"_id": {"$in": ids}})
    return len(ended)


def _ms(moment) -> int | None:
    """Epoch ms of a stored time; a time set by an update may come back from nx-27017 (the
    test server) as its ISO text."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return to_ms(moment)
