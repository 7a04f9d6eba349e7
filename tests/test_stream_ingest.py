"""Events from a Redis stream (issue 26), in process: a real redis-server, both storage engines.

Each test has a stream of its own (a fresh name on the shared redis-server) and an app that
consumes it; entries are added with XADD as a producer would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import uuid

import pytest
import redis.asyncio as aioredis

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.store.nx27017 import Nx27017Child
from mojavox_notify.store.sqlite import insertion as sqlite_engine
from mojavox_notify.streams import StreamEntry, StreamIntake

from .support.api import notifications_of
from .support.redis import RedisServer
from .support.servers import Deployment
from .support.engines import both_engines
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(60)
# Quick takeovers and retries, so a test waits seconds, not the production half-minute.
QUICK = {"claim_idle_seconds": 0.5, "block_ms": 100, "batch": 50}


def payment(user: str, event_id: str | None = None, amount: int = 2450) -> dict:
    event = {"type": "payment.received",
             "data": {"userId": user, "amount": amount, "accountId": "AC-2024-1234",
                      "debtorName": "John Smith"}}
    if event_id is not None:
        event["id"] = event_id
    return event


@pytest.fixture
def stream_name() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:events"


@pytest.fixture
async def producer(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def start_consumer(start_app, redis_overrides, stream_name):
    """`await start_consumer(**stream_options)` → an app consuming `stream_name`."""

    async def start(settings_overrides: dict | None = None, **options):
        stream = {"stream": stream_name, **QUICK, **options}
        return await start_app(**redis_overrides, **{
            "rate_limits.notifications_per_minute": 0, "ingest.redis_streams": [stream],
            **(settings_overrides or {})})

    return start


async def add(producer, stream: str, event: dict | str, **fields) -> str:
    body = event if isinstance(event, str) else json.dumps(event)
    return (await producer.xadd(stream, {"event": body, **fields})).decode()


async def eventually(condition, timeout: float = 15.0, interval: float = 0.05):
    """`await condition()` until it is truthy (its value), an AssertionError after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not met within {timeout:g} s (last: {value!r})")
        await asyncio.sleep(interval)


async def settled(producer, stream: str, group: str = "mojavox-notify") -> bool:
    """Whether the group has read every entry and acknowledged all it read."""
    groups = {g["name"].decode(): g for g in await producer.xinfo_groups(stream)}
    return group in groups and groups[group]["lag"] == 0 and groups[group]["pending"] == 0


def dead_letters(entries: list) -> list[dict]:
    return [{key.decode(): value.decode() for key, value in fields.items()} for _, fields in entries]


@bounded
@both_engines
async def test_an_entry_becomes_its_notifications_on_the_socket_and_is_acknowledged_after(
        start_consumer, producer, stream_name):
    app = await start_consumer()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    await add(producer, stream_name, payment(user, new_user("pay")))
    frame = await socket.expect("notification", timeout=10)
    assert frame["payload"]["message"] == "John Smith paid $2,450.00 on account #AC-2024-1234"
    await eventually(lambda: settled(producer, stream_name))
    assert len(await notifications_of(app, user)) == 1
    socket.close()


@bounded
@both_engines
async def test_an_entry_delivered_twice_creates_its_notifications_once(
        start_consumer, producer, stream_name):
    """One event id in three entries of the stream, and one entry without id handed in twice
    in one batch and once more after it, are each handled once."""
    app = await start_consumer()
    user = new_user()
    event_id = new_user("pay")
    for _ in range(3):
        await add(producer, stream_name, payment(user, event_id))
    await eventually(lambda: settled(producer, stream_name))
    assert len(await notifications_of(app, user)) == 1
    intake = StreamIntake(app.ingest)
    entry = StreamEntry("1-0", json.dumps(payment(user, amount=5)), None, 1)
    first = await intake.handle("redis:elsewhere", [entry, entry])
    again = await intake.handle("redis:elsewhere", [entry])
    assert [verdict.kind for verdict in first + again] == ["stored"] * 3
    assert [n["data"]["amount"] for n in await notifications_of(app, user)] == [5, 2450]


