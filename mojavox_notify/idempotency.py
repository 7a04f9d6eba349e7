"""At most once per key, across concurrent requests, restarts and instances.

A unique record per key in storage (the store's event records) is claimed before the work and
completed with the ids it created, so a repeat returns the first result and creates nothing. It
serves event ids (`POST /api/events`) and `Idempotency-Key` headers (`POST /api/notifications`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Awaitable, Callable

from .errors import RateLimitedError, ValidationError
from .model import utcnow
from .store import NotificationStore

log = logging.getLogger(__name__)

# A concurrent duplicate waits this long for the first request to finish.
PENDING_WAIT_SECONDS = 10.0
# A claim still pending after this long belongs to a request that died; it may be taken over.
STALE_CLAIM = timedelta(seconds=30)


class Idempotency:
    def __init__(self, store: NotificationStore):
        self.store = store

    async def once(self, key: str, fingerprint: str, work: Callable[[], Awaitable[list[str]]],
                   conflict: Callable[[str], ValidationError]) -> tuple[list[str], bool]:
        """Run `work` (which stores notifications tagged with `key` and returns their ids) unless
        `key` ran before: then return its ids. The second value tells whether this was a repeat.
        A key reused with another `fingerprint` (event type, request body) raises `conflict`."""
        earlier = await self._claim(key, fingerprint, conflict)
        if earlier is not None:
            return earlier, True
        try:
            ids = await work()
        except BaseException:
            await self.store.release_event(key)
            raise
        await self.store.complete_event(key, ids)
        return ids, False

    async def _claim(self, key: str, fingerprint: str,
                     conflict: Callable[[str], ValidationError]) -> list[str] | None:
        """None when this request owns the key now; the earlier result when it was seen."""
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            record = await self.store.claim_event(key, fingerprint)
            if record is None:
                return None
            if record.get("type") != fingerprint:
                raise conflict(record.get("type"))
            if record["state"] == "done":
                return list(record["notifications"])
            if utcnow() - record["created_at"] > STALE_CLAIM:
                return await self._recover(key, fingerprint, conflict)
            if time.monotonic() > deadline:
                raise RateLimitedError(f"{key} is still being handled by another request; "
                                       "retry shortly", retry_after=1.0)
            await asyncio.sleep(0.05)

    async def _recover(self, key: str, fingerprint: str,
                       conflict: Callable[[str], ValidationError]) -> list[str] | None:
        """A claim left by a request that died: keep what it stored, or start over."""
        stored = await self.store.notifications_of_event(key)
        if stored:
            ids = [str(document["_id"]) for document in stored]
            await self.store.complete_event(key, ids)
            log.warning("%s: recovered %d notifications of an interrupted request", key, len(ids))
            return ids
        await self.store.release_event(key)
        return await self._claim(key, fingerprint, conflict)
