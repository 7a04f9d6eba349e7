"""The REST API: every endpoint, its error cases, user isolation, sanitizing, channel settings."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from mojavox_notify.push import new_vapid_pair

from .support.engines import both_engines
from .support.tokens import new_user, token

BASE = "/api/notifications"
PAYLOAD_KEYS = {"id", "type", "title", "message", "timestamp", "priority", "read", "data", "actionUrl"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SEVEN_TYPES = {"payment_received", "call_completed", "call_escalation", "high_value_call",
               "agent_alert", "campaign_milestone", "system_alert"}
SUBSCRIPTION = {"endpoint": "https://push.example.com/send/abc123",
                "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
                         "auth": "tBHItJI5svbpez7KI4CCXg"}}


def service_token() -> str:
    return token(new_user("svc"), ["service"])


def draft(user: str, **fields) -> dict:
    return {"userId": user, "type": "payment_received", "title": "Payment Received",
            "message": "John Smith paid $2,450.00", **fields}


def assert_error(body, status: int, expected_status: int, code: str | None = None) -> dict:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def create_invalid(app, **fields) -> str:
    """POST a draft that must be refused with 400; the error message."""
    status, body = await app.api.post(BASE, service_token(), draft(new_user(), **fields))
    return assert_error(body, status, 400)["message"]


# -- GET /api/notifications ----------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_list_pages_newest_first_with_totals(start_app):
    app = await start_app()
    user = new_user()
    created = [await app.api.notify(user, title=f"n{i}") for i in range(3)]
    auth = token(user)

    status, page = await app.api.get(f"{BASE}?limit=2", auth)
    assert status == 200
    assert set(page) == {"notifications", "total", "unreadCount", "hasMore"}
    assert [n["id"] for n in page["notifications"]] == [created[2]["id"], created[1]["id"]]
    assert page["total"] == 3 and page["unreadCount"] == 3 and page["hasMore"] is True

    status, page = await app.api.get(f"{BASE}?limit=2&offset=2", auth)
    assert [n["id"] for n in page["notifications"]] == [created[0]["id"]]
    assert page["total"] == 3 and page["hasMore"] is False

    status, page = await app.api.get(f"{BASE}?offset=10", auth)
    assert status == 200 and page["notifications"] == [] and page["hasMore"] is False


@pytest.mark.timeout(30)
async def test_list_default_limit_is_50(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    for i in range(51):
        await app.api.notify(user, title=f"n{i}")
    status, page = await app.api.get(BASE, token(user))
    assert len(page["notifications"]) == 50 and page["total"] == 51 and page["hasMore"] is True


@pytest.mark.timeout(30)
async def test_list_unread_only_leaves_out_read_notifications(start_app):
    app = await start_app()
    user = new_user()
    first = await app.api.notify(user)
    second = await app.api.notify(user)
    auth = token(user)
    await app.api.post(f"{BASE}/{first['id']}/read", auth)

    status, page = await app.api.get(f"{BASE}?unreadOnly=true", auth)
    assert [n["id"] for n in page["notifications"]] == [second["id"]]
    assert page["total"] == 1 and page["unreadCount"] == 1

    status, page = await app.api.get(f"{BASE}?unreadOnly=false", auth)
    assert page["total"] == 2 and page["unreadCount"] == 1
    assert {n["id"]: n["read"] for n in page["notifications"]} == {first["id"]: True, second["id"]: False}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("query, name", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("limit=1.5", "limit"),
    ("offset=-1", "offset"), ("offset=x", "offset"), ("unreadOnly=maybe", "unreadOnly"),
])
async def test_list_bad_query_parameter_is_400_naming_it(start_app, query, name):
    app = await start_app()
    status, body = await app.api.get(f"{BASE}?{query}", token(new_user()))
    message = assert_error(body, status, 400, "invalid_request")["message"]
    assert message.startswith(name), message


@pytest.mark.timeout(30)
async def test_notification_payload_has_exactly_the_design_fields(start_app):
    app = await start_app()
    user = new_user()
    created = await app.api.notify(user, data={"amount": 2450}, actionUrl="/payment-history")
    assert set(created) == PAYLOAD_KEYS
    assert TIMESTAMP.match(created["timestamp"]), created["timestamp"]
    assert created["type"] == "payment_received"
    assert created["priority"] == "high", "the default priority comes from the type"
    assert created["read"] is False
    assert created["data"] == {"amount": 2450}
    assert created["actionUrl"] == "/payment-history"
    assert re.fullmatch(r"[0-9a-f]{24}", created["id"])

    status, page = await app.api.get(BASE, token(user))
    assert page["notifications"] == [created]


@pytest.mark.timeout(30)
async def test_expired_notification_is_not_listed(start_app):
    app = await start_app()
    user = new_user()
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    await app.api.notify(user, expiresAt=soon)
    kept = await app.api.notify(user)
    status, page = await app.api.get(BASE, token(user))
    assert page["total"] == 2
    await asyncio.sleep(1.2)
    status, page = await app.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [kept["id"]]
    assert page["total"] == 1 and page["unreadCount"] == 1


# -- POST /api/notifications ---------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_create_returns_201_with_the_notification(start_app):
    app = await start_app()
    user = new_user()
    status, body = await app.api.post(BASE, service_token(), draft(user, priority="low"))
    assert status == 201
    assert body["priority"] == "low" and body["title"] == "Payment Received"
    status, page = await app.api.get(BASE, token(user))
    assert page["notifications"] == [body]


@pytest.mark.timeout(30)
async def test_create_accepts_every_registered_type(start_app):
    app = await start_app()
    user = new_user()
    for type_name in sorted(SEVEN_TYPES):
        await app.api.notify(user, type=type_name)
    status, page = await app.api.get(BASE, token(user))
    assert {n["type"] for n in page["notifications"]} == SEVEN_TYPES


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fields, name", [
    ({"userId": None}, "userId"),
    ({"userId": ""}, "userId"),
    ({"userId": "u" * 129}, "userId"),
    ({"userId": " padded "}, "userId"),
    ({"userId": 42}, "userId"),
    ({"type": "made_up"}, "type"),
    ({"type": None}, "type"),
    ({"title": "t" * 256}, "title"),
    ({"title": None}, "title"),
    ({"title": "<b></b>"}, "title"),
    ({"message": "m" * 2001}, "message"),
    ({"message": ["not", "text"]}, "message"),
    ({"priority": "urgent"}, "priority"),
    ({"data": ["a", "list"]}, "data"),
    ({"data": "text"}, "data"),
    ({"data": {"blob": "x" * (16 * 1024)}}, "data"),
    ({"data": {"$where": "1"}}, "data.$where"),
    ({"expiresAt": "tomorrow"}, "expiresAt"),
    ({"expiresAt": "2001-01-01T00:00:00Z"}, "expiresAt"),
    ({"colour": "red"}, "colour"),
])
async def test_create_refuses_an_invalid_field_naming_it(start_app, fields, name):
    app = await start_app()
    message = await create_invalid(app, **fields)
    assert message.startswith(f"{name}:"), message


@pytest.mark.timeout(30)
async def test_create_accepts_the_largest_allowed_sizes(start_app):
    app = await start_app()
    user = new_user()
    status, body = await app.api.post(BASE, service_token(), draft(
        user, userId=user, title="t" * 255, message="m" * 2000, data={"blob": "x" * (16 * 1024 - 20)}))
    assert status == 201, body
    assert len(body["title"]) == 255 and len(body["message"]) == 2000


@pytest.mark.timeout(30)
async def test_create_refuses_a_body_that_is_not_an_object(start_app):
    app = await start_app()
    status, body = await app.api.post(BASE, service_token(), ["a", "list"])
    assert assert_error(body, status, 400)["message"].startswith("body")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["/dashboard", "/live-monitor?call=c-1", "/a/b#c"])
async def test_relative_action_url_is_accepted(start_app, url):
    app = await start_app()
    status, body = await app.api.post(BASE, service_token(), draft(new_user(), actionUrl=url))
    assert status == 201 and body["actionUrl"] == url


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", [
    "//evil.com/path", "/\\evil.com", "https://evil.com/x", "http://app.mojavox.ai/x",
    "javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "dashboard",
    "/with space", "/tab\there", "",
])
async def test_unsafe_action_url_is_refused(start_app, url):
    app = await start_app()
    message = await create_invalid(app, actionUrl=url)
    assert message.startswith("actionUrl:"), message


@pytest.mark.timeout(30)
async def test_absolute_action_url_is_accepted_only_on_an_allowlisted_host(start_app):
    app = await start_app(**{"server.action_url_hosts": ["app.mojavox.ai"]})
    allowed = "https://app.mojavox.ai/payments/123"
    status, body = await app.api.post(BASE, service_token(), draft(new_user(), actionUrl=allowed))
    assert status == 201 and body["actionUrl"] == allowed
    for refused in ("https://evil.com/payments", "https://app.mojavox.ai.evil.com/x",
                    "https://evil.com\\@app.mojavox.ai/", "ftp://app.mojavox.ai/x", "//app.mojavox.ai/x"):
        message = await create_invalid(app, actionUrl=refused)
        assert message.startswith("actionUrl:"), (refused, message)


@pytest.mark.timeout(30)
async def test_expires_at_in_the_future_is_accepted(start_app):
    app = await start_app()
    user = new_user()
    later = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _ = await app.api.post(BASE, service_token(), draft(user, expiresAt=later))
    assert status == 201
    status, page = await app.api.get(BASE, token(user))
    assert page["total"] == 1


@pytest.mark.timeout(30)
async def test_creations_over_the_rate_limit_get_429_but_critical_ones_do_not(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 2})
    user = new_user()
    for _ in range(2):
        await app.api.notify(user)
    status, body = await app.api.post(BASE, service_token(), draft(user))
    assert_error(body, status, 429, "rate_limited")
    status, _ = await app.api.post(BASE, service_token(), draft(user, priority="critical"))
    assert status == 201
    status, _ = await app.api.post(BASE, service_token(), draft(new_user()))
    assert status == 201, "the limit is per recipient"


@pytest.mark.timeout(30)
async def test_requests_over_the_per_user_limit_get_429_with_retry_after(start_app):
    app = await start_app(**{"rate_limits.requests_per_minute": 3})
    auth = token(new_user())
    for _ in range(3):
        status, _ = await app.api.get(f"{BASE}/unread-count", auth)
        assert status == 200
    response = await app.api.client.fetch(
        app.api.base_url + f"{BASE}/unread-count", headers={"Authorization": f"Bearer {auth}"},
        raise_error=False)
    assert response.code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert_error(json.loads(response.body), 429, 429, "rate_limited")
    status, _ = await app.api.get(f"{BASE}/unread-count", token(new_user()))
    assert status == 200, "the limit is per user"


# -- sanitizing ----------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_markup_is_stripped_from_title_and_message(start_app):
    app = await start_app()
    user = new_user()
    created = await app.api.notify(
        user,
        title="<script>alert('x')</script>Payment <b>received</b>",
        message='<img src=x onerror="alert(1)">Paid <a href="javascript:alert(1)">now</a>'
                "<style>body{display:none}</style>")
    assert created["title"] == "Payment received"
    assert created["message"] == "Paid now"
    status, page = await app.api.get(BASE, token(user))
    assert page["notifications"][0]["title"] == "Payment received"
    assert page["notifications"][0]["message"] == "Paid now"


@pytest.mark.timeout(30)
async def test_entity_escaped_markup_is_removed_too(start_app):
    app = await start_app()
    created = await app.api.notify(
        new_user(),
        title="&lt;script&gt;alert(1)&lt;/script&gt;Escalation",
        message="&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;Call waiting")
    assert created["title"] == "Escalation"
    assert created["message"] == "Call waiting"
    assert "script" not in created["title"] + created["message"]


@pytest.mark.timeout(30)
async def test_plain_text_with_ampersands_and_comparisons_stays_as_written(start_app):
    app = await start_app()
    created = await app.api.notify(new_user(), title="Tom & Jerry", message="balance < 100 & > 5")
    assert created["title"] == "Tom & Jerry"
    assert created["message"] == "balance < 100 & > 5"


@pytest.mark.timeout(30)
async def test_data_is_stored_as_given_and_not_sanitized(start_app):
    app = await start_app()
    data = {"note": "<b>raw</b>", "nested": {"list": [1, 2.5, True, None, "x"]}}
    created = await app.api.notify(new_user(), data=data)
    assert created["data"] == data


# -- mark read, read-all, delete -----------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_mark_read_marks_one_and_lowers_the_unread_count(start_app):
    app = await start_app()
    user = new_user()
    first = await app.api.notify(user)
    await app.api.notify(user)
    auth = token(user)
    status, body = await app.api.post(f"{BASE}/{first['id']}/read", auth)
    assert (status, body) == (200, {"success": True})
    status, body = await app.api.post(f"{BASE}/{first['id']}/read", auth)
    assert (status, body) == (200, {"success": True}), "marking twice is not an error"
    status, page = await app.api.get(BASE, auth)
    assert page["unreadCount"] == 1
    assert [n["read"] for n in page["notifications"]] == [False, True]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad_id", ["not-an-id", "0" * 24, "zzzzzzzzzzzzzzzzzzzzzzzz", "%24ne"])
async def test_mark_read_of_malformed_or_unknown_id_is_404(start_app, bad_id):
    app = await start_app()
    status, body = await app.api.post(f"{BASE}/{bad_id}/read", token(new_user()))
    assert_error(body, status, 404, "not_found")


@pytest.mark.timeout(30)
async def test_read_all_marks_every_one_of_the_users_notifications(start_app):
    app = await start_app()
    user, other = new_user(), new_user()
    for _ in range(3):
        await app.api.notify(user)
    await app.api.notify(other)
    status, body = await app.api.post(f"{BASE}/read-all", token(user))
    assert (status, body) == (200, {"success": True})
    status, page = await app.api.get(BASE, token(user))
    assert page["unreadCount"] == 0 and all(n["read"] for n in page["notifications"])
    status, page = await app.api.get(BASE, token(other))
    assert page["unreadCount"] == 1, "another user's notifications stay unread"
    status, body = await app.api.post(f"{BASE}/read-all", token(user))
    assert (status, body) == (200, {"success": True}), "nothing left to mark is not an error"


@pytest.mark.timeout(30)
async def test_delete_removes_the_notification(start_app):
    app = await start_app()
    user = new_user()
    gone = await app.api.notify(user)
    kept = await app.api.notify(user)
    auth = token(user)
    status, body = await app.api.delete(f"{BASE}/{gone['id']}", auth)
    assert (status, body) == (200, {"success": True})
    status, page = await app.api.get(BASE, auth)
    assert [n["id"] for n in page["notifications"]] == [kept["id"]]
    status, body = await app.api.delete(f"{BASE}/{gone['id']}", auth)
    assert_error(body, status, 404, "not_found")
    status, body = await app.api.delete(f"{BASE}/not-an-id", auth)
    assert_error(body, status, 404, "not_found")


# -- user isolation ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_another_users_notification_cannot_be_read_or_deleted(start_app):
    app = await start_app()
    owner, intruder = new_user("owner"), new_user("intruder")
    theirs = await app.api.notify(owner)
    status, body = await app.api.post(f"{BASE}/{theirs['id']}/read", token(intruder))
    assert_error(body, status, 404, "not_found")
    status, body = await app.api.delete(f"{BASE}/{theirs['id']}", token(intruder))
    assert_error(body, status, 404, "not_found")
    status, page = await app.api.get(BASE, token(owner))
    assert [(n["id"], n["read"]) for n in page["notifications"]] == [(theirs["id"], False)]


@pytest.mark.timeout(30)
async def test_lists_and_counts_never_include_other_users_notifications(start_app):
    app = await start_app()
    alice, bob = new_user("alice"), new_user("bob")
    alices = {(await app.api.notify(alice))["id"] for _ in range(2)}
    bobs = {(await app.api.notify(bob))["id"] for _ in range(3)}
    status, page = await app.api.get(BASE, token(alice))
    assert {n["id"] for n in page["notifications"]} == alices
    assert page["total"] == 2 and page["unreadCount"] == 2
    status, page = await app.api.get(f"{BASE}?unreadOnly=true", token(bob))
    assert {n["id"] for n in page["notifications"]} == bobs
    status, count = await app.api.get(f"{BASE}/unread-count", token(alice))
    assert count["count"] == 2
    status, page = await app.api.get(BASE, token(new_user()))
    assert page["notifications"] == [] and page["total"] == 0


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_settings_default_to_every_type_enabled_and_high_and_critical_ones_pushed(start_app):
    app = await start_app()
    status, body = await app.api.get(f"{BASE}/settings", token(new_user()))
    assert status == 200
    assert set(body) == {"channels"}
    assert set(body["channels"]) == SEVEN_TYPES
    assert all(value["enabled"] is True for value in body["channels"].values())
    pushed = {name for name, value in body["channels"].items() if value["push"]}
    assert pushed == {"payment_received", "call_escalation", "high_value_call", "agent_alert"}


@pytest.mark.timeout(30)
async def test_push_defaults_follow_push_default_priorities(start_app):
    app = await start_app(**{"push.default_priorities": ["critical"]})
    status, body = await app.api.get(f"{BASE}/settings", token(new_user()))
    assert {name for name, value in body["channels"].items() if value["push"]} == {"call_escalation"}


@pytest.mark.timeout(30)
async def test_settings_update_changes_only_the_given_fields(start_app):
    app = await start_app()
    auth = token(new_user())
    status, body = await app.api.put(f"{BASE}/settings", auth,
                                     {"channels": {"call_completed": {"push": False}}})
    assert status == 200
    assert body["channels"]["call_completed"] == {"enabled": True, "push": False}
    status, body = await app.api.put(f"{BASE}/settings", auth,
                                     {"channels": {"call_completed": {"enabled": False}}})
    assert body["channels"]["call_completed"] == {"enabled": False, "push": False}
    assert body["channels"]["payment_received"] == {"enabled": True, "push": True}
    status, again = await app.api.get(f"{BASE}/settings", auth)
    assert again == body


@pytest.mark.timeout(30)
@pytest.mark.parametrize("update, name", [
    ({"channels": {"made_up": {"enabled": False}}}, "channels.made_up"),
    ({"channels": {"call_completed": {"enabled": "no"}}}, "channels.call_completed.enabled"),
    ({"channels": {"call_completed": {"loud": True}}}, "channels.call_completed.loud"),
    ({"channels": {"call_completed": False}}, "channels.call_completed"),
    ({"channels": ["call_completed"]}, "channels"),
    ({"mute": True}, "mute"),
    (["channels"], "body"),
])
async def test_settings_update_refuses_bad_input_naming_the_field(start_app, update, name):
    app = await start_app()
    status, body = await app.api.put(f"{BASE}/settings", token(new_user()), update)
    message = assert_error(body, status, 400)["message"]
    assert message.startswith(f"{name}:"), message


@pytest.mark.timeout(30)
async def test_disabled_type_is_not_created_but_critical_priority_always_is(start_app):
    app = await start_app()
    user, other = new_user(), new_user()
    await app.api.put(f"{BASE}/settings", token(user), {"channels": {"payment_received": {"enabled": False}}})

    status, body = await app.api.post(BASE, service_token(), draft(user))
    assert (status, body) == (202, {"notification": None, "muted": True})
    status, page = await app.api.get(BASE, token(user))
    assert page["total"] == 0

    status, critical = await app.api.post(BASE, service_token(), draft(user, priority="critical"))
    assert status == 201
    status, _ = await app.api.post(BASE, service_token(), draft(user, type="call_completed"))
    assert status == 201, "other types are not muted"
    status, page = await app.api.get(BASE, token(user))
    assert critical["id"] in {n["id"] for n in page["notifications"]} and page["total"] == 2

    status, _ = await app.api.post(BASE, service_token(), draft(other))
    assert status == 201, "one user's settings do not mute another's"


@pytest.mark.timeout(30)
async def test_reenabled_type_is_created_again(start_app):
    app = await start_app()
    user = new_user()
    auth = token(user)
    await app.api.put(f"{BASE}/settings", auth, {"channels": {"agent_alert": {"enabled": False}}})
    status, _ = await app.api.post(BASE, service_token(), draft(user, type="agent_alert"))
    assert status == 202
    await app.api.put(f"{BASE}/settings", auth, {"channels": {"agent_alert": {"enabled": True}}})
    status, _ = await app.api.post(BASE, service_token(), draft(user, type="agent_alert"))
    assert status == 201


# -- push subscription ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_push_subscription_is_saved_and_removed(start_app):
    app = await start_app()
    user = new_user()
    subscription = {**SUBSCRIPTION, "endpoint": f"https://push.example.com/send/{user}"}
    status, body = await app.api.post(f"{BASE}/push-subscription", token(user), subscription)
    assert (status, body) == (200, {"success": True})
    stored = await app.store.push_subscriptions_of(user)
    assert [s["endpoint"] for s in stored] == [subscription["endpoint"]]

    status, body = await app.api.post(f"{BASE}/push-subscription", token(user), subscription)
    assert status == 200, "saving the same subscription again is not an error"
    assert len(await app.store.push_subscriptions_of(user)) == 1

    endpoint_only = {"endpoint": subscription["endpoint"]}
    status, body = await app.api.delete(f"{BASE}/push-subscription", token(new_user()), endpoint_only)
    assert_error(body, status, 404, "not_found")
    status, body = await app.api.delete(f"{BASE}/push-subscription", token(user), endpoint_only)
    assert (status, body) == (200, {"success": True})
    assert await app.store.push_subscriptions_of(user) == []
    status, body = await app.api.delete(f"{BASE}/push-subscription", token(user), endpoint_only)
    assert_error(body, status, 404, "not_found")


@pytest.mark.timeout(30)
@both_engines
async def test_another_users_push_endpoint_is_refused_and_stays_with_its_owner(start_app):
    app = await start_app()
    owner, other = new_user("owner"), new_user("other")
    subscription = {**SUBSCRIPTION, "endpoint": f"https://push.example.com/send/{owner}"}
    status, body = await app.api.post(f"{BASE}/push-subscription", token(owner), subscription)
    assert status == 200, body

    taken = {**subscription, "keys": {**SUBSCRIPTION["keys"], "auth": "b3RoZXItYXV0aC1zZWNyZXQ"}}
    status, body = await app.api.post(f"{BASE}/push-subscription", token(other), taken)
    assert "endpoint" in assert_error(body, status, 409, "push_subscription_taken")["message"]
    assert await app.store.push_subscriptions_of(other) == []
    [kept] = await app.store.push_subscriptions_of(owner)
    assert (kept["endpoint"], kept["keys"]) == (subscription["endpoint"], SUBSCRIPTION["keys"])
    status, body = await app.api.delete(f"{BASE}/push-subscription", token(other),
                                        {"endpoint": subscription["endpoint"]})
    assert_error(body, status, 404, "not_found")

    status, body = await app.api.post(f"{BASE}/push-subscription", token(owner), taken)
    assert status == 200, "the owner may renew its keys"
    [renewed] = await app.store.push_subscriptions_of(owner)
    assert renewed["keys"] == taken["keys"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("subscription, name", [
    ({"endpoint": "not a url", "keys": SUBSCRIPTION["keys"]}, "endpoint"),
    ({"endpoint": "ftp://push.example.com/x", "keys": SUBSCRIPTION["keys"]}, "endpoint"),
    ({"keys": SUBSCRIPTION["keys"]}, "endpoint"),
    ({"endpoint": SUBSCRIPTION["endpoint"]}, "keys"),
    ({"endpoint": SUBSCRIPTION["endpoint"], "keys": {"auth": "abc"}}, "keys.p256dh"),
    ({"endpoint": SUBSCRIPTION["endpoint"], "keys": {"p256dh": "abc", "auth": "not base64!"}}, "keys.auth"),
])
async def test_invalid_push_subscription_is_refused_naming_the_field(start_app, subscription, name):
    app = await start_app()
    status, body = await app.api.post(f"{BASE}/push-subscription", token(new_user()), subscription)
    message = assert_error(body, status, 400)["message"]
    assert message.startswith(f"{name}:"), message


@pytest.mark.timeout(30)
async def test_removing_a_push_subscription_needs_its_endpoint(start_app):
    app = await start_app()
    status, body = await app.api.delete(f"{BASE}/push-subscription", token(new_user()), {})
    assert assert_error(body, status, 400)["message"].startswith("endpoint")


# -- unread count, vapid key, health -------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_unread_count_counts_by_priority(start_app):
    app = await start_app()
    user = new_user()
    auth = token(user)
    status, body = await app.api.get(f"{BASE}/unread-count", auth)
    assert (status, body) == (200, {"count": 0, "byPriority": {"low": 0, "medium": 0, "high": 0, "critical": 0}})
    await app.api.notify(user, priority="low")
    read = await app.api.notify(user, priority="high")
    await app.api.notify(user, priority="critical")
    await app.api.notify(user, priority="critical")
    await app.api.post(f"{BASE}/{read['id']}/read", auth)
    status, body = await app.api.get(f"{BASE}/unread-count", auth)
    assert body == {"count": 3, "byPriority": {"low": 1, "medium": 0, "high": 0, "critical": 2}}


@pytest.mark.timeout(30)
async def test_vapid_public_key_is_404_json_until_push_is_configured(start_app):
    app = await start_app()
    status, body = await app.api.get(f"{BASE}/vapid-public-key")
    assert_error(body, status, 404, "push_not_configured")


@pytest.mark.timeout(30)
async def test_vapid_public_key_is_served_without_a_token(start_app):
    public, private = new_vapid_pair()
    app = await start_app(**{"push.vapid_public_key": public, "push.vapid_private_key": private})
    status, body = await app.api.get(f"{BASE}/vapid-public-key")
    assert (status, body) == (200, {"publicKey": public})


@pytest.mark.timeout(30)
async def test_healthz_is_200_without_a_token_when_storage_answers(start_app):
    app = await start_app()
    status, body = await app.api.get("/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["storage"]["ok"] is True and body["broker"]["ok"] is True


# -- HTTP-level errors ---------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/nope", "/api", "/api/notifications/abc/def/ghi", "/favicon.ico"])
async def test_unknown_path_is_a_json_404(start_app, path):
    app = await start_app()
    status, body = await app.api.get(path, token(new_user()))
    assert_error(body, status, 404, "not_found")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method, path", [
    ("DELETE", BASE), ("PUT", BASE), ("GET", f"{BASE}/read-all"), ("POST", f"{BASE}/unread-count"),
    ("PATCH", f"{BASE}/settings"), ("POST", "/healthz"),
])
async def test_unsupported_method_is_a_json_405(start_app, method, path):
    app = await start_app()
    status, body = await app.api.call(method, path, token(new_user()), body={})
    assert_error(body, status, 405, "method_not_allowed")


@pytest.mark.timeout(60)
async def test_every_routes_405_names_the_methods_it_answers_in_allow(start_app):
    """RFC 9110: a 405 carries Allow, for a method tornado does not know (TRACE) and for one it
    knows that the route does not implement; OPTIONS where CORS preflights are answered."""
    app = await start_app()
    status, document = await app.api.get("/openapi.json")
    assert status == 200
    caller = token(new_user(), ["service", "admin"])
    for template, operations in document["paths"].items():
        path = re.sub(r"\{[^}]+\}", "0123456789abcdef01234567", template)
        answered = sorted(method.upper() for method in operations)
        expected = set(answered) | ({"OPTIONS"} if path.startswith("/api/") else set())
        for method in ["TRACE", *sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - set(answered))]:
            status, body = await app.api.call(method, path, caller,
                                              body={} if method in ("POST", "PUT", "PATCH") else None)
            assert_error(body, status, 405, "method_not_allowed")
            allow = app.api.last_headers.get("Allow")
            assert allow is not None, f"{method} {path}: a 405 without Allow"
            assert {m.strip() for m in allow.split(",")} == expected, (method, path, allow)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path, allow", [("/", {"GET", "HEAD"}), ("/sw.js", {"GET", "HEAD"}),
                                         ("/ws/notifications", {"GET"})])
async def test_the_page_and_the_socket_name_their_methods_in_a_405(start_app, path, allow):
    app = await start_app()
    for method in ("TRACE", "POST"):
        status, body = await app.api.call(method, path, body={} if method == "POST" else None)
        assert_error(body, status, 405, "method_not_allowed")
        assert {m.strip() for m in app.api.last_headers.get("Allow", "").split(",")} == allow


@pytest.mark.timeout(30)
async def test_body_over_the_limit_is_a_json_413(start_app):
    app = await start_app(**{"server.max_body_bytes": 1024})
    big = draft(new_user(), message="m" * 1500)
    status, body = await app.api.post(BASE, service_token(), big)
    assert_error(body, status, 413, "payload_too_large")
    status, body = await app.api.put(f"{BASE}/settings", token(new_user()), raw_body=b" " * 2048)
    assert_error(body, status, 413, "payload_too_large")


@pytest.mark.timeout(30)
async def test_chunked_body_over_the_limit_is_a_json_413(start_app):
    """Without Content-Length the limit is enforced while the body streams in."""
    app = await start_app(**{"server.max_body_bytes": 1024})
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        chunk = b"x" * 600
        writer.write((f"POST {BASE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {service_token()}\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        for _ in range(3):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 413"), head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        assert_error(body, 413, 413, "payload_too_large")
    finally:
        writer.close()


@pytest.mark.timeout(30)
async def test_body_just_under_the_limit_is_accepted(start_app):
    app = await start_app(**{"server.max_body_bytes": 1024})
    user = new_user()
    small = draft(user)
    small["message"] = "m" * (1000 - len(json.dumps(small)))
    status, _ = await app.api.post(BASE, service_token(), small)
    assert status == 201


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raw", [b"{not json", b"", b"   ", b"\xff\xfe", b'{"userId": "a",}'])
async def test_invalid_json_body_is_a_400(start_app, raw):
    app = await start_app()
    status, body = await app.api.post(BASE, service_token(), raw_body=raw)
    assert assert_error(body, status, 400, "invalid_request")["message"].startswith("body")


@pytest.mark.timeout(30)
async def test_errors_are_json_with_a_json_content_type(start_app):
    app = await start_app()
    response = await app.api.client.fetch(app.api.base_url + "/no/such/page", raise_error=False)
    assert response.code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert b"<html" not in response.body.lower()
