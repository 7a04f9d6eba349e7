"""The NATS JetStream source against a real `nats-server -js`: at-least-once in, once per event
out, through storage outages, poison events, a killed nats-server and a killed worker.

Each test has a stream, subjects and durable consumer of its own on the session's nats-server
(or a nats-server of its own when it kills it), so nothing is purged between tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from types import SimpleNamespace

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.settings import SettingsError, load_settings
from mojavox_notify.store.nx27017 import Nx27017Child
from mojavox_notify.streams.nats import (DELIVERIES_HEADER, ERROR_HEADER, SEQUENCE_HEADER,
                                         TENANT_HEADER)

from .support.api import notifications_of
from .support.ports import free_port
from .support.servers import Deployment, ServeProcess
from .support.sockets import Socket, SocketTally
from .support.tokens import new_user, token
from .test_idempotency_faults import StalledWrite

bounded = pytest.mark.timeout(90)
both_engines = pytest.mark.parametrize("storage_engine", ["sqlite", "mongo"], indirect=True)
QUICK = {"rate_limits.notifications_per_minute": 0, "storage.operation_timeout_seconds": 1,
         "storage.probe_interval_seconds": 0.2, "mongodb.server_selection_timeout_seconds": 1,
         "storage.exit_after_seconds": 0}


def stream_settings(server, max_deliver: int = 3, ack_wait: float = 1) -> dict:
    """`ingest.nats` settings for a stream, subjects and durable consumer of the caller's own."""
    unique = uuid.uuid4().hex[:10]
    return {"ingest.nats.url": server.url, "ingest.nats.stream": f"TEST_{unique}",
            "ingest.nats.subjects": [f"t{unique}.events.>"],
            "ingest.nats.durable": f"notify-{unique}",
            "ingest.nats.max_deliver": max_deliver, "ingest.nats.ack_wait_seconds": ack_wait,
            "ingest.nats.dead_letter_subject": f"t{unique}.dead"}


def subject_of(settings: dict, event_type: str = "payment.received") -> str:
    return settings["ingest.nats.subjects"][0].replace(">", event_type)


def payment(user: str, index: int, event_id: str | None = "") -> bytes:
    """A payment.received body; its accountId AC-<index> tells the events apart. Its `id` is
    `pay-<user>-<index>` unless given, and left out when None."""
    body = {"type": "payment.received",
            "data": {"userId": user, "amount": 10 + index, "accountId": f"AC-{index}",
                     "debtorName": "John Smith"}}
    if event_id is not None:
        body["id"] = event_id or f"pay-{user}-{index}"
    return json.dumps(body).encode()


class Producer:
    """A JetStream publisher, as the dialer or the payment service would be (it retries a
    publish that got no acknowledgement, which JetStream may then hold twice)."""

    def __init__(self, url: str):
        self.url = url
        self.client = None

    async def __aenter__(self) -> "Producer":
        self.client = await nats.connect(self.url, max_reconnect_attempts=-1,
                                         reconnect_time_wait=0.2)
        self.js = self.client.jetstream(timeout=2)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()

    async def publish(self, subject: str, body: bytes, headers: dict | None = None,
                      within: float = 30) -> None:
        async with asyncio.timeout(within):
            while True:
                try:
                    await self.js.publish(subject, body, headers=headers)
                    return
                except (nats.errors.Error, asyncio.TimeoutError):
                    await asyncio.sleep(0.2)

    async def publish_all(self, subject: str, bodies: list[bytes], within: float = 30) -> None:
        """Every body at once, each acknowledged by JetStream (faster than one at a time)."""
        async with asyncio.timeout(within):
            pending = [await self.js.publish_async(subject, body) for body in bodies]
            await asyncio.gather(*pending)

    async def dead_letters(self, settings: dict, count: int, within: float = 20) -> list:
        """The first `count` dead letters, read from the dead-letter stream the source made (it
        waits up to `within` seconds for them)."""
        subscription = await self.js.subscribe(settings["ingest.nats.dead_letter_subject"],
                                               ordered_consumer=True,
                                               stream=f"{settings['ingest.nats.stream']}_DEAD")
        letters = []
        try:
            async with asyncio.timeout(within):
                while len(letters) < count:
                    letters.append(await subscription.next_msg(timeout=within))
        finally:
            await subscription.unsubscribe()
        return letters


