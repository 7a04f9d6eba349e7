"""Several instances on one store and one real Redis: fan-out, outages, shared limits, presence,
and `serve --workers N` as a real process."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
import redis.asyncio
import tornado.httpclient

from mojavox_notify.broker import RedisBroker
from mojavox_notify.broker.messages import (AllRead, NotificationCreated, NotificationRead, Resync,
                                            decode, encode)
from mojavox_notify.hub import Hub
from mojavox_notify.presence import RedisPresence
from mojavox_notify.redis_link import MAX_CONNECTIONS, RedisLink
from mojavox_notify.settings import RedisSettings

from .support.engines import both_engines
from .support.pushservice import subscribed
from .support.servers import Deployment, clean_environment
from .support.sockets import Socket
from .support.tokens import new_user, token
from .support.waiting import wait_for

bounded = pytest.mark.timeout(90)
UNLIMITED = {"rate_limits.notifications_per_minute": 0, "rate_limits.requests_per_minute": 0}


class Reader:
    """Reads one socket in the background: the notification ids it received, in order, and
    every other frame."""

    def __init__(self, socket: Socket):
        self.socket = socket
        self.ids: list[str] = []
        self.frames: list[dict] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.socket.receive(timeout=60)
            if frame is None:
                return
            self.frames.append(frame)
            if frame["type"] == "notification":
                self.ids.append(frame["payload"]["id"])

    def saw(self, frame_type: str) -> bool:
        return any(frame["type"] == frame_type for frame in self.frames)

    def stop(self) -> None:
        self.task.cancel()
        self.socket.close()


async def connected_reader(app, user: str) -> Reader:
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    return Reader(socket)


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _call(predicate):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def _call(predicate):
    result = predicate()
    return await result if asyncio.iscoroutine(result) else result


async def stored_ids(app, user: str) -> list[str]:
    """All the user's notifications, oldest first (the order of their sequence numbers)."""
    newest_first: list[str] = []
    while True:
        status, body = await app.api.get(
            f"/api/notifications?limit=100&offset={len(newest_first)}", token(user))
        assert status == 200, body
        newest_first += [n["id"] for n in body["notifications"]]
        if not body["hasMore"]:
            return list(reversed(newest_first))


async def assert_every_socket_got_exactly_its_users_notifications(app, readers: dict) -> None:
    expected = {user: await stored_ids(app, user) for user, _ in readers}
    everything_arrived = await eventually(
        lambda: all(len(reader.ids) >= len(expected[user]) for (user, _), reader in readers.items()), 20)
    await asyncio.sleep(0.3)  # anything doubled or foreign would arrive meanwhile
    for (user, where), reader in readers.items():
        assert reader.ids == expected[user], (
            f"socket of {user} on app {where}: {len(reader.ids)} received, "
            f"{len(expected[user])} stored (all arrived: {everything_arrived})")


# -- the wire format ----------------------------------------------------------------------------

def test_broker_batches_are_positional_and_round_trip():
    created = NotificationCreated(user_id="alice", seq=7, notification={
        "id": "n1", "data": {"big": 2 ** 70}}, unread={"count": 1})
    read = NotificationRead(user_id="bob", unread={"count": 0}, notification_id="n2")
    data = encode("origin1", [created, read])
    assert data.startswith(b"origin1|")
    assert b'"kind"' not in data and b'"user_id"' not in data and b'"alice"' in data
    assert decode(data) == ("origin1", [created, read])
    for malformed in (b'{"not": "ours"}', b'o|{"not": "ours"}', b"o|[2, []]"):
        with pytest.raises(ValueError):
            decode(malformed)


@asynccontextmanager
async def publisher_and_listener(publishing: RedisSettings, listening: RedisSettings):
    """Two started Redis brokers, as two processes' would be: (the publisher, what the other
    one's receiver heard since both were subscribed)."""
    publisher, listener = RedisBroker(RedisLink(publishing)), RedisBroker(RedisLink(listening))
    heard: list = []
    await publisher.start(lambda message: None)
    await listener.start(heard.append)
    heard.clear()  # the start's own resync
    try:
        yield publisher, heard
    finally:
        for broker in (publisher, listener):
            await broker.stop()
            await broker.link.close()