@bounded
async def test_an_entry_without_id_is_idempotent_by_its_entry_id(start_consumer, producer,
                                                                 stream_name):
    app = await start_consumer()
    user = new_user()
    entry_id = await add(producer, stream_name, payment(user))
    await eventually(lambda: settled(producer, stream_name))
    record = await app.store.event(f"event:redis:{stream_name}/{entry_id}")
    assert record is not None and record["state"] == "done"
    assert record["notifications"] == [n["id"] for n in await notifications_of(app, user)]


class MaybePoison:
    """`test.maybe_poison {userId, poison}`: a plugin that fails on every delivery of a poison
    one (an unforeseen failure, not a validation error: only the delivery count stops it)."""

    @hookimpl
    def mojavox_register_types(self):
        return [NotificationType("test_note", "low", "a test's notification")]

    @hookimpl
    def mojavox_event_types(self):
        return {"test.maybe_poison": "fails when data.poison is true"}

    @hookimpl
    def mojavox_event_to_drafts(self, event):
        if event.data.get("poison"):
            raise RuntimeError("the plugin cannot handle this one")
        return [{"userId": event.data["userId"], "type": "test_note", "title": "Note",
                 "message": str(event.data.get("n", ""))}]


def note(user: str, event_id: str, poison: bool = False, n: int = 0) -> dict:
    return {"type": "test.maybe_poison", "id": event_id,
            "data": {"userId": user, "poison": poison, "n": n}}


@bounded
@both_engines
async def test_a_poison_event_reaches_the_dead_letter_after_max_deliveries_and_the_stream_goes_on(
        start_app, redis_overrides, producer, stream_name):
    app = await start_app(plugins=[("maybe_poison", MaybePoison())], discover_plugins=False,
                          **redis_overrides, **{"ingest.redis_streams": [
                              {"stream": stream_name, **QUICK, "max_deliveries": 3}]})
    user = new_user()
    await add(producer, stream_name, note(user, "before", n=1))
    poison_id = await add(producer, stream_name, note(user, "poison", poison=True))
    not_json = await add(producer, stream_name, "{not json")
    unknown = await add(producer, stream_name, {"type": "no.such_type", "data": {}})
    await producer.xadd(stream_name, {"something": "else"})  # no event field at all
    await add(producer, stream_name, note(user, "after", n=2))

    letters = await eventually(lambda: _letters(producer, f"{stream_name}:dead", 4), timeout=20)
    by_id = {letter["original_id"]: letter for letter in letters}
    assert by_id[not_json]["deliveries"] == "1" and "not valid JSON" in by_id[not_json]["error"]
    assert by_id[unknown]["deliveries"] == "1" and "unknown event type" in by_id[unknown]["error"]
    assert by_id[not_json]["event"] == "{not json", "the original fields are kept"
    poisoned = by_id[poison_id]
    assert poisoned["deliveries"] == "3" and "delivered 3 times" in poisoned["error"]
    assert json.loads(poisoned["event"])["id"] == "poison"
    assert poisoned["original_stream"] == stream_name
    await eventually(lambda: settled(producer, stream_name))
    assert sorted(n["message"] for n in await notifications_of(app, user)) == ["1", "2"]
    [source] = app.stream_sources
    assert source.stats.dead_lettered == 4 and source.stats.processed == 2
    assert source.stats.failed >= 2, "the poison's first deliveries were left for a retry"


async def _letters(producer, stream: str, count: int) -> list[dict] | None:
    letters = dead_letters(await producer.xrange(stream))
    return letters if len(letters) >= count else None