async def stored_accounts(app, user: str) -> list[str]:
    """The accountId of each of the user's stored notifications (a repeat shows twice)."""
    return [n["data"]["accountId"] for n in await notifications_of(app, user)]


async def until_all_stored(app, users: list[str], count: int, within: float = 30) -> list[str]:
    """The accounts of all `users` once at least `count` are stored (at most 100 each is read:
    tests give each user fewer, so a repeat still shows)."""
    accounts: list[str] = []
    deadline = time.monotonic() + within
    while True:
        accounts = [account for user in users for account in await stored_accounts(app, user)]
        if len(accounts) >= count:
            return accounts
        assert time.monotonic() < deadline, f"{len(accounts)} of {count} stored in {within} s"
        await asyncio.sleep(0.2)


async def until_stored(app, user: str, count: int, within: float = 30) -> list[str]:
    return await until_all_stored(app, [user], count, within)


# -- in, once, on the socket ------------------------------------------------------------------------

@bounded
@both_engines
async def test_published_events_are_stored_once_each_and_reach_the_socket_in_order(
        start_app, nats_server):
    settings = stream_settings(nats_server)
    app = await start_app(**QUICK, **settings)
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    async with Producer(nats_server.url) as producer:
        for index in range(30):
            await producer.publish(subject_of(settings), payment(user, index))
    expected = [f"AC-{index}" for index in range(30)]
    delivered = [(await socket.expect("notification", timeout=10))["payload"]["data"]["accountId"]
                 for _ in expected]
    assert delivered == expected, "one consumer keeps the producer's order"
    assert sorted(await stored_accounts(app, user)) == sorted(expected)
    assert [f for f in await socket.quiet(0.5) if f["type"] == "notification"] == []


@bounded
async def test_the_tenant_header_puts_the_event_in_that_tenant(start_app, nats_server):
    settings = stream_settings(nats_server)
    app = await start_app(**QUICK, **settings)
    user = new_user()
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject_of(settings), payment(user, 1),
                               headers={TENANT_HEADER: "acme"})
        await producer.publish(subject_of(settings), payment(user, 2))

    async def both_stored() -> bool:
        mine = await app.api.get("/api/notifications", token(user, tenant="acme"))
        theirs = await app.api.get("/api/notifications", token(user))
        return len(mine[1]["notifications"]) + len(theirs[1]["notifications"]) >= 2

    await wait_until_async(both_stored, 15)
    _, in_acme = await app.api.get("/api/notifications", token(user, tenant="acme"))
    _, in_default = await app.api.get("/api/notifications", token(user))
    assert [n["data"]["accountId"] for n in in_acme["notifications"]] == ["AC-1"]
    assert [n["data"]["accountId"] for n in in_default["notifications"]] == ["AC-2"]


async def wait_until_async(condition, within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


# -- repeats ----------------------------------------------------------------------------------------

@bounded
@both_engines
async def test_the_same_event_id_published_twice_creates_once(start_app, nats_server):
    settings = stream_settings(nats_server)
    app = await start_app(**QUICK, **settings)
    user = new_user()
    async with Producer(nats_server.url) as producer:
        # The producer's retry after a lost acknowledgement: a second message, the same event.
        await producer.publish(subject_of(settings), payment(user, 1, "pay-once"))
        await producer.publish(subject_of(settings), payment(user, 1, "pay-once"))
        await producer.publish(subject_of(settings), payment(user, 2, "pay-after"))
    assert sorted(await until_stored(app, user, 2)) == ["AC-1", "AC-2"]
    await asyncio.sleep(0.5)
    assert sorted(await stored_accounts(app, user)) == ["AC-1", "AC-2"]


@bounded
async def test_a_message_redelivered_after_a_late_commit_is_created_once_even_without_an_id(
        start_app, nats_server, monkeypatch):
    """Its first write stalls past the timeout (a retry verdict, so a nak) and commits after:
    the redelivery, known by its stream sequence, replays instead of creating it again."""
    settings = stream_settings(nats_server, max_deliver=5)
    app = await start_app(**{**QUICK, "storage.operation_timeout_seconds": 0.5,
                             "storage.busy_timeout_seconds": 0.5, "storage.sqlite_inline_limit": 0},
                          **settings)
    user = new_user()
    stall = StalledWrite(monkeypatch)
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject_of(settings), payment(user, 1, event_id=None))
    await stall.ended()
    assert await until_stored(app, user, 1) == ["AC-1"]
    assert stall.over.is_set(), "the first write did stall"
    assert app.stream_sources[0].stats.failed == 1, "it was answered nak and delivered again"
    await wait_until_async(lambda: consumer_settled(nats_server, settings), 15)
    assert await stored_accounts(app, user) == ["AC-1"]


