"""Web push end to end, against a push service stand-in that verifies VAPID and decrypts each
push with the subscription's keys: what a supervisor with a closed tab receives, and when."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager

import pytest
import tornado.netutil

from mojavox_notify.model import Draft, PushSubscription
from mojavox_notify.push import (PushSender, load_vapid_key, new_vapid_pair, push_http_client,
                                 push_payload)
from mojavox_notify.push_addresses import is_public
from mojavox_notify.push_worker import PushWorker
from mojavox_notify.store import build_store, sqlite_path, storage_url
from mojavox_notify.store.nx27017 import Nx27017Child

from .support.engines import both_engines
from .support.pushservice import SilentPushService, subscribed
from .support.sockets import Socket
from .support.tokens import new_user, token

BASE = "/api/notifications"
bounded = pytest.mark.timeout(60)


@bounded
async def test_a_push_reaches_an_offline_user_decrypted_byte_for_byte(start_app, push_service):
    app = await start_app(**push_service.settings, **{"push.icon": "/icons/mojavox-192.png"})
    user = new_user("collector")
    subscription = await subscribed(app, push_service, user)
    created = await app.api.notify(user, type="payment_received", title="Payment Received",
                                   message="John Smith paid $2,450.00 on account #AC-2024-1234",
                                   actionUrl="/payment-history")
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    [delivery] = push_service.delivered_to(subscription)
    assert delivery.payload == push_payload(created, "full", "/icons/mojavox-192.png").encode()
    assert json.loads(delivery.payload) == {
        "title": "Payment Received", "body": "John Smith paid $2,450.00 on account #AC-2024-1234",
        "icon": "/icons/mojavox-192.png", "tag": f"mojavox-{created['id']}",
        "data": {"id": created["id"], "type": "payment_received", "priority": "high",
                 "actionUrl": "/payment-history"}}
    assert (delivery.ttl, delivery.urgency) == (4 * 3600, "high")
    assert push_service.refusals == []
    assert await push_service.wait_for(lambda: app.push_worker.stats["sent"] == 1)


@bounded
async def test_the_minimal_payload_carries_only_id_type_and_priority(start_app, push_service):
    app = await start_app(**push_service.settings, **{"push.payload": "minimal"})
    user = new_user()
    subscription = await subscribed(app, push_service, user)
    created = await app.api.notify(user, message="John Smith paid $2,450.00")
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    payload = json.loads(push_service.delivered_to(subscription)[0].payload)
    assert payload == {"id": created["id"], "type": "payment_received", "priority": "high"}


@bounded
async def test_every_browser_of_the_user_gets_the_push(start_app, push_service):
    app = await start_app(**push_service.settings)
    user = new_user()
    laptop, phone = await subscribed(app, push_service, user), await subscribed(app, push_service, user)
    await app.api.notify(user)
    assert await push_service.wait_for(
        lambda: push_service.delivered_to(laptop) and push_service.delivered_to(phone))


@bounded
async def test_a_gone_endpoint_is_removed_and_not_tried_again(start_app, push_service):
    app = await start_app(**push_service.settings)
    user = new_user()
    subscription = await subscribed(app, push_service, user)
    push_service.answer(subscription, (410, {}))
    await app.api.notify(user)
    assert await push_service.wait_for(lambda: push_service.deliveries)
    for _ in range(50):
        if not await app.store.push_subscriptions_of(user):
            break
        await push_service.wait_for(lambda: False, 0.1)
    assert await app.store.push_subscriptions_of(user) == []
    await app.api.notify(user)
    assert not await push_service.wait_for(lambda: len(push_service.deliveries) > 1, 1.0)


@bounded
async def test_a_429_is_retried_after_its_retry_after(start_app, push_service):
    app = await start_app(**push_service.settings)
    user = new_user()
    subscription = await subscribed(app, push_service, user)
    push_service.answer(subscription, (429, {"Retry-After": "1"}))
    created = await app.api.notify(user)
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription), 15)
    attempts = [d for d in push_service.deliveries if d.browser == subscription["endpoint"].rsplit("/", 1)[1]]
    assert [d.status for d in attempts] == [429, 201]
    assert json.loads(attempts[1].payload)["data"]["id"] == created["id"]
    assert await push_service.wait_for(lambda: app.push_worker.stats["sent"] == 1)
    assert await app.store.push_backlog() == 0


@bounded
async def test_nothing_is_pushed_when_muted_or_online_but_critical_always_is(start_app, push_service):
    app = await start_app(**push_service.settings)
    muted, online = new_user("muted"), new_user("supervisor")
    muted_subscription = await subscribed(app, push_service, muted)
    online_subscription = await subscribed(app, push_service, online)
    await app.api.put(f"{BASE}/settings", token(muted), {"channels": {"payment_received": {"push": False}}})
    tab = await Socket.open(app, token(online))
    await tab.expect("connected")

    await app.api.notify(muted, type="payment_received")
    await app.api.notify(muted, type="call_completed", priority="low")  # push off by default
    await app.api.notify(online, type="payment_received")
    escalation = await app.api.notify(online, type="call_escalation", priority="critical",
                                      actionUrl="/live-monitor?call=c-1")
    assert await push_service.wait_for(lambda: push_service.delivered_to(online_subscription))
    assert not await push_service.wait_for(lambda: len(push_service.deliveries) > 1, 1.0)
    [delivery] = push_service.delivered_to(online_subscription)
    assert json.loads(delivery.payload)["data"] == {
        "id": escalation["id"], "type": "call_escalation", "priority": "critical",
        "actionUrl": "/live-monitor?call=c-1"}
    assert push_service.delivered_to(muted_subscription) == []


@bounded
async def test_a_restart_in_the_middle_of_retrying_still_delivers(start_app, make_settings, push_service):
    settings = make_settings(**push_service.settings)
    first = await start_app(settings=settings)
    user = new_user()
    subscription = await subscribed(first, push_service, user)
    push_service.answer(subscription, (500, {}))
    created = await first.api.notify(user)
    assert await push_service.wait_for(lambda: first.push_worker.stats["retried"] == 1)
    await first.stop()
    assert push_service.delivered_to(subscription) == []
    second = await start_app(settings=settings)
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription), 20)
    assert json.loads(push_service.delivered_to(subscription)[0].payload)["data"]["id"] == created["id"]
    assert await push_service.wait_for(lambda: second.push_worker.stats["sent"] == 1)


@bounded
@pytest.mark.parametrize("endpoint, allowed", [
    ("http://push.example.com/send/1", []),
    ("https://127.0.0.1/send/1", []),
    ("https://localhost/send/1", []),
    ("https://10.1.2.3/send/1", []),
    ("https://169.254.169.254/latest/meta-data", []),
    ("https://[::1]/send/1", []),
    ("https://[64:ff9b::7f00:1]/send/1", []),  # NAT64 of 127.0.0.1
    ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data", []),  # NAT64 of 169.254.169.254
    ("https://[::ffff:10.1.2.3]/send/1", []),
    ("https://[2002:7f00:1::1]/send/1", []),  # 6to4 of 127.0.0.1
    ("https://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/send/1", []),  # Teredo through 10.0.0.1
    ("ftp://push.example.com/send/1", ["push.example.com"]),
])
async def test_a_subscription_endpoint_must_be_https_on_a_public_host(start_app, endpoint, allowed):
    app = await start_app(**{"push.allowed_insecure_hosts": allowed})
    subscription = {"endpoint": endpoint, "keys": {"p256dh": "BKey", "auth": "secret"}}
    status, body = await app.api.post(f"{BASE}/push-subscription", token(new_user()), subscription)
    assert status == 400 and body["error"]["message"].startswith("endpoint:"), body


@bounded
async def test_an_allowed_insecure_host_may_be_local_http(start_app):
    app = await start_app(**{"push.allowed_insecure_hosts": ["127.0.0.1"]})
    subscription = {"endpoint": "http://127.0.0.1:9/send/1", "keys": {"p256dh": "BKey", "auth": "secret"}}
    status, _ = await app.api.post(f"{BASE}/push-subscription", token(new_user()), subscription)
    assert status == 200


def test_a_bad_vapid_key_stops_start_up_with_one_line(tmp_path):
    public, _ = new_vapid_pair()
    _, other_private = new_vapid_pair()
    for private, key in (("not-a-key", "push.vapid_private_key"), (other_private, "push.vapid_public_key")):
        result = subprocess.run([sys.executable, "-m", "mojavox_notify", "check"], cwd=tmp_path,
                                env={"PATH": "/usr/bin:/bin", "VAPID_PUBLIC_KEY": public,
                                     "VAPID_PRIVATE_KEY": private, "JWT_SECRET": "s" * 40},
                                capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], result.stderr


def test_a_payload_is_never_over_3_kb_and_keeps_what_matters_most():
    notification = {"id": "6b0d299f4d1b1364ea0ffc40", "type": "payment_received", "priority": "high",
                    "title": "Payment Received", "message": "é" * 2000, "actionUrl": "/payment-history"}
    shortened = json.loads(push_payload(notification, "full", None))
    assert len(push_payload(notification, "full", None).encode()) <= 3072
    assert shortened["body"].startswith("éé") and shortened["body"].endswith("…")
    assert shortened["data"]["actionUrl"] == "/payment-history"

    worst = {**notification, "title": "🚨" * 255, "message": "\n" * 2000, "actionUrl": "/" + "ü" * 2047}
    text = push_payload(worst, "full", "/icons/" + "i" * 4000)
    payload = json.loads(text)
    assert len(text.encode()) <= 3072
    assert payload["body"] == "" and "actionUrl" not in payload["data"] and "icon" not in payload
    assert payload["title"] == "🚨" * 255
    assert payload["data"] == {"id": notification["id"], "type": "payment_received", "priority": "high"}


def test_a_notification_without_action_url_has_none_in_its_payload():
    notification = {"id": "6b0d299f4d1b1364ea0ffc40", "type": "agent_alert", "priority": "critical",
                    "title": "Agent offline", "message": "Agent 7 stopped", "actionUrl": None}
    assert json.loads(push_payload(notification, "full", None))["data"] == {
        "id": notification["id"], "type": "agent_alert", "priority": "critical"}


# -- limits: one user or one push service cannot hold up everyone else's pushes ------------------

@bounded
@both_engines
async def test_a_user_keeps_only_their_newest_subscriptions(start_app, push_service):
    app = await start_app(**push_service.settings, **{"rate_limits.requests_per_minute": 0})
    user = new_user()
    keys = push_service.subscribe()["keys"]
    endpoints = [f"{push_service.origin}/push/{user}-{number}" for number in range(300)]
    for endpoint in endpoints:
        status, body = await app.api.post(f"{BASE}/push-subscription", token(user),
                                          {"endpoint": endpoint, "keys": keys})
        assert status == 200, body
    kept = [subscription["endpoint"]
            for subscription in await app.store.push_subscriptions_of(user)]
    assert app.settings.push.max_subscriptions_per_user == 20
    assert sorted(kept) == sorted(endpoints[-20:])


@bounded
async def test_a_push_service_that_never_answers_holds_up_no_one_else(start_app, push_service):
    silent = SilentPushService()
    await silent.start()
    try:
        app = await start_app(**push_service.settings)
        stalled = new_user("stalled")
        keys = push_service.subscribe()["keys"]
        for number in range(app.settings.push.max_subscriptions_per_user):
            status, body = await app.api.post(f"{BASE}/push-subscription", token(stalled), {
                "endpoint": f"{silent.origin}/push/{stalled}-{number}", "keys": keys})
            assert status == 200, body
        others = [new_user("other") for _ in range(3)]
        for other in others:
            for number in range(2):
                await app.api.post(f"{BASE}/push-subscription", token(other), {
                    "endpoint": f"{silent.origin}/push/{other}-{number}", "keys": keys})
        for _ in range(3):
            await app.api.notify(stalled)
        for other in others:
            await app.api.notify(other)
        host_share = app.settings.push.concurrency_per_host
        assert await push_service.wait_for(lambda: silent.open >= host_share, 5), "sends are stuck"

        supervisor = new_user("supervisor")
        subscription = await subscribed(app, push_service, supervisor)
        started = time.monotonic()
        await app.api.notify(supervisor, type="call_escalation", priority="critical")
        assert await push_service.wait_for(lambda: push_service.delivered_to(subscription), 5)
        assert time.monotonic() - started < 3, "well within a send's 10 s timeout"
        assert silent.most_open == host_share, "the silent host got its share and no more"
        # No send to it has timed out yet, so every request it received is still open.
        stalled_sends = sum(path.startswith(f"/push/{stalled}-") for path in silent.paths)
        assert stalled_sends <= app.settings.push.concurrency_per_user
    finally:
        await silent.stop()


# -- a push service's Retry-After ---------------------------------------------------------------

@bounded
@pytest.mark.parametrize("retry_after", ["100000000000000000000000",
                                         "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_retry_after_past_the_give_up_time_gives_up_that_browser_only(
        start_app, push_service, retry_after):
    app = await start_app(**push_service.settings)
    user = new_user()
    laptop, phone, tablet = [await subscribed(app, push_service, user) for _ in range(3)]
    push_service.answer(phone, (429, {"Retry-After": retry_after}))
    push_service.answer(tablet, (503, {}))
    await app.api.notify(user)
    assert await push_service.wait_for(lambda: push_service.delivered_to(tablet), 8), \
        "the tablet is tried again after its backoff"
    assert await push_service.wait_for(lambda: app.push_worker.stats["sent"] == 2)
    assert len(push_service.delivered_to(laptop)) == 1, "the laptop got it once"
    assert push_service.arrived_at(phone) == 1, "the phone is not asked again"
    assert app.push_worker.stats["failed"] == 1
    for _ in range(50):
        if await app.store.push_backlog() == 0:
            break
        await asyncio.sleep(0.1)
    assert await app.store.push_backlog() == 0


@asynccontextmanager
async def storage_outage(engine: str, settings, nx: Nx27017Child | None):
    """Storage failing for real while the block runs: the MongoDB engine's nx-27017 killed
    (and started again after), the embedded engine's file locked by another connection."""
    if engine == "mongo":
        os.kill(nx._process.pid, signal.SIGKILL)
        await nx._process.wait()
        try:
            yield
        finally:
            await nx.start(port=nx.port)
        return
    locker = sqlite3.connect(sqlite_path(settings, storage_url(settings)), isolation_level=None,
                             timeout=10)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


