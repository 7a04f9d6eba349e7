"""Domain events in: route to the owning plugin, turn its drafts into notifications, once.

An event with an `id` is idempotent (see idempotency.py): a repeat returns the first result and
creates nothing, across restarts and instances.
"""

from __future__ import annotations

from typing import Any

from .errors import NotifyError, ValidationError
from .idempotency import Idempotency
from .model import Event, validate_event
from .plugins import Plugins
from .service import NotificationService
from .store import NotificationStore


class EventIngest:
    def __init__(self, plugins: Plugins, service: NotificationService, store: NotificationStore):
        self.plugins = plugins
        self.service = service
        self.idempotency = Idempotency(store)

    def parse(self, raw: Any) -> Event:
        return validate_event(raw, self.plugins.event_types)

    async def ingest(self, event: Event) -> list[str]:
        """Create the event's notifications; returns their ids (muted recipients give none)."""
        if event.type not in self.plugins.event_types:
            self.parse({"type": event.type, "data": event.data})  # raises naming the known types
        if event.id is None:
            return await self._handle(event)
        ids, _ = await self.idempotency.once(
            event.id, event.type, lambda: self._handle(event),
            lambda earlier: ValidationError("id", f"was already used for a {earlier} event",
                                            code="event_id_conflict"))
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
