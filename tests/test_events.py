"""Event ingest: idempotency by event id (repeats, concurrency, restarts), the in-process
`app.emit`, plugin-run event sources, and the lifecycle and observer hooks."""

from __future__ import annotations

import asyncio
import decimal
import sqlite3
from datetime import timedelta

import pytest

from mojavox_notify import Event, NotificationType, hookimpl
from mojavox_notify.errors import ValidationError

from .support.api import notifications_of, post_event
from .support.engines import both_engines
from .support.sockets import Socket
from .support.tokens import SERVICE, new_user, token


def payment(user: str, amount: float = 2450) -> dict:
    return {"userId": user, "amount": amount, "accountId": "AC-2024-1234",
            "debtorName": "John Smith"}


def new_event_id() -> str:
    return new_user("evt")


# -- idempotency ---------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_same_event_id_three_times_creates_one_notification_and_returns_its_id(start_app):
    app = await start_app()
    user, event_id = new_user(), new_event_id()
    answers = [await post_event(app, "payment.received", payment(user), event_id)
               for _ in range(3)]
    assert [status for status, _ in answers] == [202, 202, 202]
    first = answers[0][1]["notifications"]
    assert len(first) == 1
    assert all(body["notifications"] == first for _, body in answers)
    assert [n["id"] for n in await notifications_of(app, user)] == first


@pytest.mark.timeout(30)
async def test_concurrent_posts_of_one_event_id_create_one_notification(start_app):
    app = await start_app()
    user, event_id = new_user(), new_event_id()
    answers = await asyncio.gather(*[post_event(app, "payment.received", payment(user), event_id)
                                     for _ in range(6)])
    assert {status for status, _ in answers} == {202}, answers
    ids = {tuple(body["notifications"]) for _, body in answers}
    assert len(ids) == 1, answers
    assert [n["id"] for n in await notifications_of(app, user)] == list(ids.pop())


@pytest.mark.timeout(30)
async def test_concurrent_system_alert_with_one_id_notifies_each_user_once(start_app):
    app = await start_app()
    users, event_id = [new_user("ops") for _ in range(3)], new_event_id()
    data = {"userIds": users, "severity": "critical", "message": "Database failover"}
    answers = await asyncio.gather(*[post_event(app, "system.alert", data, event_id)
                                     for _ in range(4)])
    assert {status for status, _ in answers} == {202}, answers
    assert len({tuple(body["notifications"]) for _, body in answers}) == 1
    for user in users:
        assert len(await notifications_of(app, user)) == 1


@pytest.mark.timeout(60)
async def test_event_id_seen_before_a_restart_creates_nothing_after_it(start_app, make_settings):
    settings = make_settings()
    app = await start_app(settings=settings)
    user, event_id = new_user(), new_event_id()
    status, body = await post_event(app, "payment.received", payment(user), event_id)
    assert status == 202, body
    await app.stop()

    restarted = await start_app(settings=settings)
    again_status, again = await post_event(restarted, "payment.received", payment(user), event_id)
    assert again_status == 202, again
    assert again["notifications"] == body["notifications"]
    assert [n["id"] for n in await notifications_of(restarted, user)] == body["notifications"]


@pytest.mark.timeout(30)
async def test_an_event_id_cannot_pre_claim_a_callers_idempotency_key(start_app):
    app = await start_app()
    user, key = new_user(), new_event_id()
    status, _ = await post_event(app, "payment.received", payment(user), f"request:{SERVICE}:{key}")
    assert status == 202
    draft = {"userId": user, "type": "payment_received", "title": "Paid", "message": "$10"}
    status, created = await app.api.post("/api/notifications", token(SERVICE, ["service"]), draft,
                                         headers={"Idempotency-Key": key})
    assert status == 201 and app.api.last_headers.get("Idempotent-Replayed") is None
    assert len(await notifications_of(app, user)) == 2


