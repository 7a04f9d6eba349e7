"""Domain events in: route to the owning plugin, turn its drafts into notifications, once.

An event with an `id` is idempotent (see idempotency.py): a repeat returns the first result and
creates nothing, across restarts and instances.
"""

from __future__ import annotations

from typing import Any

from .errors import NotifyError, ValidationError
from . import tenants
from .escalations import ResolveEscalation
from .escalations.service import EscalationService
from .idempotency import Idempotency, event_key
from .metrics import Metrics
from .model import Event
from .plugins import Plugins
from .service import NotificationService
from .store import EventClaim, NotificationStore
from .tenants import Reach
from .wire.event import EventCheck, check_event_rules


class EventIngest:
    def __init__(self, plugins: Plugins, service: NotificationService, store: NotificationStore,
                 metrics: Metrics | None = None, escalations: EscalationService | None = None):
        self.plugins = plugins
        self.service = service
        self.escalations = escalations
        self.idempotency = Idempotency(store)
        self._metrics = metrics or Metrics()
        self._event_check = EventCheck(plugins.event_types)

    def parse(self, raw: Any, reach: Reach = Reach()) -> Event:
        try:
            return self._event_check.check(raw, reach)
        except ValidationError:
            self._metrics.events.labels(self._known(raw.get("type") if isinstance(raw, dict) else None),
                                        "refused").inc()
            raise

    def _known(self, event_type: Any) -> str:
        """A label for an event type: only the known ones, so clients cannot add label values."""
        return event_type if isinstance(event_type, str) and event_type in self.plugins.event_types else "unknown"

    async def ingest(self, event: Event) -> list[str]:
        """Create the event's notifications; returns their ids (muted recipients give none)."""
        outcome = "failed"
        try:
            ids, repeat = await self._ingest(event)
            outcome = "repeat" if repeat else "created" if ids else "none_created"
            return ids
        except NotifyError as error:
            outcome = "refused" if error.status < 500 else "failed"
            raise
        finally:
            self._metrics.events.labels(self._known(event.type), outcome).inc()

    async def _ingest(self, event: Event) -> tuple[list[str], bool]:
        if event.type not in self.plugins.event_types:
            check_event_rules({"type": event.type, "data": event.data},  # raises naming the known
                              self.plugins.event_types)                  # types
        if event.id is None:
            return await self._handle(event), False
        return await self.idempotency.once(
            event_key(tenants.key(event.tenant, event.id)), event.type,
            lambda claim: self._handle(event, claim),
            lambda earlier: ValidationError("id", f"was already used for a {earlier} event",
                                            code="event_id_conflict"))

    async def _handle(self, event: Event, claim: EventClaim | None = None) -> list[str]:
        raw_drafts = await self.plugins.drafts_for(event)
        if raw_drafts is None:
            raise NotifyError(f"plugin {self.plugins.event_types[event.type]} declared "
                              f"{event.type} but returned no drafts for it")
        if not isinstance(raw_drafts, list):
            raw_drafts = [raw_drafts]
        resolutions = [item for item in raw_drafts if isinstance(item, ResolveEscalation)]
        raw_drafts = [item for item in raw_drafts if not isinstance(item, ResolveEscalation)]
        # The plugin's drafts stay inside the event's tenant.
        drafts = await self.service.expand(self.service.validate(raw_drafts, Reach(event.tenant)))
        created = await self.service.create_many(drafts, claim=claim) if drafts else []
        for resolution in resolutions:
            if self.escalations is not None:
                await self.escalations.resolve(tenants.key(event.tenant, resolution.key),
                                               resolution.resolution)
        return [payload["id"] for payload in created if payload is not None]