@bounded
async def test_publishes_past_the_connection_pool_reach_the_other_process_in_order(redis_overrides):
    """Many requests publishing at once (more than the pool's connections) are a burst, not
    Redis being away: nothing is marked down, nobody resyncs, the other process receives every
    message once, in the order they were published."""
    settings = RedisSettings(url=redis_overrides["redis.url"],
                             key_prefix=redis_overrides["redis.key_prefix"])
    count = 4 * MAX_CONNECTIONS
    messages = [AllRead(user_id=f"user-{index % 7}", unread={"count": index})
                for index in range(count)]
    async with publisher_and_listener(settings, settings) as (publisher, heard):
        await asyncio.gather(*(publisher.publish(message) for message in messages))
        assert await eventually(lambda: len(heard) >= count, 10)
        await asyncio.sleep(0.2)
        assert heard == messages
        assert publisher.link.available and publisher.healthy


@bounded
async def test_a_reconnect_storm_asks_redis_for_sockets_elsewhere_in_a_few_pipelines(
        redis_overrides):
    """A worker died and its tabs all reconnect to this one at once: each connect asks how many
    sockets its user has elsewhere. Asked together, they take a few round trips and nothing is
    marked down (one pooled connection each ran the pool out, which counted as Redis away)."""
    link = RedisLink(RedisSettings(url=redis_overrides["redis.url"],
                                   key_prefix=redis_overrides["redis.key_prefix"],
                                   timeout_seconds=0.2))
    link.up()
    presence = RedisPresence(Hub(), link, origin="storm")
    real_pipeline = link.client.pipeline
    pipelines = []

    def counted(*args, **kwargs):
        pipelines.append(1)
        return real_pipeline(*args, **kwargs)

    link.client.pipeline = counted
    try:
        answers = await asyncio.gather(*(presence.elsewhere(f"user-{index}")
                                         for index in range(20 * MAX_CONNECTIONS)))
    finally:
        await link.close()
    assert answers == [0] * (20 * MAX_CONNECTIONS)
    assert len(pipelines) <= 5 and link.available


@bounded
async def test_a_publish_redis_refuses_is_announced_to_the_others_as_a_resync(redis_overrides):
    """Only this process's publish fails (here Redis refuses its user PUBLISH for a while), the
    others' subscriptions stay up: when it publishes again, they hear which users to resync."""
    url, prefix = redis_overrides["redis.url"], redis_overrides["redis.key_prefix"]
    admin = redis.asyncio.Redis.from_url(url)
    user = f"publisher-{prefix}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all")
    as_user = RedisSettings(url=url.replace("redis://", f"redis://{user}:secret@"), key_prefix=prefix)
    try:
        async with publisher_and_listener(as_user, RedisSettings(url=url, key_prefix=prefix)) \
                as (publisher, heard):
            await admin.execute_command("ACL", "SETUSER", user, "-publish")
            await publisher.publish(AllRead(user_id="alice", unread={"count": 0}))
            assert not publisher.healthy
            await asyncio.sleep(0.3)  # it retries meanwhile, refused again
            await admin.execute_command("ACL", "SETUSER", user, "+publish")
            assert await eventually(lambda: any(
                isinstance(message, Resync) and "alice" in (message.users or ["alice"])
                for message in heard), 10), heard
            assert publisher.healthy
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


# -- two instances on one store and one Redis ---------------------------------------------------

@both_engines
@bounded
async def test_two_apps_deliver_each_users_notifications_to_sockets_on_both_once_and_in_order(
        start_app, redis_overrides):
    first = await start_app(**redis_overrides, **UNLIMITED)
    second = await start_app(**redis_overrides, **UNLIMITED)
    assert first.broker.name == second.broker.name == "redis"
    users = [new_user() for _ in range(4)]
    readers = {}
    for user in users:
        for where, app in (("first", first), ("second", second)):
            readers[(user, where)] = await connected_reader(app, user)

    async def create(app, user: str, count: int) -> None:
        for index in range(count):
            await app.api.notify(user, message=f"{app.port} #{index}")

    await asyncio.gather(*(create(app, user, 12) for app in (first, second) for user in users))
    await assert_every_socket_got_exactly_its_users_notifications(first, readers)
    assert all(len(reader.ids) == 24 for reader in readers.values())
    for reader in readers.values():
        reader.stop()


