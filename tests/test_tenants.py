"""Two call centers on one deployment share user ids and see nothing of each other: over REST
and the socket, on both engines, whatever ids, offsets or `since` they send; a tenant service
acts inside its tenant only; broadcasts reach their audience."""

from __future__ import annotations

import pytest

from mojavox_notify import tenants
from tests.support.engines import both_engines
from tests.support.sockets import Socket
from tests.support.tokens import token

bounded = pytest.mark.timeout(60)


def user_token(user: str, tenant: str | None) -> str:
    return token(user, **({"tenant": tenant} if tenant else {}))


def service_token(tenant: str | None = None) -> str:
    return token(f"svc-{tenant or 'platform'}", ["service"], **({"tenant": tenant} if tenant else {}))


async def connect(app, user: str, tenant: str | None, **kwargs) -> tuple[Socket, dict]:
    socket = await Socket.open(app, user_token(user, tenant), **kwargs)
    return socket, await socket.expect("connected")


async def create(app, user: str, tenant: str | None, title: str, via: str | None = None, **fields):
    """As a tenant service of `via` (default: `tenant`'s own), or a platform one naming it."""
    draft = {"userId": user, "type": "payment_received", "title": title, "message": "m", **fields}
    if via is None and tenant is None:
        return await app.api.post("/api/notifications", service_token(), draft)
    return await app.api.post("/api/notifications", service_token(via or tenant), draft)


@both_engines
@bounded
async def test_same_user_id_in_two_tenants_two_inboxes_never_crossing(start_app):
    app = await start_app()
    a_socket, a_hello = await connect(app, "alice", "north")
    b_socket, b_hello = await connect(app, "alice", "south")
    default_socket, default_hello = await connect(app, "alice", None)
    assert (a_hello["tenant"], b_hello["tenant"], default_hello["tenant"]) == ("north", "south", "default")

    status, north = await create(app, "alice", "north", "North payment")
    assert status == 201
    status, south = await create(app, "alice", "south", "South payment")
    assert status == 201
    status, platform_north = await app.api.post("/api/notifications", service_token(), {
        "userId": "alice", "tenant": "north", "type": "payment_received", "title": "Platform to north",
        "message": "m"})
    assert status == 201, platform_north

    a_live = [(await a_socket.expect("notification"))["payload"]["id"] for _ in range(2)]
    b_live = (await b_socket.expect("notification"))["payload"]["id"]
    assert a_live == [north["id"], platform_north["id"]] and b_live == south["id"]
    assert [f for f in await b_socket.quiet() if f["type"] == "notification"] == []
    assert [f for f in await default_socket.quiet() if f["type"] == "notification"] == []

    # REST: each sees its own, counts are its own, and the other's ids are not found.
    for tenant, mine, theirs in (("north", {north["id"], platform_north["id"]}, south["id"]),
                                 ("south", {south["id"]}, north["id"])):
        user = user_token("alice", tenant)
        status, page = await app.api.get("/api/notifications?limit=100&offset=0", user)
        assert status == 200 and {n["id"] for n in page["notifications"]} == mine
        assert page["unreadCount"] == len(mine)
        assert (await app.api.get(f"/api/notifications/{theirs}", user))[0] == 404
        assert (await app.api.post(f"/api/notifications/{theirs}/read", user))[0] == 404
        assert (await app.api.delete(f"/api/notifications/{theirs}", user))[0] == 404
    status, page = await app.api.get("/api/notifications", user_token("alice", None))
    assert page["notifications"] == [] and page["unreadCount"] == 0

    # The socket: reads, history and resume of the other tenant's ids find nothing.
    await b_socket.send({"type": "mark_read", "notificationId": north["id"]})
    assert (await b_socket.expect("error"))["code"] == "not_found"
    await b_socket.send({"type": "resume", "since": north["id"]})
    assert (await b_socket.expect("error"))["code"] == "since_not_found"
    await b_socket.send({"type": "get_history", "limit": 100})
    assert [n["id"] for n in (await b_socket.expect("history"))["notifications"]] == [south["id"]]
    late, _ = await connect(app, "alice", "south", since=north["id"])
    assert (await late.expect("error"))["code"] == "since_not_found"
    for socket in (a_socket, b_socket, default_socket, late):
        socket.close()


@both_engines
@bounded
async def test_settings_push_and_presence_are_per_tenant(start_app, push_service):
    app = await start_app(**push_service.settings)
    north, south = user_token("alice", "north"), user_token("alice", "south")
    status, _ = await app.api.put("/api/notifications/settings", north,
                                  {"channels": {"payment_received": {"enabled": False}}})
    assert status == 200
    status, south_settings = await app.api.get("/api/notifications/settings", south)
    assert south_settings["channels"]["payment_received"]["enabled"] is True
    status, muted = await create(app, "alice", "north", "Muted in north")
    assert status == 202 and muted["muted"] is True

    # Each alice's browser gets her own tenant's pushes only; one endpoint is one user's.
    north_browser, south_browser = push_service.subscribe(), push_service.subscribe()
    path = "/api/notifications/push-subscription"
    assert (await app.api.post(path, north, north_browser))[0] == 200
    assert (await app.api.post(path, south, south_browser))[0] == 200
    status, error = await app.api.post(path, south, north_browser)
    assert status == 409 and error["error"]["code"] == "push_subscription_taken"
    status, pushed = await create(app, "alice", "south", "Pushed to south", priority="critical")
    assert status == 201
    assert await push_service.wait_for(lambda: push_service.delivered_to(south_browser))
    assert push_service.delivered_to(north_browser) == []

    # Presence: a socket of north's alice is not south's, nor the default tenant's alice.
    socket, _ = await connect(app, "alice", "north")
    keys = {tenants.key("north", "alice"), tenants.key("south", "alice"), "alice"}
    assert await app.presence.online_many(keys) == {tenants.key("north", "alice")}
    socket.close()


