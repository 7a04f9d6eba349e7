"""/metrics: who may read it, and that its figures follow what happens."""

from __future__ import annotations

import pytest
import tornado.httpclient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mojavox_notify.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

from .support.api import post_event
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(30)
ADMIN = token("ops", ["admin"])


async def scrape(url: str, bearer: str | None = ADMIN) -> dict[tuple, float]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    response = await tornado.httpclient.AsyncHTTPClient().fetch(url, headers=headers)
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.body.decode())
            for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@bounded
async def test_metrics_need_the_admin_role_on_the_server_port(start_app):
    app = await start_app()
    assert (await app.api.get("/metrics"))[0] == 401
    assert (await app.api.get("/metrics", token(new_user())))[0] == 403
    samples = await scrape(f"{app.api.base_url}/metrics")
    assert ("mojavox_sockets_open", ()) in samples


@bounded
async def test_the_figures_follow_what_happens(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 1})
    url = f"{app.api.base_url}/metrics"
    before = await scrape(url)
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    await app.api.notify(user, type="payment_received", priority="high")
    await socket.expect("notification")
    status, _ = await app.api.post("/api/notifications", token("svc", ["service"]), {
        "userId": user, "type": "payment_received", "title": "t", "message": "m"})
    assert status == 429
    await post_event(app, "payment.received", {"userId": new_user(), "amount": 1, "accountId": "A",
                                                "debtorName": "D"}, event_id=f"e-{user}")
    await post_event(app, "payment.received", {"userId": new_user(), "amount": 1, "accountId": "A",
                                                "debtorName": "D"}, event_id=f"e-{user}")
    await post_event(app, "no.such.event", {})
    after = await scrape(url)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) == by

    assert value(after, "mojavox_sockets_open") == 1 and value(after, "mojavox_users_online") == 1
    assert grew("mojavox_notifications_created_total", 2, type="payment_received", priority="high")
    assert grew("mojavox_create_to_publish_seconds_count", 2)
    assert value(after, "mojavox_frames_sent_total") >= 3  # connected, notification, unread_count
    assert grew("mojavox_broker_published_total", 2) and grew("mojavox_broker_received_total", 2)
    assert grew("mojavox_broker_lag_seconds_count", 2)
    assert grew("mojavox_rate_limited_total", 1, limit="notifications")
    assert grew("mojavox_events_total", 1, type="payment.received", outcome="created")
    assert grew("mojavox_events_total", 1, type="payment.received", outcome="repeat")
    assert grew("mojavox_events_total", 1, type="unknown", outcome="refused")
    assert value(after, "mojavox_storage_operation_seconds_count", operation="insert_many") >= 2
    assert value(after, "mojavox_storage_up") == 1
    socket.close()


@bounded
async def test_slow_consumer_and_refused_sockets_are_counted_by_reason(start_app):
    app = await start_app(**{"websocket.max_sockets_per_user": 1})
    user = new_user()
    first = await Socket.open(app, token(user))
    await first.expect("connected")
    second = await Socket.open(app, token(user))
    assert await second.closed() == 4009
    samples = await scrape(f"{app.api.base_url}/metrics")
    assert value(samples, "mojavox_socket_closes_total", reason="too_many_sockets") == 1


@bounded
async def test_metrics_can_be_served_open_on_a_separate_port_only(start_app):
    app = await start_app(**{"metrics.access": "port", "metrics.port": 0})
    assert (await app.api.get("/metrics", ADMIN))[0] == 404
    samples = await scrape(f"http://127.0.0.1:{app.metrics_port}/metrics", bearer=None)
    assert ("mojavox_sockets_open", ()) in samples


@bounded
async def test_metrics_can_be_turned_off(start_app):
    app = await start_app(**{"metrics.access": "off"})
    assert (await app.api.get("/metrics", ADMIN))[0] == 404


def test_loop_figures_expose_as_prometheus_clients_own_would():
    """The lock-free counter and histogram of the per-frame figures read as prometheus_client's."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter, histogram = LoopCounter("c", "d", ours), LoopHistogram("h_seconds", "d", LATENCY_BUCKETS, ours)
    their_counter = Counter("c", "d", registry=theirs)
    their_histogram = Histogram("h_seconds", "d", buckets=LATENCY_BUCKETS, registry=theirs)
    for amount in (1, 1, 5):
        counter.inc(amount)
        their_counter.inc(amount)
    for seconds in (0.0, 0.0001, 0.00011, 0.003, 0.7, 5.0, 9.5):  # on, between and past bounds
        histogram.observe(seconds)
        their_histogram.observe(seconds)

    def samples(registry):
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(generate_latest(registry).decode())
                for sample in family.samples if not sample.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert samples(ours)[("h_seconds_bucket", (("le", "0.0001"),))] == 2