async def consumer_settled(server, settings: dict) -> bool:
    """Nothing left to deliver or to acknowledge on the test's durable consumer."""
    client = await nats.connect(server.url)
    try:
        info = await client.jetstream().consumer_info(settings["ingest.nats.stream"],
                                                      settings["ingest.nats.durable"])
        return info.num_pending + info.num_ack_pending == 0
    finally:
        await client.close()


# -- storage away -----------------------------------------------------------------------------------

class StorageOutage:
    """Storage that goes away and comes back, for either engine: the MongoDB engine's nx-27017
    killed and started again on its port; the embedded engine's disk filled, then freed."""

    def __init__(self, engine: str, folder):
        self.engine = engine
        self.folder = folder
        self.mongo = Nx27017Child(folder / "nx") if engine == "mongo" else None
        self.disk = folder / "small-disk"

    async def settings(self) -> dict:
        if self.mongo is not None:
            return {"storage.url": await self.mongo.start(),
                    "mongodb.database": f"outage_{uuid.uuid4().hex[:8]}"}
        self.disk.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.disk)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted on this machine")
        return {"storage.url": f"sqlite:///{self.disk / 'notify.db'}"}

    async def begin(self) -> None:
        if self.mongo is not None:
            os.kill(self.mongo._process.pid, signal.SIGKILL)
            return
        with open(self.disk / "filler", "wb", buffering=0) as blocks:
            try:
                while True:
                    blocks.write(b"\0" * 65536)
            except OSError:
                pass

    async def end(self) -> None:
        if self.mongo is not None:
            await self.mongo.start(port=self.mongo.port)
        else:
            (self.disk / "filler").unlink()

    async def close(self) -> None:
        if self.mongo is not None:
            async with asyncio.timeout(30):
                await self.mongo.stop()
        else:
            subprocess.run(["umount", "-l", str(self.disk)], capture_output=True)


@pytest.fixture
async def outage(storage_engine, tmp_path):
    storage = StorageOutage(storage_engine, tmp_path)
    yield storage
    await storage.close()


@bounded
@both_engines
async def test_storage_failing_mid_stream_loses_nothing_once_it_returns(
        start_app, nats_server, outage):
    """With max_deliver 1: a retry because storage is away is not the event's fault, and the
    messages storage could not take are held and tried again, not delivered again."""
    settings = stream_settings(nats_server, max_deliver=1)
    app = await start_app(**QUICK, **await outage.settings(), **settings)
    [source] = app.stream_sources
    deliveries: list[int] = []
    handle = source._intake.handle

    async def noting(name, entries):
        deliveries.extend(entry.deliveries for entry in entries)
        return await handle(name, entries)

    source._intake.handle = noting
    user = new_user()
    async with Producer(nats_server.url) as producer:
        for index in range(20):
            await producer.publish(subject_of(settings), payment(user, index))
        await until_stored(app, user, 20)
        await outage.begin()
        for index in range(20, 60):
            await producer.publish(subject_of(settings), payment(user, index))
        # Long enough for several naks if each retry while storage is away were a delivery.
        await asyncio.sleep(4)
        await outage.end()
        for index in range(60, 80):
            await producer.publish(subject_of(settings), payment(user, index))
        stored = await until_stored(app, user, 80, within=40)
        assert await dead_letter_count(producer, settings) == 0
    assert sorted(stored) == sorted(f"AC-{index}" for index in range(80)), "none lost, none doubled"
    assert set(deliveries) == {1}, "held through the outage, never delivered again"


async def dead_letter_count(producer: Producer, settings: dict) -> int:
    info = await producer.js.stream_info(f"{settings['ingest.nats.stream']}_DEAD")
    return info.state.messages


