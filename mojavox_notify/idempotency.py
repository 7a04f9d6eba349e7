"""At most once per key, across concurrent requests, restarts and instances.

A request claims the key in storage (its record in the store's events) under a random owner
token before the work, and its notifications are stored under that claim, which completes it
in the same transaction (`NotificationStore.insert_many`). So what happened is decided from
what is stored, never from whether a call raised: a write that times out and commits later
has completed the claim, and a retry replays its result; one that lands after its request
gave up and released the claim, or after another request took the claim over, stores nothing.
It serves event ids (`POST /api/events`, keys `event:<id>`) and `Idempotency-Key` headers
(`POST /api/notifications`, keys `request:<caller>:<key>`), each in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import timedelta
from typing import Awaitable, Callable

from .errors import RateLimitedError, ValidationError
from .model import utcnow
from .store import ClaimLostError, EventClaim, NotificationStore

log = logging.getLogger(__name__)

# A concurrent duplicate waits this long for the first request to finish.
PENDING_WAIT_SECONDS = 10.0
# A claim still pending after this long belongs to a request that died; it may be taken over.
STALE_CLAIM = timedelta(seconds=30)

Work = Callable[[EventClaim], Awaitable[list[str]]]


def event_key(event_id: str) -> str:
    return f"event:{event_id}"


def request_key(caller: str, key: str) -> str:
    return f"request:{caller}:{key}"


class Idempotency:
    def __init__(self, store: NotificationStore):
        self.store = store

    async def once(self, key: str, fingerprint: str, work: Work,
                   conflict: Callable[[str], ValidationError]) -> tuple[list[str], bool]:
        """Run `work(claim)` (which stores its notifications under the claim and returns their
        ids) unless `key` ran before: then return its ids. The second value tells whether this
        was a repeat. A key reused with another `fingerprint` (event type, request body) raises
        `conflict`."""
        claim = EventClaim(key, secrets.token_hex(12))
        while True:
            earlier = await self._claim(claim, fingerprint, conflict)
            if earlier is not None:
                return earlier, True
            try:
                ids = await work(claim)
            except ClaimLostError:
                log.warning("%s: taken over by another request while this one waited to store; "
                            "answering with its result", key)
                continue
            except BaseException:
                await self.store.release_event(claim)  # only while pending: nothing was stored
                raise
            await self.store.complete_event(claim, ids)  # when it stored none (all muted)
            return ids, False

    async def take_over_if_stale(self, record: dict, claim: EventClaim,
                                 stale_after: timedelta = STALE_CLAIM) -> bool:
        """Whether `claim` now holds a key whose pending `record` belongs to a request that
        died (older than `stale_after`): nothing is stored under a pending claim, and a write
        of its owner's that comes later stores nothing (it is no longer the owner's)."""
        if utcnow() - record["created_at"] <= stale_after:
            return False
        if not await self.store.take_over_event(claim.key, record.get("owner"), claim.owner):
            return False
        log.warning("%s: took over the claim of a request that stopped", claim.key)
        return True

    async def _claim(self, claim: EventClaim, fingerprint: str,
                     conflict: Callable[[str], ValidationError]) -> list[str] | None:
        """None when this request owns the key now; the earlier result when it was seen."""
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            record = await self.store.claim_event(claim.key, fingerprint, claim.owner)
            if record is None:
                return None
            if record.get("type") != fingerprint:
                raise conflict(record.get("type"))
            if record["state"] == "done":
                return list(record["notifications"])
            if utcnow() - record["created_at"] > STALE_CLAIM:
                if await self.take_over_if_stale(record, claim):
                    return None
                continue  # another request took it over first: read its record again
            if time.monotonic() > deadline:
                raise RateLimitedError(f"{claim.key} is still being handled by another request; "
                                       "retry shortly", retry_after=1.0)
            await asyncio.sleep(0.05)