@bounded
@both_engines
async def test_a_dead_consumers_pending_entries_are_taken_over_after_claim_idle_seconds(
        start_consumer, producer, stream_name):
    await producer.xgroup_create(stream_name, "mojavox-notify", id="0", mkstream=True)
    users = [new_user() for _ in range(5)]
    for index, user in enumerate(users):
        await add(producer, stream_name, payment(user, f"{stream_name}-{index}"))
    read = await producer.xreadgroup("mojavox-notify", "gone-host:4242", {stream_name: ">"})
    assert len(read[0][1]) == 5, "the dead consumer holds all five, unacknowledged"

    app = await start_consumer(claim_idle_seconds=1)
    await eventually(lambda: settled(producer, stream_name))
    for user in users:
        assert len(await notifications_of(app, user)) == 1
    consumers = {c["name"].decode(): c for c in await producer.xinfo_consumers(
        stream_name, "mojavox-notify")}
    ours = f"{socket.gethostname()}:{os.getpid()}"
    assert set(consumers) == {"gone-host:4242", ours}, "named by host and pid"
    assert consumers["gone-host:4242"]["pending"] == 0


class FailingInserts:
    """The embedded engine's notification writes fail (a disk error) while `failing` is set;
    claims and everything else still work, so the release of a batch's claims is exercised."""

    def __init__(self, monkeypatch) -> None:
        self.failing = False
        self.failures = 0
        original = sqlite_engine._insert_rows

        def insert_rows(connection, *args):
            if self.failing:
                self.failures += 1
                raise sqlite3.OperationalError("disk I/O error")
            return original(connection, *args)

        monkeypatch.setattr(sqlite_engine, "_insert_rows", insert_rows)


@pytest.fixture
async def nx_server(tmp_path):
    """An nx-27017 server of this test's own, to kill and bring back."""
    child = Nx27017Child(tmp_path / "nx")
    yield child
    async with asyncio.timeout(30):
        await child.stop()


async def count_stored(app, users: list[str]) -> int:
    return sum(len(await notifications_of(app, user)) for user in users)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", ["sqlite", "mongo"])