@bounded
async def test_a_tenant_service_acts_inside_its_tenant_only(start_app):
    app = await start_app()
    across = {"userId": "alice", "tenant": "south", "type": "payment_received",
              "title": "Reaching across", "message": "m"}
    status, error = await app.api.post("/api/notifications", service_token("north"), across)
    assert status == 403 and error["error"]["code"] == "tenant_forbidden"
    status, error = await app.api.post("/api/events", service_token("north"), {
        "type": "payment.received", "tenant": "south",
        "data": {"debtorName": "D", "amount": 10, "accountId": "A-1", "userId": "alice"}})
    assert status == 403 and error["error"]["code"] == "tenant_forbidden"
    status, error = await app.api.post("/api/broadcasts", service_token("north"),
                                       {"title": "t", "message": "m", "tenant": "*"})
    assert status == 403 and error["error"]["code"] == "tenant_forbidden"
    status, _ = await app.api.post("/api/notifications", service_token("north"),
                                   {**across, "tenant": "north"})
    assert status == 201
    default_service = token("svc-default", ["service"], tenant="default")
    status, error = await app.api.post("/api/notifications", default_service, across)
    assert status == 403 and error["error"]["code"] == "tenant_forbidden"  # not a platform one
    status, error = await app.api.post("/api/notifications", service_token(), {
        "userId": "alice", "tenant": "not a tenant!", "type": "payment_received", "title": "t",
        "message": "m"})
    assert status == 400 and error["error"]["message"].startswith("tenant:")


@bounded
async def test_event_ids_are_per_tenant(start_app):
    app = await start_app()
    event = {"type": "payment.received", "id": "pay-1",
             "data": {"debtorName": "D", "amount": 10, "accountId": "A-1", "userId": "alice"}}
    north = await app.api.post("/api/events", service_token("north"), event)
    south = await app.api.post("/api/events", service_token("south"), event)
    again = await app.api.post("/api/events", service_token("north"), event)
    assert north[0] == south[0] == again[0] == 202
    assert len(north[1]["notifications"]) == len(south[1]["notifications"]) == 1
    assert north[1]["notifications"] != south[1]["notifications"]
    assert again[1] == north[1]  # a repeat inside north: nothing new


@both_engines
@bounded
async def test_broadcasts_reach_their_audience_only(start_app):
    app = await start_app()
    north, _ = await connect(app, "alice", "north")
    south, _ = await connect(app, "bob", "south")
    status, mine = await app.api.post("/api/broadcasts", service_token("north"),
                                      {"title": "North dialer restarts at 22:00", "message": "m"})
    assert status == 201
    assert (await north.expect("broadcast"))["payload"]["id"] == mine["id"]
    assert [f for f in await south.quiet() if f["type"] == "broadcast"] == []
    status, everyone = await app.api.post("/api/broadcasts", service_token(),
                                          {"title": "Platform maintenance", "message": "m",
                                           "tenant": "*"})
    assert status == 201
    assert (await north.expect("broadcast"))["payload"]["id"] == everyone["id"]
    assert (await south.expect("broadcast"))["payload"]["id"] == everyone["id"]

    async def listed(tenant):
        status, body = await app.api.get("/api/broadcasts", user_token("carol", tenant))
        return [payload["id"] for payload in body["broadcasts"]]

    assert await listed("north") == [everyone["id"], mine["id"]]
    assert await listed("south") == [everyone["id"]]
    # A socket that connects later is shown what is active for its tenant only.
    late_south, _ = await connect(app, "dave", "south")
    shown = [f["payload"]["id"] for f in await late_south.quiet() if f["type"] == "broadcast"]
    assert shown == [everyone["id"]]
    for socket in (north, south, late_south):
        socket.close()


@bounded
async def test_a_tenant_admin_reads_no_metrics_of_every_tenant(start_app):
    app = await start_app()
    status, error = await app.api.get("/metrics", token("ops", ["admin"], tenant="north"))
    assert status == 403 and error["error"]["code"] == "tenant_forbidden"
    assert (await app.api.get("/metrics", token("ops", ["admin"])))[0] == 200


@bounded
async def test_a_token_with_a_malformed_tenant_is_refused(start_app):
    app = await start_app()
    status, error = await app.api.get("/api/notifications", token("alice", tenant="a/b"))
    assert status == 401
    socket = await Socket.open(app, token("alice", tenant="x" * 65))
    assert await socket.closed() == 4002


@bounded
async def test_notifications_created_are_counted_by_tenant_only_when_asked(start_app):
    plain = await start_app()
    labelled = await start_app(**{"metrics.tenant_label": True})
    for app in (plain, labelled):
        status, _ = await create(app, "alice", "north", "Counted")
        assert status == 201
    _, plain_metrics = await plain.api.get("/metrics", token("ops", ["admin"]))
    _, labelled_metrics = await labelled.api.get("/metrics", token("ops", ["admin"]))
    assert 'tenant="north"' not in plain_metrics
    assert ('mojavox_notifications_created_total{priority="high",tenant="north",'
            'type="payment_received"} 1.0') in labelled_metrics
