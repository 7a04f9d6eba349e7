"""Domain events in: route to the owning plugin, turn its drafts into notifications, once.

An event with an `id` is idempotent: a unique record per id (in storage, so it holds across
restarts and across instances) makes a repeat return the first result and create nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from .errors import NotifyError, RateLimitedError, ValidationError
from .model import Event, utcnow, validate_event
from .plugins import Plugins
from .service import NotificationService
from .store import NotificationStore

log = logging.getLogger(__name__)

# A concurrent duplicate waits this long for the first request to finish.
PENDING_WAIT_SECONDS = 10.0
# A claim still pending after this long belongs to a request that died; it may be taken over.
STALE_CLAIM = timedelta(seconds=30)


class EventIngest:
    def __init__(self, plugins: Plugins, service: NotificationService, store: NotificationStore):
        self.plugins = plugins
        self.service = service
        self.store = store

    def parse(self, raw: Any) -> Event:
        return validate_event(raw, self.plugins.event_types)

    async def ingest(self, event: Event) -> list[str]:
        """Create the event's notifications; returns their ids (muted recipients give none)."""
        if event.type not in self.plugins.event_types:
            self.parse({"type": event.type, "data": event.data})  # raises naming the known types
        if event.id is None:
            return await self._handle(event)
        earlier = await self._claim(event)
        if earlier is not None:
            return earlier
        try:
            ids = await self._handle(event)
        except BaseException:
            await self.store.release_event(event.id)
            raise
        await self.store.complete_event(event.id, ids)
        return ids

    async def _handle(self, event: Event) -> list[str]:
        raw_drafts = await self.plugins.drafts_for(event)
        if raw_drafts is None:
            raise NotifyError(f"plugin {self.plugins.event_types[event.type]} declared "
                              f"{event.type} but returned no drafts for it")
        if not isinstance(raw_drafts, list):
            raw_drafts = [raw_drafts]
        drafts = self.service.validate(raw_drafts)
        created = await self.service.create_many(drafts, event_id=event.id)
        return [payload["id"] for payload in created if payload is not None]

    async def _claim(self, event: Event) -> list[str] | None:
        """None when this request owns the event now; the earlier result when it was seen."""
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            record = await self.store.claim_event(event.id, event.type)
            if record is None:
                return None
            if record.get("type") != event.type:
                raise ValidationError("id", f"was already used for a {record.get('type')} event",
                                      code="event_id_conflict")
            if record["state"] == "done":
                return list(record["notifications"])
            if utcnow() - record["created_at"] > STALE_CLAIM:
                return await self._recover(event)
            if time.monotonic() > deadline:
                raise RateLimitedError(f"event {event.id} is still being handled by another "
                                       "request; retry shortly", retry_after=1.0)
            await asyncio.sleep(0.05)

    async def _recover(self, event: Event) -> list[str] | None:
        """A claim left by a request that died: keep what it stored, or start over."""
        stored = await self.store.notifications_of_event(event.id)
        if stored:
            ids = [str(document["_id"]) for document in stored]
            await self.store.complete_event(event.id, ids)
            log.warning("event %s: recovered %d notifications of an interrupted request",
                        event.id, len(ids))
            return ids
        await self.store.release_event(event.id)
        return await self._claim(event)