@bounded
async def test_a_read_on_one_instance_reaches_the_users_socket_on_the_other(start_app, redis_overrides):
    first = await start_app(**redis_overrides)
    second = await start_app(**redis_overrides)
    user = new_user()
    tab = await Socket.open(second, token(user))
    await tab.expect("connected")
    created = await first.api.notify(user)
    assert (await tab.expect("notification"))["payload"]["id"] == created["id"]
    status, _ = await first.api.post(f"/api/notifications/{created['id']}/read", token(user))
    assert status == 200
    assert (await tab.expect("notification_read"))["notificationId"] == created["id"]
    assert (await tab.expect("unread_count"))["count"] == 0


@both_engines
@bounded
async def test_redis_killed_and_restarted_mid_stream_loses_nothing(start_app, own_redis):
    settings = {"redis.url": own_redis.url, "redis.reconnect_max_seconds": 0.5, **UNLIMITED}
    first = await start_app(**settings)
    second = await start_app(**settings)
    users = [new_user() for _ in range(3)]
    readers = {}
    for user in users:
        for where, app in (("first", first), ("second", second)):
            readers[(user, where)] = await connected_reader(app, user)
    producing = True
    failures = []

    async def produce(app) -> None:
        index = 0
        while producing:
            for user in users:
                status, body = await app.api.post(
                    "/api/notifications", token("svc", ["service"]),
                    {"userId": user, "type": "agent_alert", "title": "t", "message": f"#{index}"})
                if status != 201:
                    failures.append((status, body))
            index += 1
            await asyncio.sleep(0.01)

    producers = [asyncio.ensure_future(produce(app)) for app in (first, second)]
    await asyncio.sleep(0.5)
    own_redis.kill()
    assert await eventually(lambda: not first.broker.healthy and not second.broker.healthy, 5)
    await asyncio.sleep(1.0)  # creations go on while Redis is away
    status, health = await first.api.get("/healthz")
    assert status == 200 and health["status"] == "degraded", health
    assert health["broker"]["ok"] is False and health["broker"]["backend"] == "redis"
    # Nothing is created after Redis returns, so no later notification's gap filling can
    # hide a miss: only the resync brings what was created during the outage.
    producing = False
    await asyncio.gather(*producers)
    own_redis.start()
    assert await eventually(lambda: first.broker.healthy and second.broker.healthy, 10)

    assert failures == []
    await assert_every_socket_got_exactly_its_users_notifications(first, readers)
    assert all(reader.saw("resynced") for reader in readers.values())
    for reader in readers.values():
        reader.stop()


@bounded
async def test_a_broadcast_reaches_every_socket_on_every_instance_once(start_app, redis_overrides):
    first = await start_app(**redis_overrides)
    second = await start_app(**redis_overrides)
    readers = [await connected_reader(app, new_user()) for app in (first, second, second)]
    status, sent = await first.api.post("/api/broadcasts", token("svc", ["service"]),
                                        {"title": "Maintenance", "message": "22:00 UTC"})
    assert status == 201, sent
    assert await eventually(lambda: all(reader.saw("broadcast") for reader in readers), 5)
    await asyncio.sleep(0.3)
    for reader in readers:
        assert [frame["payload"] for frame in reader.frames if frame["type"] == "broadcast"] == [sent]
        reader.stop()


@bounded
async def test_a_broadcast_made_while_redis_is_away_reaches_the_other_instance_when_it_returns(
        start_app, own_redis):
    settings = {"redis.url": own_redis.url, "redis.reconnect_max_seconds": 0.5}
    first = await start_app(**settings)
    second = await start_app(**settings)
    here, there = (await connected_reader(first, new_user()),
                   await connected_reader(second, new_user()))
    own_redis.kill()
    assert await eventually(lambda: not first.broker.healthy, 5)
    status, sent = await first.api.post("/api/broadcasts", token("svc", ["service"]),
                                        {"title": "Dialer down", "message": "Calls paused"})
    assert status == 201, sent
    assert await eventually(lambda: here.saw("broadcast"), 5)  # this instance's own sockets
    assert not there.saw("broadcast")
    own_redis.start()
    assert await eventually(lambda: there.saw("broadcast"), 10)
    await asyncio.sleep(0.3)
    for reader in (here, there):
        assert [frame["payload"] for frame in reader.frames if frame["type"] == "broadcast"] == [sent]
        reader.stop()


# -- shared rate limits and presence ---------------------------------------------------------------