async def test_storage_failing_mid_stream_loses_nothing_once_it_returns(
        engine, start_consumer, producer, stream_name, monkeypatch, nx_server):
    overrides = {"storage.operation_timeout_seconds": 1, "storage.probe_interval_seconds": 0.2,
                 "mongodb.server_selection_timeout_seconds": 1, "storage.exit_after_seconds": 0}
    if engine == "mongo":
        overrides.update({"storage.url": await nx_server.start(),
                          "mongodb.database": f"streams_{uuid.uuid4().hex[:8]}"})
    faults = FailingInserts(monkeypatch)
    # Redelivered every 0.5 s, given up after 2 deliveries if the failure were the entry's own:
    # an outage of seconds is waited out instead (transient).
    app = await start_consumer(overrides, claim_idle_seconds=0.5, max_deliveries=2)
    users = [new_user() for _ in range(10)]
    sent = 0

    async def send(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            await add(producer, stream_name, payment(users[sent % 10], f"{stream_name}-{sent}"))
            sent += 1

    await send(20)
    await eventually(lambda: settled(producer, stream_name))
    if engine == "mongo":
        os.kill(nx_server._process.pid, signal.SIGKILL)
    else:
        faults.failing = True
    await send(30)
    [source] = app.stream_sources
    await eventually(lambda: _true(source.stats.failed > 0), timeout=20)
    await asyncio.sleep(2)  # failing for a while: retried with backoff, nothing acknowledged
    assert (await producer.xpending(stream_name, "mojavox-notify"))["pending"] > 0
    if engine == "mongo":
        await nx_server.start(port=nx_server.port)
    else:
        assert faults.failures > 0
        faults.failing = False
    await send(10)
    await eventually(lambda: settled(producer, stream_name), timeout=40)
    for user in users:
        assert len(await notifications_of(app, user)) == 6, "each of its six events once"
    assert source.stats.dead_lettered == 0


async def _true(value: bool) -> bool:
    return value


@pytest.mark.timeout(90)
async def test_redis_restarted_mid_stream_loses_nothing(start_app, tmp_path, stream_name):
    """Killed with entries still unread and unacknowledged; its append-only file has them all."""
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    try:
        app = await start_app(**{"redis.url": redis.url, "redis.reconnect_max_seconds": 0.5,
                                 "rate_limits.notifications_per_minute": 0,
                                 "ingest.redis_streams": [{"stream": stream_name, **QUICK}]})
        users = [new_user() for _ in range(10)]
        producer = aioredis.Redis.from_url(redis.url)
        async with producer.pipeline(transaction=False) as pipeline:
            for sent in range(3000):
                pipeline.xadd(stream_name, {"event": json.dumps(
                    payment(users[sent % 10], f"{stream_name}-{sent}"))})
            await pipeline.execute()
        await eventually(lambda: _true(app.stream_sources[0].stats.processed > 0))
        [group] = await producer.xinfo_groups(stream_name)
        assert group["lag"] + group["pending"] > 0, "killed mid-stream, not after it"
        await producer.aclose()
        redis.kill()
        await asyncio.sleep(1)
        redis.start()
        producer = aioredis.Redis.from_url(redis.url)
        for sent in range(3000, 3100):
            await add(producer, stream_name, payment(users[sent % 10], f"{stream_name}-{sent}"))
        await eventually(lambda: settled(producer, stream_name), timeout=40)
        await producer.aclose()
        assert await stored_event_ids(app) == {f"event:{stream_name}-{n}" for n in range(3100)}
        status, health = await app.api.get("/healthz")
        assert health["sources"][0]["ok"] is True
    finally:
        redis.stop()


async def stored_event_ids(app) -> set[str]:
    """The event ids of every stored notification, each exactly once (embedded engine)."""
    with sqlite3.connect(app.store.path) as connection:
        rows = connection.execute("SELECT event_id, count(*) FROM notifications "
                                  "GROUP BY event_id").fetchall()
    assert all(count == 1 for _, count in rows), "no event's notification is stored twice"
    return {event_id for event_id, _ in rows}


# -- operations: /healthz, /metrics, check, emit --stream -------------------------------------------

@bounded
async def test_healthz_and_metrics_name_the_source_with_its_figures_and_backlog(
        start_consumer, producer, stream_name):
    app = await start_consumer()
    user = new_user()
    await add(producer, stream_name, payment(user, new_user("pay")))
    await add(producer, stream_name, "{not json")
    await eventually(lambda: settled(producer, stream_name))
    await asyncio.sleep(2.2)  # the backlog is looked at every 2 s
    status, health = await app.api.get("/healthz")
    [source] = health["sources"]
    assert status == 200 and health["status"] == "ok"
    assert source["name"] == f"redis:{stream_name}" and source["ok"] is True
    assert (source["pending"], source["lag"], source["oldestUnacknowledgedSeconds"]) == (0, 0, 0.0)
    assert source["consumer"] == f"{socket.gethostname()}:{os.getpid()}"
    samples = await scrape(app)
    name = f"redis:{stream_name}"
    assert samples[("mojavox_stream_entries_processed_total", (("source", name),))] == 1
    assert samples[("mojavox_stream_entries_dead_lettered_total", (("source", name),))] == 1
    assert samples[("mojavox_stream_entries_failed_total", (("source", name),))] == 0
    assert samples[("mojavox_stream_pending", (("source", name),))] == 0
    assert samples[("mojavox_stream_lag", (("source", name),))] == 0


@bounded
async def test_a_backlog_shows_in_healthz_and_a_lost_redis_degrades_it(start_app, tmp_path,
                                                                      stream_name):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        producer = aioredis.Redis.from_url(redis.url)
        await producer.xgroup_create(stream_name, "mojavox-notify", id="0", mkstream=True)
        await add(producer, stream_name, payment(new_user(), "waiting"))
        await producer.xreadgroup("mojavox-notify", "gone-host:1", {stream_name: ">"})
        await asyncio.sleep(1.1)
        await producer.aclose()
        app = await start_app(**{"redis.url": redis.url, "redis.reconnect_max_seconds": 0.5,
                                 "ingest.redis_streams": [
                                     {"stream": stream_name, "claim_idle_seconds": 3600}]})
        await asyncio.sleep(0.3)
        _, health = await app.api.get("/healthz")
        [source] = health["sources"]
        assert (source["ok"], source["pending"], source["lag"]) == (True, 1, 0)
        assert source["oldestUnacknowledgedSeconds"] >= 1
        redis.kill()
        await eventually(lambda: _unhealthy_source(app), timeout=10)
        status, health = await app.api.get("/healthz")
        assert status == 200 and health["status"] == "degraded"
        assert health["sources"][0]["error"]
    finally:
        redis.stop()


async def _unhealthy_source(app) -> bool:
    _, health = await app.api.get("/healthz")
    return not health["sources"][0]["ok"]


async def scrape(app) -> dict[tuple, float]:
    status, text = await app.api.get("/metrics", token("ops", ["admin"]))
    assert status == 200
    from prometheus_client.parser import text_string_to_metric_families
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.timeout(60)
async def test_emit_stream_adds_an_event_the_server_consumes_and_check_names_the_source(
        tmp_path, redis_server, producer, stream_name):
    deployment = Deployment(tmp_path, extra_settings=(
        f"redis:\n  url: {redis_server.url}\n"
        f"ingest:\n  redis_streams:\n    - stream: {stream_name}\n"))
    data = json.dumps({"userId": "alice", "amount": 2450, "accountId": "AC-1",
                       "debtorName": "John Smith"})
    emitted = await asyncio.to_thread(deployment.run, "emit", "--stream", f"redis:{stream_name}",
                                      "payment.received", "--id", "pay-1", "--data", data)
    assert emitted.returncode == 0, emitted.stderr
    [(entry_id, fields)] = await producer.xrange(stream_name)
    assert entry_id.decode() == emitted.stdout.strip()
    assert json.loads(fields[b"event"]) == {"type": "payment.received", "id": "pay-1",
                                            "data": json.loads(data)}
    unknown = await asyncio.to_thread(deployment.run, "emit", "--stream", "redis:nope",
                                      "payment.received", "--data", data)
    assert unknown.returncode == 2
    assert f"redis:nope is not a configured stream; configured: redis:{stream_name}" in unknown.stderr

    checked = await asyncio.to_thread(deployment.run, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"stream redis:{stream_name}: ok (group mojavox-notify" in checked.stdout


@pytest.mark.timeout(60)
async def test_each_worker_of_serve_workers_is_a_consumer_of_its_own(tmp_path, redis_server,
                                                                     producer, stream_name):
    deployment = Deployment(tmp_path, extra_settings=(
        f"redis:\n  url: {redis_server.url}\n  key_prefix: test-{uuid.uuid4().hex[:12]}\n"
        f"ingest:\n  redis_streams:\n    - stream: {stream_name}\n      block_ms: 100\n"))
    try:
        await asyncio.to_thread(deployment.serve, "--workers", "2")
        await asyncio.sleep(1)
        # Redis 7.0 lists a consumer once it was handed an entry: one at a time, so that each
        # blocked worker gets some.
        for n in range(20):
            await add(producer, stream_name, payment(new_user(), f"{stream_name}-{n}"))
            await asyncio.sleep(0.05)

        async def two_consumers():
            groups = await producer.xinfo_groups(stream_name) if await producer.exists(
                stream_name) else []
            if not groups:
                return None
            names = [c["name"].decode() for c in await producer.xinfo_consumers(
                stream_name, "mojavox-notify")]
            return names if len(names) == 2 else None

        names = await eventually(two_consumers, timeout=30, interval=0.2)
        assert sorted(name.rsplit(":", 1)[1] for name in names) == ["worker-0", "worker-1"]
        assert len({name.split(":")[1] for name in names}) == 2, "one pid each"
    finally:
        await asyncio.to_thread(deployment.stop_all)


@bounded
async def test_a_batch_is_claimed_in_one_write_and_stored_in_one_more(start_app):
    """50 events with ids, 3 of them twice and one already stored: two trips to the writer."""
    app = await start_app(**{"storage.sqlite_inline_limit": 0,
                             "rate_limits.notifications_per_minute": 0})
    users = [new_user() for _ in range(50)]
    intake = StreamIntake(app.ingest)
    done = StreamEntry("1-0", json.dumps(payment(users[0], f"{users[0]}-pay")), None, 1)
    assert [v.kind for v in await intake.handle("redis:batch", [done])] == ["stored"]
    entries = [StreamEntry(f"{n + 2}-0", json.dumps(payment(user, f"{user}-pay")), None, 1)
               for n, user in enumerate(users)] + [
        StreamEntry(f"{n + 100}-0", json.dumps(payment(users[n], f"{users[n]}-pay")), None, 2)
        for n in range(3)]
    trips: list[str] = []
    write = app.store._write

    async def recorded(function, *args):
        trips.append(function.__name__)
        return await write(function, *args)

    app.store._write = recorded
    verdicts = await intake.handle("redis:batch", entries)
    assert [v.kind for v in verdicts] == ["stored"] * 53
    assert trips == ["_claim_events", "_insert_many"], trips
    for user in users:
        assert len(await notifications_of(app, user)) == 1


@bounded
async def test_an_entrys_tenant_keeps_its_event_inside_that_tenant(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    intake = StreamIntake(app.ingest)
    user = new_user()
    inside = StreamEntry("1-0", json.dumps(payment(user, "t-1")), "acme", 1)
    elsewhere = StreamEntry("2-0", json.dumps({**payment(user, "t-2"), "tenant": "other"}),
                            "acme", 1)
    platform = StreamEntry("3-0", json.dumps({**payment(user, "t-3"), "tenant": "other"}),
                           None, 1)
    bad = StreamEntry("4-0", json.dumps(payment(user, "t-4")), "not a tenant!", 1)
    verdicts = await intake.handle("redis:tenants", [inside, elsewhere, platform, bad])
    assert [v.kind for v in verdicts] == ["stored", "dead", "stored", "dead"]
    assert "own tenant" in verdicts[1].error and "tenant" in verdicts[3].error
    assert len(await notifications_of(app, user)) == 0, "nothing in the default tenant"
    assert len(await notifications_of_tenant(app, "acme", user)) == 1
    assert len(await notifications_of_tenant(app, "other", user)) == 1


async def notifications_of_tenant(app, tenant: str, user: str) -> list[dict]:
    status, body = await app.api.get("/api/notifications?limit=100", token(user, tenant=tenant))
    assert status == 200, body
    return body["notifications"]


async def stalled_while_storing(app, entry: StreamEntry):
    """The intake handling `entry` while storing never ends (create_groups waits forever): the
    task, once it holds the entry's claim, and the real create_groups to put back."""
    storing = asyncio.Event()

    async def never_stored(groups):
        storing.set()
        await asyncio.Event().wait()

    create_groups, app.service.create_groups = app.service.create_groups, never_stored
    handling = asyncio.create_task(StreamIntake(app.ingest).handle("redis:shutdown", [entry]))
    await asyncio.wait_for(storing.wait(), 5)
    return handling, create_groups


@bounded
async def test_a_batch_cancelled_at_shutdown_releases_its_claims_for_the_next_delivery(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    entry = StreamEntry("1-0", json.dumps(payment(user, f"{user}-pay")), None, 1)
    handling, create_groups = await stalled_while_storing(app, entry)
    assert (await app.store.event(f"event:{user}-pay"))["state"] == "pending"
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling
    assert await app.store.event(f"event:{user}-pay") is None, "released, not left to go stale"
    app.service.create_groups = create_groups
    [verdict] = await StreamIntake(app.ingest).handle("redis:shutdown", [entry])
    assert verdict.kind == "stored" and len(await notifications_of(app, user)) == 1


@bounded
@both_engines
async def test_a_redelivered_entry_takes_over_a_claim_left_pending_by_a_consumer_that_died(
        start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    key = f"event:{user}-pay"
    assert await app.store.claim_event(key, "payment.received", "a-consumer-that-died") is None
    intake = StreamIntake(app.ingest)
    event = json.dumps(payment(user, f"{user}-pay"))
    [first] = await intake.handle("redis:takeover", [StreamEntry("1-0", event, None, 1)])
    assert (first.kind, first.transient) == ("retry", True), "a young claim may be a live one"
    [again] = await intake.handle("redis:takeover", [StreamEntry("1-0", event, None, 2)])
    assert again.kind == "stored"
    assert len(await notifications_of(app, user)) == 1
    assert (await app.store.event(key))["state"] == "done"


@bounded
async def test_one_user_over_the_rate_limit_holds_back_only_their_own_entries(start_app):
    """Each entry is counted on its own: the noisy user's entries past the limit wait for a
    later delivery (transient: not towards max_deliveries), everyone else's are stored."""
    app = await start_app(**{"rate_limits.notifications_per_minute": 3})
    noisy, quiet = new_user("noisy"), new_user("quiet")
    entries = [StreamEntry(f"{n + 1}-0", json.dumps(payment(user, f"{user}-{n}")), None, 1)
               for n, user in enumerate([noisy] * 5 + [quiet] * 2)]
    verdicts = await StreamIntake(app.ingest).handle("redis:limits", entries)
    assert [v.kind for v in verdicts] == ["stored"] * 3 + ["retry"] * 2 + ["stored"] * 2
    assert all(v.transient for v in verdicts[3:5])
    assert len(await notifications_of(app, noisy)) == 3
    assert len(await notifications_of(app, quiet)) == 2
    for n in (3, 4):  # released for their next delivery, not left pending
        assert await app.store.event(f"event:{noisy}-{n}") is None


@bounded
async def test_an_entry_that_cannot_be_read_goes_to_the_dead_letter_and_the_batch_goes_on(
        start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    nested = StreamEntry("1-0", "[" * 3000, None, 1)
    not_a_number = StreamEntry("2-0", json.dumps(payment(user, "nan")).replace("2450", "NaN"),
                               None, 1)
    too_large = StreamEntry("3-0", json.dumps({**payment(user, "big"), "pad": "x" * 5000}),
                            None, 1)
    good = StreamEntry("4-0", json.dumps(payment(user, "good")), None, 1)
    verdicts = await StreamIntake(app.ingest, max_bytes=4096).handle(
        "redis:unreadable", [nested, not_a_number, too_large, good])
    assert [v.kind for v in verdicts] == ["dead", "dead", "dead", "stored"], verdicts
    assert "nests deeper" in verdicts[0].error and "not valid JSON" in verdicts[1].error
    assert "larger than 4096 bytes" in verdicts[2].error
    assert [n["data"]["amount"] for n in await notifications_of(app, user)] == [2450]


@bounded
async def test_a_batch_cancelled_while_storage_is_away_stays_cancelled(start_app):
    """The release of its claims fails too: the cancellation still ends the batch (the claims
    are released by the next one), rather than a storage error taking its place."""
    from mojavox_notify.errors import StorageUnavailableError
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    entry = StreamEntry("1-0", json.dumps(payment(user, f"{user}-pay")), None, 1)

    async def storage_away(claim):
        raise StorageUnavailableError("the disk stalled")

    handling, create_groups = await stalled_while_storing(app, entry)
    release, app.store.release_event = app.store.release_event, storage_away
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling
    app.service.create_groups, app.store.release_event = create_groups, release
    [verdict] = await StreamIntake(app.ingest).handle("redis:shutdown", [entry])
    assert verdict.kind == "stored" and len(await notifications_of(app, user)) == 1


@bounded
async def test_a_dead_letter_key_that_is_not_a_stream_is_refused_and_nothing_is_lost(
        start_consumer, producer, stream_name):
    dead = f"{stream_name}:dead"
    await producer.set(dead, "someone else's value")
    poison = await add(producer, stream_name, "{not json")
    app = await start_consumer()
    [source] = app.stream_sources

    async def refused():
        report = await source.health()
        return not report["ok"] and "not a stream" in report.get("error", "") and report

    report = await eventually(refused)
    assert dead in report["error"]
    await producer.delete(dead)  # put right: the entry reaches its dead letter after all
    letters = await eventually(lambda: _letters(producer, dead, 1), timeout=20)
    assert letters[0]["original_id"] == poison
