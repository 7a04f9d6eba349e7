"""What `/metrics` shows, in Prometheus' format.

Events are counted where they happen (a notification created, a frame sent, a socket closed, an
event ingested, a storage operation timed); state (sockets open, users online, push results,
rate-limit refusals, storage health) is read from its owners when scraped, so nothing is counted
twice. Each app has its own registry: two apps in one process (the tests) never mix figures.
"""

from __future__ import annotations

import bisect
import itertools
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                   Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Seconds from an escalation's creation to its first acknowledgement: a floor counts in seconds.
ACKNOWLEDGEMENT_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)
# Seconds: from a tenth of a millisecond (an in-process hop) to five seconds (a slow storage).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, tenant_label: bool = False) -> None:
        """`tenant_label` (metrics.tenant_label): notifications created are counted by tenant
        too, one series per tenant and type and priority: for deployments with few tenants."""
        self.registry = CollectorRegistry()
        registry = self.registry
        self.tenant_label = tenant_label
        self.notifications_created = Counter(
            "mojavox_notifications_created", "Notifications stored, by type and priority"
            + (" and tenant" if tenant_label else ""),
            ["type", "priority", *(["tenant"] if tenant_label else [])], registry=registry)
        self.broadcasts_created = Counter(
            "mojavox_broadcasts_created", "Broadcasts stored and published", registry=registry)
        self.broadcast_fan_out = Histogram(
            "mojavox_broadcast_fan_out_seconds",
            "From a broadcast's arrival at this process to its frame handed to every socket's "
            "connection", buckets=LATENCY_BUCKETS, registry=registry)
        self.create_to_publish = Histogram(
            "mojavox_create_to_publish_seconds",
            "From the start of a creation to its publication to the broker (storage included)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.storage_operation = Histogram(
            "mojavox_storage_operation_seconds", "Storage operations, by operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=registry)
        self.broker_published = Counter(
            "mojavox_broker_published", "Messages published to the broker", registry=registry)
        self.broker_received = LoopCounter(
            "mojavox_broker_received", "Messages this process received from the broker",
            registry=registry)
        self.broker_lag = LoopHistogram(
            "mojavox_broker_lag_seconds", "From publication to reception by this process",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.frames_sent = LoopCounter(
            "mojavox_frames_sent", "Frames written to dashboard sockets", registry=registry)
        self.socket_closes = Counter(
            "mojavox_socket_closes", "Sockets the server closed, by reason", ["reason"],
            registry=registry)
        self.events = Counter(
            "mojavox_events", "Domain events posted, by type and outcome "
            "(created, repeat, none_created, refused, failed)", ["type", "outcome"],
            registry=registry)
        self.escalation_acknowledgement = Histogram(
            "mojavox_escalation_acknowledgement_seconds",
            "From an escalation's creation to its first acknowledgement, by type and by the "
            "step it had reached (0: the first recipients took it)", ["type", "step"],
            buckets=ACKNOWLEDGEMENT_BUCKETS, registry=registry)
        self.escalations = Counter(
            "mojavox_escalations", "Escalations by type and outcome (opened, escalated, "
            "acknowledged, unanswered, resolved)", ["type", "outcome"], registry=registry)
        self.escalation_lateness = Histogram(
            "mojavox_escalation_step_lateness_seconds",
            "From a step's due time to its firing", buckets=LATENCY_BUCKETS, registry=registry)

    def observe_storage(self, operation: str, seconds: float) -> None:
        self.storage_operation.labels(operation).observe(seconds)

    def received(self, message) -> None:
        """A broker message reached this process: count it, and its lag when it carries the
        time it was published (`at`, epoch seconds)."""
        self.broker_received.inc()
        published_at = getattr(message, "at", None)
        if isinstance(published_at, (int, float)):
            self.broker_lag.observe(max(0.0, time.time() - published_at))

    def read_state(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add figures read from their owners at each scrape."""
        self.registry.register(_StateCollector(collect))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoopCounter(Collector):
    """A counter added to on the event loop's thread only, per message or frame: a plain int,
    read when scraped. prometheus_client's Counter takes a lock on every `inc` (about 1 µs):
    with the broker figures, a tenth of a 1,000-user alert's fan-out."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self._name = name
        self._documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)


class LoopHistogram(Collector):
    """A histogram observed on the event loop's thread only (as LoopCounter): one count per
    bucket, made cumulative when scraped."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry):
        self._name = name
        self._documentation = documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        bounds = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]
        yield HistogramMetricFamily(self._name, self._documentation, sum_value=self._sum,
                                    buckets=list(zip(bounds, itertools.accumulate(self._counts))))


class _StateCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
