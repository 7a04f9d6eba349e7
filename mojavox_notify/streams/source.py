"""What every stream source is, whatever the stream (Centrifugo's `internal/consuming/`): entries
in, one verdict per entry out, and the figures operations read.

A source reads entries from its stream, hands them to `StreamIntake.handle` in batches and
settles each by its verdict: `stored` is acknowledged, `dead` goes to the source's dead letter
and is acknowledged, `retry` is left unacknowledged so the stream delivers it again later
(the same guarantees for every kind: docs/streams.md).
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

STORED = "stored"
DEAD = "dead"
RETRY = "retry"


def consumer_name(worker: int | None = None) -> str:
    """This process's name as a stream's consumer: host and pid, and the worker index under
    `serve --workers` (`XINFO CONSUMERS` then tells every process apart)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return name if worker is None else f"{name}:worker-{worker}"


class StreamUnavailableError(RuntimeError):
    """The stream's server did not answer (`emit --stream`); the message names it."""


@dataclass(frozen=True)
class StreamEntry:
    """One entry as its source read it: `entry_id` is the source's own id of it (a Redis entry
    id, a JetStream sequence), `event` the raw `POST /api/events` body (None when the entry has
    none), `tenant` the entry's optional tenant, `deliveries` how often the stream has handed
    it out so far (1 the first time)."""

    entry_id: str
    event: bytes | str | None
    tenant: str | None
    deliveries: int


@dataclass
class Verdict:
    """What became of one entry: `stored` (its notifications are stored: acknowledge it), `dead`
    (it can never be handled: dead-letter it with `error`), `retry` (nothing happened for good:
    leave it for a later delivery). A `transient` retry failed for a cause outside the entry
    (storage away, a rate limit, its event id held by another consumer): it is waited out
    however long it lasts, and does not count towards giving the entry up (`max_deliveries`);
    any other retry does."""

    kind: Literal["stored", "dead", "retry"]
    error: str | None = None
    transient: bool = False


@dataclass
class SourceStats:
    """A source's figures for /metrics (read when scraped): counters since start, and the
    backlog as the source last saw it (None while unknown)."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    #: Entries delivered to a consumer and not acknowledged yet.
    pending: int | None = None
    #: Entries in the stream not yet delivered to any consumer.
    lag: int | None = None
    #: Age in seconds of the oldest entry not acknowledged yet (pending or undelivered).
    oldest_unacknowledged_seconds: float | None = None


class StreamSource(ABC):
    """One consumer of one stream, for as long as the server runs. A source counts what it
    settles in `stats` and keeps its backlog figures there (read by /metrics)."""

    #: `<kind>:<stream>`, as /healthz, `check`, /metrics and `emit --stream` name it.
    name: str
    stats: SourceStats

    @abstractmethod
    async def run(self) -> None:
        """Consume until cancelled; an outage of the stream's server is waited out (reconnect
        with backoff), never raised."""

    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """`{name, ok, …}` for /healthz and `check`: while `run` runs, from its last contact
        with the stream (no I/O); otherwise asked of the stream's server right now."""
