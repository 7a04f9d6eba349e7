"""Domain events in: route to the owning plugin, turn its drafts into notifications, once.

An event with an `id` is idempotent (see idempotency.py): a repeat returns the first result and
creates nothing, across restarts and instances. `ingest` takes one event (`POST /api/events`),
`ingest_many` a stream's batch: its ids claimed in one write, its notifications stored in one.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any, Collection

from .errors import NotifyError, RateLimitedError, ValidationError
from . import tenants
from .escalations import ResolveEscalation
from .escalations.service import EscalationService
from .idempotency import STALE_CLAIM, Idempotency, event_key
from .metrics import Metrics
from .model import Draft, Event
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
        # Claims of a batch that failed while storage was away, released once it answers, so
        # the batch's retry need not wait for them to turn stale.
        self._unreleased: list[EventClaim] = []

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

    async def ingest_many(self, events: list[Event], take_over: Collection[int] = ()
                          ) -> list[list[str] | Exception]:
        """`ingest` for a batch (a stream's entries): each event's notification ids, or the
        error it met, in its place. Still once per event id: the ids are claimed in one write,
        an id twice in the batch (or already stored) is handled once and the others answer
        with its ids, and every event's drafts are stored in one write under its own claim.
        The events at the positions `take_over` (redelivered ones) take over a claim pending
        on their id however young it is; the others wait for it to turn stale (a 429)."""
        await self._release_leftovers()
        outcomes: list[list[str] | Exception | None] = [None] * len(events)
        claims: dict[str, EventClaim] = {}
        first_of: dict[str, int] = {}
        repeats: list[tuple[int, str]] = []
        for index, event in enumerate(events):
            if event.id is None:
                continue
            key = event_key(tenants.key(event.tenant, event.id))
            if key in first_of:
                repeats.append((index, key))
                continue
            first_of[key] = index
            claims[key] = EventClaim(key, secrets.token_hex(12))
        try:
            await self._claim_many(events, claims, first_of, outcomes, set(take_over))
        except NotifyError as error:  # storage away: nothing was claimed or handled
            return [error] * len(events)
        held = {first_of[key]: claim for key, claim in claims.items()}
        try:
            await self._handle_many(events, outcomes, held, [
                index for index, event in enumerate(events) if index in held or event.id is None])
        except BaseException:  # cancelled (shutdown): a redelivery must not wait for staleness
            for claim in held.values():
                try:
                    await self.idempotency.store.release_event(claim)  # only while pending
                except Exception:  # storage away too: released by the next batch, or stale
                    self._unreleased.append(claim)
            raise
        for index, key in repeats:
            earlier = outcomes[first_of[key]]
            outcomes[index] = (ValidationError("id", f"was already used for a "
                                               f"{events[first_of[key]].type} event",
                                               code="event_id_conflict")
                               if events[index].type != events[first_of[key]].type
                               else earlier)
        for event, outcome in zip(events, outcomes):
            self._metrics.events.labels(self._known(event.type), _outcome_label(outcome)).inc()
        return outcomes

    async def _claim_many(self, events: list[Event], claims: dict[str, EventClaim],
                          first_of: dict[str, int], outcomes: list, take_over: set[int]) -> None:
        """Claim every event id at once; an event whose id was seen gets its earlier ids as
        its outcome (and loses its claim), one whose id another request handles right now a
        RateLimitedError (to retry) unless it may take the claim over, one of another type a
        conflict."""
        keys = list(claims)
        records = await self.idempotency.store.claim_events(
            [(key, events[first_of[key]].type, claims[key].owner) for key in keys])
        for key, record in zip(keys, records):
            if record is None:
                continue
            index = first_of[key]
            if record.get("type") != events[index].type:
                outcomes[index] = ValidationError("id", f"was already used for a "
                                                  f"{record.get('type')} event",
                                                  code="event_id_conflict")
            elif record["state"] == "done":
                outcomes[index] = list(record["notifications"])
            elif await self.idempotency.take_over_if_stale(
                    record, claims[key], timedelta(0) if index in take_over else STALE_CLAIM):
                continue
            else:
                outcomes[index] = RateLimitedError(f"{key} is being handled by another request",
                                                   retry_after=1.0)
            del claims[key]

    async def _handle_many(self, events: list[Event], outcomes: list,
                           claims: dict[int, EventClaim], todo: list[int]) -> None:
        """The plugins' drafts of the events at `todo` (each under its claim, if it has an id),
        stored in one write; what fails before anything is stored releases its claim, so a
        retry can succeed."""
        prepared: list[tuple[int, list[Draft], list[ResolveEscalation]]] = []
        for index in todo:
            try:
                prepared.append((index, *await self._drafts_of(events[index])))
            except Exception as error:
                outcomes[index] = error
        groups = [(drafts, claims.get(index)) for index, drafts, _ in prepared if drafts]
        try:
            created = iter(await self.service.create_groups(groups) if groups else [])
        except Exception as error:  # storage away, rate limited: none of them was stored
            for index, _, _ in prepared:
                outcomes[index] = error
            prepared = []
        for index, drafts, resolutions in prepared:
            result = next(created) if drafts else []
            if isinstance(result, Exception):  # its claim was lost, or it was over the limit
                outcomes[index] = result
                continue
            try:
                await self._resolve(events[index], resolutions)
            except Exception as error:
                outcomes[index] = error
                continue
            outcomes[index] = [payload["id"] for payload in result if payload is not None]
        for index, claim in claims.items():
            outcome = outcomes[index]
            try:
                if isinstance(outcome, Exception):
                    await self.idempotency.store.release_event(claim)
                elif not outcome:  # nothing stored (muted, or only resolutions)
                    await self.idempotency.store.complete_event(claim, [])
            except NotifyError as error:
                if not isinstance(outcome, Exception):
                    outcomes[index] = error
                self._unreleased.append(claim)

    async def _release_leftovers(self) -> None:
        """Release the claims a failed batch left pending (one whose write landed late is done
        by now, and stays so)."""
        leftovers, self._unreleased = self._unreleased, []
        for position, claim in enumerate(leftovers):
            try:
                await self.idempotency.store.release_event(claim)
            except NotifyError:
                self._unreleased.extend(leftovers[position:])
                return

    async def _drafts_of(self, event: Event) -> tuple[list[Draft], list[ResolveEscalation]]:
        """The event's validated drafts (topics expanded) and the escalations it resolves."""
        if event.type not in self.plugins.event_types:
            check_event_rules({"type": event.type, "data": event.data},  # raises naming the known
                              self.plugins.event_types)                  # types
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
        return drafts, resolutions

    async def _resolve(self, event: Event, resolutions: list[ResolveEscalation]) -> None:
        for resolution in resolutions:
            if self.escalations is not None:
                await self.escalations.resolve(tenants.key(event.tenant, resolution.key),
                                               resolution.resolution)

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
        drafts, resolutions = await self._drafts_of(event)
        created = await self.service.create_many(drafts, claim=claim) if drafts else []
        await self._resolve(event, resolutions)
        return [payload["id"] for payload in created if payload is not None]


def _outcome_label(outcome: list[str] | Exception) -> str:
    """`mojavox_events{outcome}` of one event of a batch (a repeat is counted as created: the
    batch does not tell them apart)."""
    if isinstance(outcome, Exception):
        return "refused" if isinstance(outcome, NotifyError) and outcome.status < 500 \
            and not isinstance(outcome, RateLimitedError) else "failed"
    return "created" if outcome else "none_created"
