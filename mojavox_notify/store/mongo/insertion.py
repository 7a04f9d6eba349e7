"""Storing notifications, the MongoDB engine's hot path: every insertion queued meanwhile goes into
one transaction, with its users' counters, its push jobs and the completion of its claim.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import UpdateOne

from ...model import PRIORITIES, to_document, utcnow
from .. import ClaimLostError, Created, EventClaim, Insertion, UserState
from .documents import NEVER_MS, Collections, _state, to_ms


async def store_batch(collections: Collections, insertions: list[Insertion], session) -> list:
    """The transaction of one batch (its `work`): claims checked, notifications inserted with
    the next sequence numbers of their users, counters set, push jobs recorded, claims
    completed. One list of records per insertion (an abandoned one: empty), or a
    ClaimLostError."""
    held = await _held_claims(collections, [i.claim for i in insertions if not i.abandoned
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
    created = iter(await _insert_live(collections, live, utcnow(), session))
    return [[next(created) for _ in insertion.drafts] if outcome is None else outcome
            for insertion, outcome in zip(insertions, outcomes)]


async def _held_claims(collections: Collections, claims: list[EventClaim], session) -> set[str]:
    """The keys among `claims` still pending and their owner's."""
    if not claims:
        return set()
    owners = {claim.key: claim.owner for claim in claims}
    found = await collections.events.find({"_id": {"$in": list(owners)}, "state": "pending"},
                                          {"owner": 1}, session=session).to_list(length=None)
    return {record["_id"] for record in found if record.get("owner") == owners[record["_id"]]}


async def _insert_live(collections: Collections, insertions: list[Insertion],
                       created_at: datetime, session) -> list[Created]:
    drafts = [(draft, wanted, insertion.claim) for insertion in insertions
              for draft, wanted in zip(insertion.drafts, insertion.push)]
    if not drafts:
        return []
    users = list({draft.user_id for draft, _, _ in drafts})
    counters = {document["_id"]: _state(document) async for document in collections.states.find(
        {"_id": {"$in": users}}, session=session)}
    wanted = list({draft.user_id for draft, flag, _ in drafts if flag})
    subscribed = {document["user_id"] for document in await collections.push_subscriptions.find(
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
    await collections.states.bulk_write([UpdateOne({"_id": user_id}, {
        "$set": {"seq": state.seq, "total": state.total,
                 **{f"unread_{p}": state.unread.get(p, 0) for p in PRIORITIES}},
        "$min": {"expiry_due": expiry.get(user_id, NEVER_MS)}}, upsert=True)
        for user_id, state in counters.items()], session=session)
    await collections.notifications.insert_many([record.document for record in created],
                                                session=session)
    jobs = [{"user_id": record.document["user_id"],
             "notification_id": str(record.document["_id"]),
             "priority": record.document["priority"], "created_at": to_ms(created_at),
             "due_at": to_ms(created_at), "attempts": 0, "done": [], "leased_until": 0}
            for record in created if record.pushed]
    if jobs:
        await collections.push_outbox.insert_many(jobs, session=session)
    for insertion in insertions:
        if insertion.claim is None:
            continue
        ids = [str(record.document["_id"]) for record in created
               if record.document.get("event_id") == insertion.claim.key]
        await collections.events.update_one({"_id": insertion.claim.key}, {"$set": {
            "state": "done", "notifications": ids, "completed_at": created_at}},
            session=session)
    return created