@bounded
async def test_request_rate_limit_is_counted_across_instances(start_app, redis_overrides):
    first = await start_app(**redis_overrides, **{"rate_limits.requests_per_minute": 4})
    second = await start_app(**redis_overrides, **{"rate_limits.requests_per_minute": 4})
    user = new_user()
    for app in (first, second, first, second):
        status, body = await app.api.get("/api/notifications/unread-count", token(user))
        assert status == 200, body
    for app in (first, second):
        status, body = await app.api.get("/api/notifications/unread-count", token(user))
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert user in body["error"]["message"]


@bounded
async def test_notification_rate_limit_is_counted_across_instances(start_app, redis_overrides):
    first = await start_app(**redis_overrides, **{"rate_limits.notifications_per_minute": 3})
    second = await start_app(**redis_overrides, **{"rate_limits.notifications_per_minute": 3})
    user = new_user()
    for app in (first, second, first):
        await app.api.notify(user)
    status, body = await second.api.post(
        "/api/notifications", token("svc", ["service"]),
        {"userId": user, "type": "payment_received", "title": "t", "message": "m"})
    assert status == 429, body


@bounded
async def test_presence_counts_sockets_on_every_instance(start_app, redis_overrides):
    first = await start_app(**redis_overrides)
    second = await start_app(**redis_overrides)
    user = new_user()
    assert await first.presence.online_many({user}) == set()
    remote = await Socket.open(second, token(user))
    await remote.expect("connected")
    assert await eventually(lambda: first.presence.count(user), 3)
    assert await first.presence.online_many({user, "nobody"}) == {user}
    local = await Socket.open(first, token(user))
    await local.expect("connected")
    assert await eventually(lambda: _equals(first.presence.count(user), 2), 3)
    remote.close()
    assert await eventually(lambda: _equals(first.presence.count(user), 1), 3)
    local.close()
    assert await eventually(lambda: _equals(second.presence.count(user), 0), 3)


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


@bounded
async def test_no_push_while_the_user_has_a_socket_on_another_instance(start_app, redis_overrides,
                                                                       push_service):
    first = await start_app(**redis_overrides, **push_service.settings)
    second = await start_app(**redis_overrides, **push_service.settings)
    user = new_user()
    subscription = await subscribed(first, push_service, user)
    tab = await Socket.open(second, token(user))
    await tab.expect("connected")
    assert await eventually(lambda: first.presence.online_many({user}), 3)
    await first.api.notify(user, type="payment_received")
    assert not await push_service.wait_for(lambda: push_service.delivered_to(subscription), 1.0)
    tab.close()
    assert await eventually(lambda: _equals(first.presence.online_many({user}), set()), 3)
    created = await first.api.notify(user, type="payment_received")
    assert await push_service.wait_for(lambda: push_service.delivered_to(subscription))
    [delivery] = push_service.delivered_to(subscription)
    assert json.loads(delivery.payload)["data"]["id"] == created["id"]


# -- health and check ------------------------------------------------------------------------------

