"""The MongoDB engine's event claims (idempotency.py): one document per key in `events`, its
`_id` the key, so the unique index decides who holds it. `MongoStore` delegates here."""

from __future__ import annotations

from typing import Any, Sequence

from pymongo.errors import BulkWriteError, DuplicateKeyError

from ...model import utcnow
from .documents import DUPLICATE_KEY, Collections


async def claim_event(collections: Collections, key: str, fingerprint: str,
                      owner: str) -> dict[str, Any] | None:
    """None when `owner` holds the key now; else the record that holds it (one released
    between the refusal and the read is claimed again)."""
    while True:
        try:
            await collections.events.insert_one({
                "_id": key, "type": fingerprint, "state": "pending", "owner": owner,
                "notifications": [], "created_at": utcnow()})
            return None
        except DuplicateKeyError:
            record = await collections.events.find_one({"_id": key})
        if record is not None:
            return record


async def claim_events(collections: Collections, claims: Sequence[tuple[str, str, str]]
                       ) -> list[dict[str, Any] | None]:
    """One unordered insert of every claim; the keys it found taken are read back at once."""
    if not claims:
        return []
    now = utcnow()
    taken: set[str] = set()
    try:
        await collections.events.insert_many(
            [{"_id": key, "type": fingerprint, "state": "pending", "owner": owner,
              "notifications": [], "created_at": now} for key, fingerprint, owner in claims],
            ordered=False)
    except BulkWriteError as error:
        failures = error.details.get("writeErrors", [])
        if any(failure.get("code") != DUPLICATE_KEY for failure in failures):
            raise
        taken = {claims[failure["index"]][0] for failure in failures}
    if not taken:
        return [None] * len(claims)
    found = {record["_id"]: record async for record in collections.events.find(
        {"_id": {"$in": sorted(taken)}})}
    earlier: list[dict[str, Any] | None] = []
    for key, fingerprint, owner in claims:
        if key not in taken:
            earlier.append(None)
        elif key in found:
            earlier.append(found[key])
        else:  # released meanwhile: claim it alone
            earlier.append(await claim_event(collections, key, fingerprint, owner))
    return earlier