@bounded
@both_engines
async def test_a_job_whose_reschedule_fails_is_not_sent_again_to_browsers_that_have_it(
        storage_engine, make_settings, push_service, tmp_path, caplog):
    nx = None
    storage = {"storage.operation_timeout_seconds": 0.5, "storage.busy_timeout_seconds": 0.2}
    if storage_engine == "mongo":
        nx = Nx27017Child(tmp_path / "nx")
        storage.update({"storage.url": await nx.start(),
                        "mongodb.database": f"r{uuid.uuid4().hex[:8]}",
                        "mongodb.server_selection_timeout_seconds": 0.5})
    settings = make_settings(**push_service.settings, **storage)
    store = build_store(settings)
    await store.open()
    sender = PushSender(settings.push, load_vapid_key(settings.push),
                        push_http_client(settings.push))
    worker = PushWorker(store, sender, settings.push, lease_seconds=2.0)
    try:
        user = new_user()
        laptop, phone = push_service.subscribe(), push_service.subscribe()
        for browser in (laptop, phone):
            await store.save_push_subscription(user, PushSubscription(
                browser["endpoint"], browser["keys"]["p256dh"], browser["keys"]["auth"]), keep=20)
        answered = push_service.hold(phone)
        push_service.answer(phone, (500, {}))
        await store.insert_many([Draft(user_id=user, type="payment_received", title="Payment",
                                       message="paid", priority="high")], push=[True])
        worker.start()
        assert await push_service.wait_for(
            lambda: push_service.delivered_to(laptop) and push_service.arrived_at(phone) == 1)
        async with storage_outage(storage_engine, settings, nx):
            answered.set()
            assert await push_service.wait_for(lambda: any(
                record.name == "mojavox_notify.push_worker"
                and "storage unavailable" in record.getMessage() for record in caplog.records),
                10), "the reschedule failed"
        assert await push_service.wait_for(lambda: push_service.delivered_to(phone), 15)
        assert len(push_service.delivered_to(laptop)) == 1, "the laptop is not sent it again"
        assert push_service.arrived_at(phone) == 2
    finally:
        await worker.stop()
        sender.close()
        await store.close()
        if nx is not None:
            await nx.stop()


