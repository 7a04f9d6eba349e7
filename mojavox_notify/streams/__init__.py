"""Stream ingest: durable streams the server consumes events from, one module per kind of
stream behind one interface (`source.StreamSource`), sharing one intake (`intake.py`).

`KINDS` maps a kind to its entry points: the names of its configured sources, building them,
and adding one event to one of them (`emit --stream`). A new kind is one module and one line
here; a plugin adds a source of its own through the `mojavox_event_sources` hook instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..settings import Settings, SettingsError
from . import nats, redis_streams
from .intake import StreamIntake
from .source import StreamEntry, StreamSource, StreamUnavailableError, Verdict, consumer_name

__all__ = ["KINDS", "StreamEntry", "StreamIntake", "StreamKind", "StreamSource",
           "StreamUnavailableError", "Verdict", "build_sources", "consumer_name", "publish",
           "source_metrics"]


@dataclass(frozen=True)
class StreamKind:
    #: The configured sources' names (`<kind>:<stream>`), from the settings alone.
    names: Callable[[Settings], list[str]]
    #: The configured sources, each consuming as `consumer` (this process's name).
    build: Callable[[Settings, StreamIntake, str], list[StreamSource]]
    #: Add one `POST /api/events` body to the named source's stream; the entry's id.
    publish: Callable[[Settings, str, dict[str, Any]], Awaitable[str]]


KINDS: dict[str, StreamKind] = {
    redis_streams.KIND: StreamKind(redis_streams.names, redis_streams.build, redis_streams.publish),
    nats.KIND: StreamKind(nats.names, nats.build, nats.publish),
}


def build_sources(settings: Settings, intake: StreamIntake, consumer: str) -> list[StreamSource]:
    """Every configured source of every kind (none when `ingest` configures none)."""
    return [source for kind in KINDS.values() for source in kind.build(settings, intake, consumer)]


async def publish(settings: Settings, name: str, event: dict[str, Any]) -> str:
    """`emit --stream NAME`: the event added to the configured source `name`; the entry's id."""
    for kind in KINDS.values():
        if name in kind.names(settings):
            return await kind.publish(settings, name, event)
    configured = [known for kind in KINDS.values() for known in kind.names(settings)]
    raise SettingsError("--stream", f"{name} is not a configured stream; configured: "
                        f"{', '.join(configured) or 'none (settings: ingest)'}")


def source_metrics(sources: Iterable[StreamSource]) -> Iterable[Metric]:
    """Per source (a bounded label: the configured ones): entries processed, failed (left for
    a later delivery) and dead-lettered, the pending count, the lag and the oldest
    unacknowledged entry's age (those three when known)."""
    sources = list(sources)
    if not sources:
        return
    counters = {"processed": "Stream entries whose notifications were stored, by source",
                "failed": "Stream entries left unacknowledged for a later delivery, by source",
                "dead_lettered": "Stream entries sent to the dead letter, by source"}
    for figure, documentation in counters.items():
        family = CounterMetricFamily(f"mojavox_stream_entries_{figure}", documentation,
                                     labels=["source"])
        for source in sources:
            family.add_metric([source.name], getattr(source.stats, figure))
        yield family
    gauges = {"pending": ("mojavox_stream_pending", "Entries delivered and not acknowledged yet"),
              "lag": ("mojavox_stream_lag", "Entries in the stream not delivered yet"),
              "oldest_unacknowledged_seconds": (
                  "mojavox_stream_oldest_unacknowledged_seconds",
                  "Age of the oldest entry not acknowledged yet (pending or undelivered)")}
    for figure, (metric, documentation) in gauges.items():
        family = GaugeMetricFamily(metric, documentation + ", by source", labels=["source"])
        for source in sources:
            value = getattr(source.stats, figure)
            if value is not None:
                family.add_metric([source.name], value)
        yield family