# -- poison -----------------------------------------------------------------------------------------

class FlakyPlugin:
    """Handles `test.flaky`: a draft for `data.userId`, unless `data.fail`, where it raises as a
    plugin with a bug would (the intake's verdict: retry, never stored)."""

    def __init__(self) -> None:
        self.failures = 0

    @hookimpl
    def mojavox_register_types(self):
        return [NotificationType("flaky_test", "low", "a test plugin's notification")]

    @hookimpl
    def mojavox_event_types(self):
        return {"test.flaky": "a test plugin's event, which fails when asked to"}

    @hookimpl
    def mojavox_event_to_drafts(self, event):
        if event.data.get("fail"):
            self.failures += 1
            raise RuntimeError("the plugin fails on this event")
        return [{"userId": event.data["userId"], "type": "flaky_test", "title": "Flaky",
                 "message": "handled", "data": {"accountId": event.data["accountId"]}}]


def flaky(user: str, account: str, fail: bool = False) -> bytes:
    return json.dumps({"type": "test.flaky", "id": f"flaky-{user}-{account}",
                       "data": {"userId": user, "accountId": account, "fail": fail}}).encode()


@bounded
async def test_a_poison_event_is_dead_lettered_after_max_deliver_and_the_stream_goes_on(
        start_app, nats_server):
    settings = stream_settings(nats_server, max_deliver=3)
    plugin = FlakyPlugin()
    app = await start_app(**QUICK, **settings, plugins=[("flaky", plugin)])
    user = new_user()
    subject = subject_of(settings, "test.flaky")
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject, flaky(user, "AC-poison", fail=True),
                               headers={TENANT_HEADER: "acme"})
        for index in range(1, 6):
            await producer.publish(subject, flaky(user, f"AC-{index}"))
        [letter] = await producer.dead_letters(settings, 1, within=30)
        for index in range(6, 9):
            await producer.publish(subject, flaky(user, f"AC-{index}"))
        assert sorted(await until_stored(app, user, 8)) == sorted(f"AC-{i}" for i in range(1, 9))
    assert letter.data == flaky(user, "AC-poison", fail=True), "the original, byte for byte"
    assert letter.headers[SEQUENCE_HEADER] == "1" and letter.headers[TENANT_HEADER] == "acme"
    assert "max_deliver" in letter.headers[ERROR_HEADER]
    # Handled max_deliver times; one more now and then, when nats-server 2.9.10 reports a
    # redelivery as delivery 1 (see the next test).
    assert plugin.failures in (3, 4) and int(letter.headers[DELIVERIES_HEADER]) in (3, 4)
    await wait_until_async(lambda: consumer_settled(nats_server, settings), 10)


@bounded
async def test_a_dead_letter_that_could_not_be_published_is_published_on_a_later_delivery(
        start_app, nats_server):
    """Its stream gone for a moment: the original is left unanswered and, JetStream's own
    delivery limit being off, comes back after ack_wait to be dead-lettered then. (The letter's
    delivery count is not asserted: nats-server 2.9.10 now and then reports a redelivery as
    delivery 1, here too; the consumer's own sequence counts every delivery.)"""
    settings = stream_settings(nats_server, max_deliver=1, ack_wait=1)
    stream, durable = settings["ingest.nats.stream"], settings["ingest.nats.durable"]
    dead = settings["ingest.nats.dead_letter_subject"]
    app = await start_app(**QUICK, **settings, plugins=[("flaky", FlakyPlugin())])
    await wait_until_async(lambda: source_reports(app, settings, ok=True), 10)
    async with Producer(nats_server.url) as producer:
        await producer.js.delete_stream(f"{stream}_DEAD")
        await producer.publish(subject_of(settings, "test.flaky"),
                               flaky(new_user(), "AC-poison", fail=True))

        async def delivered_twice() -> bool:
            info = await producer.js.consumer_info(stream, durable)
            return info.delivered.consumer_seq >= 2

        await wait_until_async(delivered_twice, 10)
        await asyncio.sleep(0.2)  # its dead letter's publish has failed: no stream took it
        await producer.js.add_stream(name=f"{stream}_DEAD", subjects=[dead])
        [letter] = await producer.dead_letters(settings, 1, within=15)
        info = await producer.js.consumer_info(stream, durable)
    assert info.delivered.consumer_seq >= 3, "published on a delivery after the two that failed"
    assert "max_deliver" in letter.headers[ERROR_HEADER]
    await wait_until_async(lambda: consumer_settled(nats_server, settings), 10)


