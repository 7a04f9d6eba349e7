"""Stream entries in, verdicts out: the part of stream ingest every kind of source shares.

An entry is a `POST /api/events` body from a platform producer; its optional `tenant` is the
tenant it acts in (then the body may name only that tenant). An event without `id` gets the
entry's own id, qualified by the source's name, so a redelivered entry is still handled once.
A batch goes through `EventIngest.ingest_many`: one claim write and one storage write for the
whole batch, once per event id. A redelivered entry takes over a claim left pending on its id
(by a consumer that died holding it): safe, since a write under a claim taken over stores
nothing, and it spares the redelivery the wait until the claim is stale.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import NotifyError, RateLimitedError, StorageUnavailableError, ValidationError
from ..health import StorageHealth
from ..ingest import EventIngest
from ..model import Event
from ..settings import ServerSettings
from ..store import ClaimLostError
from ..tenants import PLATFORM, TENANT_RULE, Reach, valid_tenant
from ..wire.input import parse_json
from .source import DEAD, RETRY, STORED, StreamEntry, Verdict

log = logging.getLogger(__name__)

#: Failures outside the entry: storage away, a rate limit or the id held elsewhere (both 429),
#: a claim taken over meanwhile.
TRANSIENT = (StorageUnavailableError, RateLimitedError, ClaimLostError)
DEFAULT_MAX_BYTES = ServerSettings.max_body_bytes


class StreamIntake:
    def __init__(self, ingest: EventIngest, storage: StorageHealth | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        """`storage` (the watchdog) lets a source ask whether storage answers again after a
        batch it could not store, instead of being delivered the same entries again to find
        out; without it (`check`), storage counts as answering. `max_bytes`: the largest event
        an entry may hold (`server.max_body_bytes`, as a `POST /api/events` body)."""
        self.ingest = ingest
        self._storage = storage
        self.max_bytes = max_bytes

    def storage_answers(self) -> bool:
        """Whether storage answered its last probe and no operation failed since."""
        return self._storage is None or self._storage.ok

    async def handle(self, source_name: str, entries: list[StreamEntry]) -> list[Verdict]:
        """One verdict per entry, in order: `dead` for what can never be handled (not JSON, not
        a valid event, a type no plugin handles, an id used for another type), `retry` for
        what failed for now (storage away, a rate limit, the id being handled elsewhere: all
        `transient`; or an unexpected failure, which counts towards giving the entry up),
        `stored` once its notifications are stored."""
        verdicts: list[Verdict | None] = []
        events: list[Event] = []
        redelivered: set[int] = set()
        for entry in entries:
            try:
                events.append(self._event(source_name, entry))
                verdicts.append(None)
            except NotifyError as error:
                verdicts.append(Verdict(DEAD, error.message))
                continue
            except Exception as error:  # whatever the entry holds, it must not stop the stream
                log.exception("%s: entry %s could not be read", source_name, entry.entry_id)
                verdicts.append(Verdict(DEAD, f"could not be read: {type(error).__name__}"))
                continue
            if entry.deliveries > 1:
                redelivered.add(len(events) - 1)
        try:
            outcomes = iter(await self.ingest.ingest_many(events, take_over=redelivered)
                            if events else [])
        except Exception as error:  # nothing decided: every valid entry is tried again later
            outcomes = iter([error] * len(events))
        failures: list[Exception] = []
        for position, verdict in enumerate(verdicts):
            if verdict is not None:
                continue
            outcome = next(outcomes)
            verdicts[position] = _verdict(outcome)
            if verdicts[position].kind == RETRY:
                failures.append(outcome)
        if failures:
            _log_failures(source_name, failures, len(entries))
        return verdicts

    def _event(self, source_name: str, entry: StreamEntry) -> Event:
        if entry.event is None:
            raise ValidationError("event", "the entry has no event field")
        if len(entry.event) > self.max_bytes:
            raise ValidationError("event", f"is larger than {self.max_bytes} bytes "
                                  "(server.max_body_bytes)", code="too_large")
        raw: Any = parse_json(entry.event, "event")  # what POST /api/events accepts
        if isinstance(raw, dict) and raw.get("id") is None:
            raw = {**raw, "id": f"{source_name}/{entry.entry_id}"}
        return self.ingest.parse(raw, _reach(entry.tenant))


def _reach(tenant: str | None) -> Reach:
    """A producer on the stream is a platform service; an entry's `tenant` keeps it to one."""
    if tenant is None:
        return PLATFORM
    if not valid_tenant(tenant):
        raise ValidationError("tenant", TENANT_RULE)
    return Reach(tenant)


def _verdict(outcome: list[str] | Exception) -> Verdict:
    if not isinstance(outcome, Exception):
        return Verdict(STORED)
    if isinstance(outcome, NotifyError) and outcome.status < 500 \
            and not isinstance(outcome, RateLimitedError):
        return Verdict(DEAD, outcome.message)
    return Verdict(RETRY, getattr(outcome, "message", None) or str(outcome)
                   or type(outcome).__name__, transient=isinstance(outcome, TRANSIENT))


def _log_failures(source_name: str, failures: list[Exception], size: int) -> None:
    """One line per batch: a storage outage fails every batch, and says so once each."""
    first = failures[0]
    if isinstance(first, NotifyError):
        log.warning("%s: %d of %d entries left for a later delivery: %s", source_name,
                    len(failures), size, first.message)
    else:
        log.error("%s: %d of %d entries left for a later delivery", source_name, len(failures),
                  size, exc_info=first)