async def age_event_records(app, hours: float) -> None:
    """Make every stored event record `hours` older, as if claimed that long ago."""
    store = app.store
    if hasattr(store, "events"):  # MongoDB
        async for record in store.events.find({}):
            await store.events.update_one({"_id": record["_id"]}, {"$set": {
                "created_at": record["created_at"] - timedelta(hours=hours)}})
        return
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE events SET created_at = created_at - ?", (int(hours * 3600_000),))


@both_engines
@pytest.mark.timeout(30)
async def test_event_ids_past_the_idempotency_window_are_forgotten_by_cleanup(start_app):
    app = await start_app(**{"retention.idempotency_hours": 24})
    user, old, recent = new_user(), new_event_id(), new_event_id()
    assert (await post_event(app, "payment.received", payment(user), old))[0] == 202
    await age_event_records(app, 25)
    assert (await post_event(app, "payment.received", payment(user), recent))[0] == 202
    await app.service.cleanup()
    assert await app.store.event(f"event:{old}") is None
    assert (await app.store.event(f"event:{recent}"))["state"] == "done"
    status, body = await post_event(app, "payment.received", payment(user), old)
    assert status == 202 and len(await notifications_of(app, user)) == 3, "the old id creates anew"


@pytest.mark.timeout(30)
async def test_event_id_reused_for_another_event_type_is_a_400(start_app):
    app = await start_app()
    user, event_id = new_user(), new_event_id()
    status, _ = await post_event(app, "payment.received", payment(user), event_id)
    assert status == 202
    status, body = await post_event(app, "campaign.milestone", {
        "userId": user, "campaignId": "K-1", "campaignName": "Q1", "percent": 50}, event_id)
    assert status == 400, body
    assert body["error"] == {"code": "event_id_conflict",
                             "message": "id: was already used for a payment.received event"}
    assert len(await notifications_of(app, user)) == 1


@pytest.mark.timeout(30)
async def test_rejected_event_does_not_use_up_its_id(start_app):
    app = await start_app()
    user, event_id = new_user(), new_event_id()
    status, body = await post_event(app, "payment.received", {"userId": user}, event_id)
    assert status == 400, body
    status, body = await post_event(app, "payment.received", payment(user), event_id)
    assert status == 202, body
    assert [n["id"] for n in await notifications_of(app, user)] == body["notifications"]


@pytest.mark.timeout(30)
async def test_events_without_id_are_not_deduplicated(start_app):
    app = await start_app()
    user = new_user()
    first = await post_event(app, "payment.received", payment(user))
    second = await post_event(app, "payment.received", payment(user))
    assert first[0] == second[0] == 202
    assert first[1]["notifications"] != second[1]["notifications"]
    assert len(await notifications_of(app, user)) == 2


@pytest.mark.timeout(30)
async def test_malformed_event_ids_and_fields_are_400s_naming_them(start_app):
    app = await start_app()
    user = new_user()
    service = token("svc", ["service"])
    cases = [
        ({"type": "payment.received", "id": 12, "data": payment(user)}, "id: must be a string"),
        ({"type": "payment.received", "id": "x" * 129, "data": payment(user)}, "id: must be"),
        ({"type": "payment.received", "data": payment(user), "occurredAt": "yesterday"},
         "occurredAt: must be an ISO 8601 time"),
        ({"type": "payment.received", "data": payment(user), "source": "crm"},
         "source: unknown field"),
    ]
    for event, message in cases:
        status, body = await app.api.post("/api/events", service, event)
        assert status == 400, (event, body)
        assert body["error"]["message"].startswith(message), body
    assert await notifications_of(app, user) == []


# -- in-process emit ----------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_app_emit_creates_the_notification_and_delivers_it_to_a_live_socket(start_app):
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    ids = await app.emit(Event("payment.received", payment(user, 99.5)))
    frame = await socket.expect("notification")
    assert frame["payload"]["id"] == ids[0]
    assert frame["payload"]["message"] == "John Smith paid $99.50 on account #AC-2024-1234"
    assert [n["id"] for n in await notifications_of(app, user)] == ids
    socket.close()