@bounded
async def test_an_invalid_event_is_dead_lettered_at_once_naming_the_field(start_app, nats_server):
    settings = stream_settings(nats_server, max_deliver=5)
    app = await start_app(**QUICK, **settings)
    user = new_user()
    invalid = json.dumps({"type": "payment.received", "id": "broken-1",
                          "data": {"amount": 5, "accountId": "AC-x", "debtorName": "J"}}).encode()
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject_of(settings), invalid)
        await producer.publish(subject_of(settings), b"{not json")
        await producer.publish(subject_of(settings, "nobody.handles"),
                               json.dumps({"type": "nobody.handles", "data": {}}).encode())
        await producer.publish(subject_of(settings), payment(user, 1))
        letters = await producer.dead_letters(settings, 3, within=15)
        assert await until_stored(app, user, 1) == ["AC-1"]
    assert [letter.data for letter in letters[:2]] == [invalid, b"{not json"]
    assert all(letter.headers[DELIVERIES_HEADER] == "1" for letter in letters), "at once"
    assert "userId" in letters[0].headers[ERROR_HEADER]
    assert "unknown event type" in letters[2].headers[ERROR_HEADER]


# -- nats-server away -------------------------------------------------------------------------------

@bounded
async def test_nats_server_killed_and_restarted_mid_stream_loses_nothing(start_app, own_nats):
    settings = stream_settings(own_nats)
    app = await start_app(**QUICK, **settings)
    users = [new_user() for _ in range(16)]
    halfway, resumed = asyncio.Event(), asyncio.Event()
    async with Producer(own_nats.url) as producer:
        async def produce() -> None:
            for index in range(800):
                if index == 400:  # the rest once the server is killed (each publish retries)
                    halfway.set()
                    await resumed.wait()
                await producer.publish(subject_of(settings), payment(users[index % 16], index))

        producing = asyncio.ensure_future(produce())
        await halfway.wait()
        await until_all_stored(app, users, 100)
        own_nats.kill()
        resumed.set()
        await wait_until_async(lambda: source_reports(app, settings, ok=False), 10)
        assert not producing.done(), "killed while events were still coming in"
        await asyncio.to_thread(own_nats.start)  # (it waits for the server: not on the loop)
        await producing
        stored = await until_all_stored(app, users, 800, within=40)
    assert sorted(stored) == sorted(f"AC-{index}" for index in range(800)), "none lost, none doubled"
    await wait_until_async(lambda: source_reports(app, settings, ok=True), 10)


async def source_reports(app, settings: dict, ok: bool) -> bool:
    """Whether /healthz lists the test's NATS source with that `ok`."""
    _, health = await app.api.get("/healthz")
    name = f"nats:{settings['ingest.nats.stream']}"
    return any(source["name"] == name and source["ok"] is ok for source in health["sources"])


# -- several consumers ------------------------------------------------------------------------------

def nested(settings: dict) -> dict:
    """Dotted `ingest.nats.*` keys as the `ingest` section of a settings file."""
    return {"ingest": {"nats": {key.rsplit(".", 1)[1]: value for key, value in settings.items()}}}