# -- where a push may go -------------------------------------------------------------------------

class RebindingResolver(tornado.netutil.Resolver):
    """A DNS answer that changes under the server's feet: a public address while the
    subscription is checked, the loopback once `rebind()` is called."""

    def initialize(self) -> None:
        self.address = "93.184.215.14"
        self.asked: list[str] = []

    def rebind(self) -> None:
        self.address = "127.0.0.1"

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        self.asked.append(host)
        return [(socket.AF_INET, (self.address, port))]


@bounded
async def test_an_endpoint_that_resolves_to_a_private_address_at_send_time_is_never_connected_to(
        start_app, push_service):
    silent = SilentPushService()
    await silent.start()
    try:
        resolver = RebindingResolver()
        app = await start_app(resolver=resolver, **push_service.settings)
        user = new_user()
        keys = push_service.subscribe()["keys"]
        endpoint = f"https://push.rebinding.example:{silent.port}/push/{user}"
        status, body = await app.api.post(f"{BASE}/push-subscription", token(user),
                                          {"endpoint": endpoint, "keys": keys})
        assert status == 200, body
        assert resolver.asked == ["push.rebinding.example"], "checked when subscribing"
        resolver.rebind()
        await app.api.notify(user)
        assert await push_service.wait_for(lambda: app.push_worker.stats["failed"] == 1)
        assert len(resolver.asked) == 2, "resolved once more, to connect"
        assert silent.accepted == 0
    finally:
        await silent.stop()


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("100.64.0.1", False), ("169.254.169.254", False),
    ("0.0.0.0", False), ("224.0.0.251", False), ("255.255.255.255", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fd00::1", False), ("ff0e::1", False),
    ("64:ff9b::808:808", True), ("64:ff9b::7f00:1", False), ("64:ff9b::a01:203", False),
    ("64:ff9b::a9fe:a9fe", False), ("64:ff9b:1::808:808", False),
    ("::ffff:8.8.8.8", True), ("::ffff:127.0.0.1", False), ("::ffff:192.168.1.1", False),
    ("::7f00:1", False),
    ("2002:808:808::1", True), ("2002:7f00:1::1", False), ("2002:a9fe:a9fe::1", False),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # Teredo: server 65.54.227.120, client 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # client 192.0.2.45 (documentation)
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", False),  # server 10.0.0.1
])
def test_an_address_is_public_only_when_what_it_reaches_is(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


@bounded
async def test_the_push_worker_survives_an_unforeseen_failure_and_still_delivers(
        start_app, push_service):
    app = await start_app(**push_service.settings)
    user = new_user("supervisor")
    subscription = await subscribed(app, push_service, user)
    real_claim = app.store.claim_pushes
    failed = []

    async def claim_pushes(*args, **kwargs):
        if not failed:
            failed.append(1)
            raise RuntimeError("a bug while claiming (injected)")
        return await real_claim(*args, **kwargs)

    app.store.claim_pushes = claim_pushes
    app.push_worker.wake()
    await push_service.wait_for(lambda: failed)
    await app.api.notify(user, type="call_escalation", title="Escalation", message="Now")
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    assert app.supervisor.restarts["push_worker"] == 1


# -- escalations: the Topic header and the push that replaces the one on screen ------------------

def escalation_policy() -> dict:
    """call_escalation escalates, with a step far enough away that it never fires here."""
    return {"escalations": {"call_escalation": {
        "claim": True, "repeat": 0, "steps": [{"after_seconds": 600, "to": {"users": ["nobody"]}}]}}}


async def escalation_for(app, users: list[str], call_id: str) -> dict[str, dict]:
    """One escalation of key call:<call_id> for `users`: their notifications, by user."""
    service = token("push-test-service", ["service"])
    topic = f"floor-{call_id}"
    status, body = await app.api.put(f"/api/topics/{topic}/members", service, {"add": users})
    assert status == 200, body
    status, body = await app.api.post(BASE, service, {
        "topic": topic, "type": "call_escalation", "title": "Call Escalation Required",
        "message": "agent-7 requests supervisor intervention on call with John Smith",
        "actionUrl": f"/live-monitor?call={call_id}", "escalationKey": f"call:{call_id}"})
    assert status == 202 and body["created"] == len(users), body
    notifications = {}
    for user in users:
        status, page = await app.api.get(f"{BASE}?limit=1", token(user))
        notifications[user] = page["notifications"][0]
    return notifications


def payloads(push_service, subscription) -> list[dict]:
    return [json.loads(d.payload) for d in push_service.delivered_to(subscription)]


@bounded
async def test_an_escalation_is_pushed_with_its_id_as_topic_and_tag_and_the_push_is_in_its_timeline(
        start_app, push_service):
    app = await start_app(**push_service.settings, **escalation_policy())
    supervisor = new_user("supervisor")
    subscription = await subscribed(app, push_service, supervisor)
    notification = (await escalation_for(app, [supervisor], uuid.uuid4().hex[:8]))[supervisor]
    escalation_id = notification["escalation"]["id"]
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    [delivery] = push_service.delivered_to(subscription)
    assert delivery.topic == escalation_id and len(escalation_id) == 24
    assert json.loads(delivery.payload) == {
        "title": "Call Escalation Required",
        "body": "agent-7 requests supervisor intervention on call with John Smith",
        "tag": f"escalation-{escalation_id}",
        "data": {"id": notification["id"], "type": "call_escalation", "priority": "critical",
                 "actionUrl": notification["actionUrl"],
                 "escalation": {"id": escalation_id, "state": "open"}}}
    assert push_service.refusals == []

    async def push_lines() -> list[dict]:
        status, detail = await app.api.get(f"/api/escalations/{escalation_id}", token(supervisor))
        return [line for line in detail["timeline"] if line.get("channel") == "push"]

    for _ in range(50):
        if await push_lines():
            break
        await asyncio.sleep(0.05)
    assert [(line["event"], line["userId"], line["step"]) for line in await push_lines()] == [
        ("notified", supervisor, 0)]


@bounded
async def test_a_payment_push_has_no_topic(start_app, push_service):
    app = await start_app(**push_service.settings)
    user = new_user()
    subscription = await subscribed(app, push_service, user)
    await app.api.notify(user)
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    assert push_service.delivered_to(subscription)[0].topic is None


@bounded
async def test_taking_and_resolving_an_escalation_push_every_recipient_what_replaces_it(
        start_app, push_service):
    app = await start_app(**push_service.settings, **escalation_policy())
    bob, carol, muted = new_user("bob"), new_user("carol"), new_user("muted")
    browsers = {user: await subscribed(app, push_service, user) for user in (bob, carol, muted)}
    await app.api.put(f"{BASE}/settings", token(muted), {"channels": {"call_escalation": {"push": False}}})
    call_id = uuid.uuid4().hex[:8]
    notifications = await escalation_for(app, [bob, carol, muted], call_id)
    escalation_id = notifications[bob]["escalation"]["id"]
    assert await push_service.wait_for(lambda: all(
        push_service.delivered_to(browsers[user]) for user in (bob, carol)))

    status, _ = await app.api.post(f"{BASE}/{notifications[bob]['id']}/ack", token(bob))
    assert status == 200
    assert await push_service.wait_for(lambda: all(
        len(push_service.delivered_to(browsers[user])) == 2 for user in (bob, carol)))
    taken = payloads(push_service, browsers[carol])[1]
    assert taken == {
        "title": f"Taken by {bob}", "body": "Call Escalation Required",
        "tag": f"escalation-{escalation_id}",
        "data": {"id": notifications[carol]["id"], "type": "call_escalation", "priority": "critical",
                 "escalation": {"id": escalation_id, "state": "acknowledged"}}}

    status, _ = await app.api.post("/api/events", token("call-service", ["service"]),
                                   {"type": "call.ended", "data": {"callId": call_id}})
    assert status == 202
    assert await push_service.wait_for(lambda: all(
        len(push_service.delivered_to(browsers[user])) == 3 for user in (bob, carol)))
    for user in (bob, carol):
        resolved = payloads(push_service, browsers[user])[2]
        assert resolved["tag"] == f"escalation-{escalation_id}"
        assert resolved["title"] == "Resolved: call ended", resolved
        assert resolved["data"]["escalation"] == {"id": escalation_id, "state": "resolved"}
        assert "actionUrl" not in resolved["data"]
        assert {d.topic for d in push_service.delivered_to(browsers[user])} == {escalation_id}
    assert push_service.delivered_to(browsers[muted]) == [], "push turned off: none of these either"
    assert not await push_service.wait_for(lambda: len(push_service.deliveries) > 6, 0.5)
    assert push_service.refusals == []
    # The timeline's push lines are the first pushes only, not the ones that say it is over.
    status, detail = await app.api.get(f"/api/escalations/{escalation_id}", token(bob))
    assert sorted(line["userId"] for line in detail["timeline"] if line.get("channel") == "push") == \
        sorted([bob, carol])


def test_a_settled_escalation_payload_is_minimal_too_when_asked():
    notification = {"id": "a" * 24, "type": "call_escalation", "priority": "critical",
                    "title": "Call Escalation Required", "message": "John Smith", "actionUrl": None,
                    "escalation": {"id": "b" * 24, "state": "resolved", "resolution": "call ended",
                                   "acknowledgedBy": None}}
    assert json.loads(push_payload(notification, "minimal", None)) == {
        "id": "a" * 24, "type": "call_escalation", "priority": "critical",
        "escalation": {"id": "b" * 24, "state": "resolved"}}