@pytest.mark.timeout(30)
async def test_app_emit_and_http_share_idempotency_by_event_id(start_app):
    app = await start_app()
    user, event_id = new_user(), new_event_id()
    ids = await app.emit(Event("payment.received", payment(user), id=event_id))
    assert await app.emit(Event("payment.received", payment(user), id=event_id)) == ids
    status, body = await post_event(app, "payment.received", payment(user), event_id)
    assert (status, body) == (202, {"notifications": ids})
    assert len(await notifications_of(app, user)) == 1


@pytest.mark.timeout(30)
async def test_app_emit_raises_validation_errors_for_unknown_types_and_bad_data(start_app):
    app = await start_app()
    with pytest.raises(ValidationError) as unknown:
        await app.emit(Event("payment.refunded", {}))
    assert unknown.value.field == "type"
    assert "payment.received" in unknown.value.message
    with pytest.raises(ValidationError) as bad:
        await app.emit(Event("payment.received", {"userId": new_user(), "amount": "ten"}))
    assert bad.value.field == "data.amount"


class RawDataPlugin:
    """Hands over `data` as given: what a plugin may build that no JSON body could carry."""

    @hookimpl
    def mojavox_register_types(self):
        return [NotificationType("raw_data", "low", "data exactly as a plugin built it")]

    @hookimpl
    def mojavox_event_types(self):
        return {"raw.data": "data exactly as a plugin built it"}

    @hookimpl
    def mojavox_event_to_drafts(self, event):
        return [{"userId": event.data["userId"], "type": "raw_data", "title": "Raw",
                 "message": "raw", "data": event.data["data"]}]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("data, field, problem", [
    ({1: "integer key"}, "data", "keys must be strings"),
    ({"n": float("nan")}, "data.n", "finite"),
    ({"n": [1, float("-inf")]}, "data.n[1]", "finite"),
    ({"when": decimal.Decimal("1.5")}, "data.when", "JSON value"),
    ({"tags": {"a", "b"}}, "data.tags", "JSON value"),
    ({"text": "\ud800"}, "data", "lone surrogate"),
    ({"list": [{"$where": 1}]}, "data.list[0].$where", "must not start with $"),
    ({"blob": "x" * (16 * 1024)}, "data", "16384 bytes"),
])
async def test_data_a_plugin_builds_is_checked_like_a_clients(start_app, data, field, problem):
    app = await start_app(plugins=[("raw", RawDataPlugin())], discover_plugins=False)
    user = new_user()
    with pytest.raises(ValidationError) as refused:
        await app.emit(Event("raw.data", {"userId": user, "data": data}))
    assert (refused.value.field, problem in refused.value.message) == (field, True), refused.value
    assert await notifications_of(app, user) == []


@pytest.mark.timeout(30)
async def test_data_size_is_counted_as_stored_utf8(start_app):
    """16,000 bytes of UTF-8 (8,000 two-byte characters) fit in the 16 KiB; escaped as \\uXXXX
    they would not, and storage keeps UTF-8."""
    app = await start_app(plugins=[("raw", RawDataPlugin())], discover_plugins=False)
    user = new_user()
    await app.emit(Event("raw.data", {"userId": user, "data": {"text": "é" * 8000}}))
    [stored] = await notifications_of(app, user)
    assert stored["data"] == {"text": "é" * 8000}


# -- plugin hooks: event sources, observers, lifecycle -------------------------------------------