@pytest.mark.timeout(90)
async def test_two_processes_share_the_durable_and_one_killed_mid_stream_loses_and_doubles_nothing(
        tmp_path, nats_server, redis_overrides, storage_overrides):
    """On the embedded engine, both processes on one SQLite file (as tests/test_stream_kill.py
    does for Redis). Over nx-27017 the same test fails: two processes writing at once get `no
    such savepoint` from its emulated transactions, and a few events (5 of 3,000 in the last
    run) were stored twice. That looks like the test server's transaction isolation rather than
    this source (which only hands each redelivery to the intake), but it was not proven, and a
    real MongoDB was not tried."""
    count, per_user = 10_000, 100
    settings = stream_settings(nats_server, max_deliver=10, ack_wait=2)
    shared = {**storage_overrides, **redis_overrides, **QUICK, **nested(settings)}
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = ServeProcess(tmp_path / "first", **shared)
    second = ServeProcess(tmp_path / "second", **shared)
    users = [new_user() for _ in range(count // per_user)]
    tally = SocketTally(lambda payload: payload["data"]["accountId"])
    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(second.start)
        await tally.open(SimpleNamespace(port=second.port, settings=SimpleNamespace(
            server=SimpleNamespace(ws_path="/ws/notifications"))), users)
        async with Producer(nats_server.url) as producer:
            # All at once (faster than two processes consume them), one killed once a sixth
            # reached the sockets: the rest is still to deliver, some of it in its hands.
            await producer.publish_all(subject_of(settings), [
                payment(users[index % len(users)], index) for index in range(count)], within=60)
            await wait_until_async(lambda: tally_reached(tally, count // 6), 30)
            first.kill()
            before = await producer.js.consumer_info(settings["ingest.nats.stream"],
                                                     settings["ingest.nats.durable"])
            assert before.num_pending > 0, "killed mid-stream, not after it"
        await asyncio.sleep(1)
        await asyncio.to_thread(first.start)
        stored = await until_served_all(second, users, count, within=120)
        async with Producer(nats_server.url) as producer:
            assert sorted(stored) == sorted(f"AC-{index}" for index in range(count)), \
                f"{count - len(set(stored))} lost, {len(stored) - len(set(stored))} doubled, " \
                f"{await dead_letter_count(producer, settings)} dead-lettered"
        await tally.sentinels_through(second)  # what each socket missed, fetched
        delivered = tally.accounts()
        assert len(delivered) == len(set(delivered)), "none twice on the sockets"
        assert sorted(delivered) == sorted(stored), "the sockets got what is stored"
    finally:
        tally.close()
        first.stop()
        second.stop()


async def tally_reached(tally: SocketTally, count: int) -> bool:
    return len(tally.accounts()) >= count


async def until_served_all(server: ServeProcess, users: list[str], count: int,
                           within: float) -> list[str]:
    """Like until_all_stored, through a `serve` process's REST API."""
    deadline = time.monotonic() + within
    while True:
        accounts = []
        for user in users:
            status, page = await asyncio.to_thread(
                server.call, "GET", "/api/notifications?limit=100", token(user))
            assert status == 200, page
            accounts.extend(n["data"]["accountId"] for n in page["notifications"])
        if len(accounts) >= count or time.monotonic() > deadline:
            return accounts
        await asyncio.sleep(0.5)


@pytest.mark.timeout(60)
async def test_each_worker_of_serve_workers_pulls_on_a_connection_named_for_it(
        tmp_path, nats_server, redis_server):
    settings = stream_settings(nats_server)
    deployment = Deployment(tmp_path, extra_settings=(
        f"redis:\n  url: {redis_server.url}\n  key_prefix: test-{uuid.uuid4().hex[:12]}\n"
        + nats_section(settings)))
    user = new_user()
    try:
        await asyncio.to_thread(deployment.serve, "--workers", "2")

        async def two_workers_connected() -> bool:
            return len(worker_connections(nats_server)) == 2

        await wait_until_async(two_workers_connected, 20)
        names = worker_connections(nats_server)
        assert sorted(name.rsplit(":", 1)[1] for name in names) == ["worker-0", "worker-1"]
        assert len({name.split(":")[1] for name in names}) == 2, "one pid each"
        async with Producer(nats_server.url) as producer:
            for index in range(40):
                await producer.publish(subject_of(settings), payment(user, index))
            await wait_until_async(lambda: consumer_settled(nats_server, settings), 20)
            assert await dead_letter_count(producer, settings) == 0, "all 40 stored"
    finally:
        await asyncio.to_thread(deployment.stop_all)


def worker_connections(server) -> list[str]:
    """The names of the NATS connections `serve --workers` opened (the server's /connz)."""
    address = f"http://127.0.0.1:{server.monitor_port}/connz?limit=1024"
    with urllib.request.urlopen(address, timeout=2) as answer:
        connections = json.loads(answer.read()).get("connections") or []
    return [connection["name"] for connection in connections
            if connection.get("name", "").startswith("mojavox-notify ")
            and ":worker-" in connection["name"]]


# -- operations: /healthz, /metrics, check, emit --stream -----------------------------------------

async def scrape(app) -> dict[tuple, float]:
    status, text = await app.api.get("/metrics", token("ops", ["admin"]))
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@bounded
async def test_healthz_and_metrics_name_the_source_with_its_counters_and_backlog(
        start_app, nats_server):
    settings = stream_settings(nats_server)
    app = await start_app(**QUICK, **settings)
    user = new_user()
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject_of(settings), payment(user, 1))
        await producer.publish(subject_of(settings), b"{not json")
        await producer.dead_letters(settings, 1, within=10)
    await until_stored(app, user, 1)
    await wait_until_async(lambda: consumer_settled(nats_server, settings), 10)
    await asyncio.sleep(2.2)  # the backlog is looked at every 2 s
    name = f"nats:{settings['ingest.nats.stream']}"
    status, health = await app.api.get("/healthz")
    [source] = health["sources"]
    assert status == 200 and health["status"] == "ok"
    assert source["name"] == name and source["ok"] is True
    assert source["durable"] == settings["ingest.nats.durable"]
    assert (source["pending"], source["lag"], source["oldestUnacknowledgedSeconds"]) == (0, 0, 0.0)
    samples = await scrape(app)
    label = (("source", name),)
    assert samples[("mojavox_stream_entries_processed_total", label)] == 1
    assert samples[("mojavox_stream_entries_dead_lettered_total", label)] == 1
    assert samples[("mojavox_stream_entries_failed_total", label)] == 0
    assert samples[("mojavox_stream_pending", label)] == 0
    assert samples[("mojavox_stream_lag", label)] == 0


@bounded
async def test_a_backlog_shows_in_healthz_and_a_lost_nats_server_degrades_it(start_app, own_nats):
    settings = {**stream_settings(own_nats), "ingest.nats.ack_wait_seconds": 60}
    stream, durable = settings["ingest.nats.stream"], settings["ingest.nats.durable"]
    async with Producer(own_nats.url) as producer:
        await producer.js.add_stream(name=stream, subjects=settings["ingest.nats.subjects"])
        taken = await producer.js.pull_subscribe(subject_of(settings), durable=durable,
                                                 stream=stream)
        await producer.publish(subject_of(settings), payment(new_user(), 1))
        await producer.publish(subject_of(settings), payment(new_user(), 2))
        # A process that took one message and died before answering it, a minute's ack_wait.
        [held] = await taken.fetch(1, timeout=2)
        await asyncio.sleep(1.1)
        app = await start_app(**QUICK, **settings)

        async def backlog() -> bool:
            _, health = await app.api.get("/healthz")
            source = health["sources"][0]
            return source["ok"] and (source["pending"], source["lag"]) == (1, 0)

        await wait_until_async(backlog, 10)
        _, health = await app.api.get("/healthz")
        assert health["sources"][0]["oldestUnacknowledgedSeconds"] >= 1
    own_nats.kill()
    await wait_until_async(lambda: source_reports(app, settings, ok=False), 10)
    status, health = await app.api.get("/healthz")
    assert status == 200 and health["status"] == "degraded", "the HTTP path still works"
    assert health["sources"][0]["error"] and health["sources"][0]["unavailableForSeconds"] >= 0
    await asyncio.to_thread(own_nats.start)
    await wait_until_async(lambda: source_reports(app, settings, ok=True), 15)


def nats_section(settings: dict) -> str:
    """The test's `ingest.nats` settings as YAML for a settings file."""
    return "ingest:\n  nats:\n" + "".join(
        f"    {key.rsplit('.', 1)[1]}: {json.dumps(value)}\n" for key, value in settings.items())


@pytest.mark.timeout(60)
async def test_emit_stream_publishes_through_jetstream_and_check_names_the_source(
        tmp_path, nats_server):
    settings = stream_settings(nats_server)
    stream, durable = settings["ingest.nats.stream"], settings["ingest.nats.durable"]
    deployment = Deployment(tmp_path, extra_settings=nats_section(settings))
    data = json.dumps({"userId": "alice", "amount": 2450, "accountId": "AC-1",
                       "debtorName": "John Smith"})
    emit = ("emit", "--stream", f"nats:{stream}", "payment.received", "--id", "pay-1",
            "--data", data)
    emitted = await asyncio.to_thread(deployment.run, *emit)
    assert emitted.returncode == 0, emitted.stderr
    again = await asyncio.to_thread(deployment.run, *emit)
    assert emitted.stdout.strip() == again.stdout.strip() == "1", "JetStream kept one (Nats-Msg-Id)"
    async with Producer(nats_server.url) as producer:
        stored = await producer.js.get_msg(stream, seq=1)
        assert stored.subject == subject_of(settings, "payment.received")
        assert json.loads(stored.data) == {"type": "payment.received", "id": "pay-1",
                                           "data": json.loads(data)}
        assert stored.headers["Nats-Msg-Id"] == "pay-1"
        assert (await producer.js.stream_info(stream)).state.messages == 1

    checked = await asyncio.to_thread(deployment.run, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"stream nats:{stream}: ok (durable {durable}" in checked.stdout

    (tmp_path / "unreachable").mkdir()
    unreachable = Deployment(tmp_path / "unreachable", extra_settings=nats_section(
        {**settings, "ingest.nats.url": f"nats://127.0.0.1:{free_port()}"}))
    refused = await asyncio.to_thread(unreachable.run, *emit)
    assert refused.returncode != 0 and "does not answer" in refused.stderr
    failed = await asyncio.to_thread(unreachable.run, "check")
    assert failed.returncode != 0 and f"stream nats:{stream}: does not answer" in failed.stderr


# -- settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("subjects, dead_letter", [
    (["mojavox.events.>"], "mojavox.events.dead"),
    (["mojavox.*.dead"], "mojavox.events.dead"),
    (["a.b", "mojavox.events.dead"], "mojavox.events.dead"),
])
def test_a_dead_letter_subject_the_stream_would_read_again_is_refused(subjects, dead_letter):
    with pytest.raises(SettingsError) as refused:
        load_settings(None, environ={}, overrides={
            "ingest.nats.url": "nats://bus.internal:4222", "ingest.nats.subjects": subjects,
            "ingest.nats.dead_letter_subject": dead_letter})
    assert refused.value.key == "ingest.nats.dead_letter_subject"
    assert "would be read again" in str(refused.value)


def test_a_dead_letter_subject_with_a_wildcard_is_refused():
    with pytest.raises(SettingsError) as refused:
        load_settings(None, environ={}, overrides={
            "ingest.nats.url": "nats://bus.internal:4222",
            "ingest.nats.dead_letter_subject": "mojavox.dead.>"})
    assert refused.value.key == "ingest.nats.dead_letter_subject"
    assert "one literal subject" in str(refused.value)


def test_the_default_dead_letter_subject_is_outside_the_default_subjects():
    settings = load_settings(None, environ={}, overrides={
        "ingest.nats.url": "nats://bus.internal:4222",
        "ingest.nats.subjects": ["mojavox.events.>", "mojavox.*"]})
    assert settings.ingest.nats.dead_letter_subject == "mojavox.dead.events"


@bounded
async def test_a_batch_slower_than_ack_wait_is_kept_in_progress_not_given_to_another_process(
        start_app, nats_server):
    """Two consumers of one durable: the one handling a slow batch tells JetStream it is in
    progress, so the other is not handed the same message after ack_wait."""
    settings = stream_settings(nats_server, ack_wait=1)
    apps = [await start_app(**QUICK, **settings) for _ in range(2)]
    seen: list[int] = []
    for app in apps:
        [source] = app.stream_sources
        handle = source._intake.handle

        async def slowly(name, entries, handle=handle):
            seen.extend(entry.deliveries for entry in entries)
            await asyncio.sleep(2.5)  # longer than ack_wait
            return await handle(name, entries)

        source._intake.handle = slowly
    user = new_user()
    async with Producer(nats_server.url) as producer:
        await producer.publish(subject_of(settings), payment(user, 1))
        await until_stored(apps[0], user, 1, within=15)
    await asyncio.sleep(1.5)
    assert seen == [1], f"deliveries seen: {seen}"
    assert await stored_accounts(apps[0], user) == ["AC-1"]