@bounded
async def test_healthz_names_the_redis_broker(start_app, redis_overrides):
    app = await start_app(**redis_overrides)
    status, health = await app.api.get("/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["broker"] == {"ok": True, "backend": "redis", "url": redis_overrides["redis.url"]}


def test_check_names_redis_and_fails_with_one_line_when_it_does_not_answer(tmp_path, redis_server,
                                                                             own_redis):
    deployment = Deployment(tmp_path, f"redis:\n  url: {redis_server.url}\n")
    result = deployment.run("check", "--settings", "settings.yaml")
    assert result.returncode == 0, result.stderr
    assert f"broker: ok (redis {redis_server.url}, PING" in result.stdout

    own_redis.kill()
    (tmp_path / "down").mkdir()
    deployment = Deployment(tmp_path / "down", f"redis:\n  url: {own_redis.url}\n"
                                                "  timeout_seconds: 0.5\n")
    result = deployment.run("check", "--settings", "settings.yaml")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert f"redis {own_redis.url} does not answer" in lines[-1] and "redis.url" in lines[-1]


def test_several_workers_without_redis_refuse_to_start_with_one_line(deployment):
    result = deployment.run("serve", "--settings", "settings.yaml", "--workers", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.workers" in lines[0] and "redis.url" in lines[0], result.stderr


@pytest.fixture
def deployment(tmp_path):
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.stop_all()


# -- serve --workers 2, a real process ----------------------------------------------------------------

@pytest.mark.timeout(120)
async def test_serve_with_two_workers_serves_sockets_on_both(tmp_path, redis_overrides):
    deployment = Deployment(tmp_path, f"redis:\n  url: {redis_overrides['redis.url']}\n"
                                      f"  key_prefix: {redis_overrides['redis.key_prefix']}\n")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", "settings.yaml",
             "--workers", "2"], cwd=tmp_path, env=clean_environment(), stdout=log,
            stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: process.poll() is not None or "2 workers serving" in log_path.read_text(),
                        30), log_path.read_text()
        assert process.poll() is None, log_path.read_text()
        server = SimpleNamespace(port=deployment.port, settings=SimpleNamespace(
            server=SimpleNamespace(ws_path="/ws/notifications")))
        secret = (deployment.data_dir / "jwt-secret").read_text().strip()
        users = [new_user() for _ in range(12)]
        sockets = {}
        for user in users:
            sockets[user] = await Socket.open(server, token(user, secret=secret))
            await sockets[user].expect("connected")

        workers = await _workers_seen(deployment.url)
        assert len(workers) == 2, workers
        assert all(connections > 0 for connections in workers.values()), workers
        assert sum(workers.values()) == len(users)

        client = tornado.httpclient.AsyncHTTPClient()
        service = token("svc", ["service"], secret=secret)
        created = {}
        for user in users:
            response = await client.fetch(
                f"{deployment.url}/api/notifications", method="POST",
                headers={"Authorization": f"Bearer {service}", "Content-Type": "application/json"},
                body=json.dumps({"userId": user, "type": "payment_received", "title": "t",
                                 "message": "m"}))
            created[user] = json.loads(response.body)["id"]
        for user in users:
            frame = await sockets[user].expect("notification")
            assert frame["payload"]["id"] == created[user]
        for user in users:
            assert [f for f in await sockets[user].quiet(0.05) if f["type"] == "notification"] == []

        # A worker that dies is replaced; the other one keeps serving meanwhile.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        replaced = await _workers_seen(deployment.url, until=lambda seen: len(seen) == 2
                                       and victim not in seen)
        assert victim not in replaced and len(replaced) == 2, replaced

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _workers_seen(base_url: str, until=None, timeout: float = 15) -> dict[int, int]:
    """Ask /healthz over fresh connections until both workers answered: pid → its sockets."""
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                response = await client.fetch(f"{base_url}/healthz", headers={"Connection": "close"})
            except (OSError, tornado.httpclient.HTTPClientError):
                await asyncio.sleep(0.1)
                continue
            health = json.loads(response.body)
            seen[health["worker"]["pid"]] = health["connections"]
            if (until or (lambda s: len(s) == 2))(seen):
                return seen
            if until is not None and len(seen) > 2:
                seen = {health["worker"]["pid"]: health["connections"]}
    finally:
        client.close()
    return seen


@bounded
async def test_the_per_user_socket_cap_counts_sockets_on_every_instance(start_app, redis_overrides):
    cap = {"websocket.max_sockets_per_user": 2}
    first = await start_app(**redis_overrides, **cap)
    second = await start_app(**redis_overrides, **cap)
    user = new_user()
    on_first = await Socket.open(first, token(user))
    await on_first.expect("connected")
    on_second = await Socket.open(second, token(user))
    await on_second.expect("connected")
    assert await eventually(lambda: _equals(first.presence.count(user), 2), 3)
    refused = await Socket.open(first, token(user))
    assert await refused.closed() == 4009
    on_second.close()
    assert await eventually(lambda: _equals(first.presence.count(user), 1), 3)
    again = await Socket.open(first, token(user))
    await again.expect("connected")


@bounded
async def test_writes_wait_for_their_turn_among_processes_and_give_up_after_the_busy_timeout(start_app):
    app = await start_app(**{"storage.busy_timeout_seconds": 0.3, "storage.probe_interval_seconds": 0.2})
    user = new_user()
    holder = os.open(f"{app.store.path}-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's turn, which does not end
    try:
        status, body = await app.api.post(
            "/api/notifications", token("svc", ["service"]),
            {"userId": user, "type": "payment_received", "title": "t", "message": "m"})
        assert status == 503 and body["error"]["code"] == "storage_unavailable", body
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    assert await eventually(lambda: app.storage_health.ok, 5)
    created = await app.api.notify(user)
    assert (await stored_ids(app, user)) == [created["id"]]