class TickerPlugin:
    """A plugin that runs its own event source: it emits each data dict put on `queue`."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.source_running = asyncio.Event()
        self.source_cancelled = asyncio.Event()
        self.calls: list[str] = []

    @hookimpl
    def mojavox_register_types(self):
        return [NotificationType("ticker_tick", "medium", "a tick from the ticker")]

    @hookimpl
    def mojavox_event_types(self):
        return {"ticker.tick": "the ticker ticked"}

    @hookimpl
    def mojavox_event_to_drafts(self, event):
        if event.type != "ticker.tick":
            return None
        return [{"userId": event.data["userId"], "type": "ticker_tick", "title": "Tick",
                 "message": f"tick {event.data['n']}", "data": {"n": event.data["n"]},
                 "actionUrl": "/ticker"}]

    @hookimpl
    def mojavox_event_sources(self, app):
        async def ticker(emit):
            self.source_running.set()
            try:
                while True:
                    data = await self.queue.get()
                    await emit(Event("ticker.tick", data, id=data.get("eventId")))
            except asyncio.CancelledError:
                self.source_cancelled.set()
                raise
        return [ticker]

    @hookimpl
    def mojavox_startup(self, app):
        self.calls.append(f"startup listening={app.port is not None}")

    @hookimpl
    async def mojavox_shutdown(self, app):
        await asyncio.sleep(0)
        self.calls.append(f"shutdown source_cancelled={self.source_cancelled.is_set()}")


@pytest.mark.timeout(30)
async def test_plugin_event_source_reaches_a_live_socket_through_the_whole_pipeline(start_app):
    ticker = TickerPlugin()
    app = await start_app(plugins=[("ticker", ticker)], discover_plugins=False)
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")

    await ticker.queue.put({"userId": user, "n": 1})
    frame = await socket.expect("notification")
    payload = frame["payload"]
    assert {key: payload[key] for key in ("type", "priority", "title", "message", "data",
                                          "actionUrl", "read")} == {
        "type": "ticker_tick", "priority": "medium", "title": "Tick", "message": "tick 1",
        "data": {"n": 1}, "actionUrl": "/ticker", "read": False}
    assert [n["id"] for n in await notifications_of(app, user)] == [payload["id"]]
    socket.close()


@pytest.mark.timeout(30)
async def test_plugin_event_source_events_with_an_id_are_idempotent_too(start_app):
    ticker = TickerPlugin()
    app = await start_app(plugins=[("ticker", ticker)], discover_plugins=False)
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    for n in (1, 1, 2):
        await ticker.queue.put({"userId": user, "n": n, "eventId": f"{user}-tick-{n}"})
    assert (await socket.expect("notification"))["payload"]["message"] == "tick 1"
    assert (await socket.expect("notification"))["payload"]["message"] == "tick 2"
    assert [n["message"] for n in await notifications_of(app, user)] == ["tick 2", "tick 1"]
    socket.close()


@pytest.mark.timeout(30)
async def test_startup_runs_before_listening_and_shutdown_after_sources_are_cancelled(start_app):
    ticker = TickerPlugin()
    app = await start_app(plugins=[("ticker", ticker)], discover_plugins=False)
    assert ticker.calls == ["startup listening=False"]
    await asyncio.wait_for(ticker.source_running.wait(), 5)
    await app.stop()
    assert ticker.calls == ["startup listening=False", "shutdown source_cancelled=True"]


class Recorder:
    """Lifecycle and observer hooks, sync or async, recording what they were called with."""

    def __init__(self, name: str):
        self.name = name
        self.seen: list[tuple] = []


def sync_recorder() -> Recorder:
    recorder = Recorder("sync")

    class Plugin:
        @hookimpl
        def mojavox_startup(self, app):
            recorder.seen.append(("startup", app))

        @hookimpl
        def mojavox_shutdown(self, app):
            recorder.seen.append(("shutdown", app))

        @hookimpl
        def mojavox_notification_created(self, notification, user_id):
            recorder.seen.append(("created", user_id, notification))

    recorder.plugin = Plugin()
    return recorder


def async_recorder() -> Recorder:
    recorder = Recorder("async")

    class Plugin:
        @hookimpl
        async def mojavox_startup(self, app):
            await asyncio.sleep(0.01)
            recorder.seen.append(("startup", app))

        @hookimpl
        async def mojavox_shutdown(self, app):
            await asyncio.sleep(0.01)
            recorder.seen.append(("shutdown", app))

        @hookimpl
        async def mojavox_notification_created(self, user_id, notification):
            await asyncio.sleep(0.01)
            recorder.seen.append(("created", user_id, notification))

    recorder.plugin = Plugin()
    return recorder


@pytest.mark.timeout(30)
async def test_startup_and_shutdown_hooks_are_called_once_sync_and_async(start_app):
    recorders = [sync_recorder(), async_recorder()]
    app = await start_app(plugins=[(r.name, r.plugin) for r in recorders], discover_plugins=False)
    for recorder in recorders:
        assert recorder.seen == [("startup", app)], recorder.name
    await app.stop()
    for recorder in recorders:
        assert recorder.seen == [("startup", app), ("shutdown", app)], recorder.name


@pytest.mark.timeout(30)
async def test_notification_created_observers_get_each_payload_and_its_recipient(start_app):
    recorders = [sync_recorder(), async_recorder()]
    app = await start_app(plugins=[(r.name, r.plugin) for r in recorders])
    users = [new_user("ops"), new_user("ops")]
    status, body = await post_event(app, "system.alert", {
        "userIds": users, "severity": "warning", "message": "Queue backlog"})
    assert status == 202, body
    for recorder in recorders:
        created = [entry for entry in recorder.seen if entry[0] == "created"]
        assert [(user, n["id"]) for _, user, n in created] == list(zip(users, body["notifications"]))
        stored = {n["id"]: n for user in users for n in await notifications_of(app, user)}
        for _, _, notification in created:
            assert notification == stored[notification["id"]]


@pytest.mark.timeout(30)
async def test_failing_observer_does_not_undo_or_fail_the_notification(start_app):
    class Broken:
        @hookimpl
        def mojavox_notification_created(self, notification, user_id):
            raise RuntimeError("observer bug")

    app = await start_app(plugins=[("broken_observer", Broken())])
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    status, body = await post_event(app, "payment.received", payment(user))
    assert status == 202, body
    assert (await socket.expect("notification"))["payload"]["id"] == body["notifications"][0]
    assert [n["id"] for n in await notifications_of(app, user)] == body["notifications"]
    socket.close()


@pytest.mark.timeout(30)
async def test_event_source_that_fails_stops_alone_and_the_server_keeps_serving(start_app):
    class Failing:
        @hookimpl
        def mojavox_event_sources(self, app):
            async def broken(emit):
                raise RuntimeError("cannot reach the dialer")
            return [broken]

    app = await start_app(plugins=[("failing_source", Failing())])
    await asyncio.sleep(0.05)
    user = new_user()
    status, body = await post_event(app, "payment.received", payment(user))
    assert status == 202, body


@pytest.mark.timeout(30)
async def test_drafts_sharing_their_fields_are_checked_as_thoroughly_as_others(start_app):
    """An event's drafts that differ only in userId (their other fields the same objects) get
    only their recipient checked again; the result and every refusal are those of a full check."""
    app = await start_app()
    shared = {"type": "system_alert", "title": "<b>Dialer</b> down", "message": "m",
              "priority": "high", "data": {"severity": "error"}, "actionUrl": "/system-status"}
    users = [new_user() for _ in range(3)]
    drafts = app.service.validate([{"userId": user, **shared} for user in users])
    one_by_one = [app.service.validate([{"userId": user, **shared}])[0] for user in users]
    assert drafts == one_by_one and [draft.user_id for draft in drafts] == users
    assert drafts[2].title == "Dialer down"
    for bad_user in (" padded ", 42, "x" * 129, "a\nb", ""):
        with pytest.raises(ValidationError) as shared_refusal:
            app.service.validate([{"userId": users[0], **shared}, {"userId": bad_user, **shared}])
        with pytest.raises(ValidationError) as alone_refusal:
            app.service.validate([{"userId": bad_user, **shared}])
        assert (shared_refusal.value.field, shared_refusal.value.message) == \
            (alone_refusal.value.field, alone_refusal.value.message) == \
            ("userId", alone_refusal.value.message), bad_user
    for changed in ({"title": "<b></b>"}, {"data": {"$x": 1}}, {"colour": "red"}):
        with pytest.raises(ValidationError):  # another object in any field: checked in full
            app.service.validate([{"userId": users[0], **shared}, {"userId": users[1], **shared, **changed}])
    without_user = dict(shared)
    with pytest.raises(ValidationError) as missing:
        app.service.validate([{"userId": users[0], **shared}, without_user])
    assert missing.value.field == "userId"
