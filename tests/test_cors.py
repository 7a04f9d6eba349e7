"""CORS for /api/*: the allow-list is server.allowed_origins; preflights need no token.

(What a real browser does with these headers is pinned in test_browser.py.)"""

from __future__ import annotations

import pytest

from .support.tokens import new_user, token

DASHBOARD = "https://dashboard.mojavox.ai"


async def test_preflight_is_answered_without_a_token_for_an_allowed_origin(start_app):
    app = await start_app(**{"server.allowed_origins": [DASHBOARD], "web.cors_max_age_seconds": 900})
    status, body = await app.api.call("OPTIONS", "/api/notifications/settings", headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204, body
    headers = app.api.last_headers
    assert headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert headers["Access-Control-Allow-Methods"] == "GET, PUT"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert headers["Access-Control-Max-Age"] == "900"
    assert "Origin" in headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in headers


async def test_preflight_lists_the_methods_of_each_endpoint(start_app):
    app = await start_app(**{"server.allowed_origins": [DASHBOARD]})
    expected = {"/api/notifications": "GET, POST", "/api/notifications/read-all": "POST",
                "/api/notifications/0123456789abcdef01234567/read": "POST",
                "/api/notifications/0123456789abcdef01234567": "GET, DELETE",
                "/api/notifications/push-subscription": "POST, DELETE",
                "/api/notifications/unread-count": "GET", "/api/events": "POST"}
    for path, methods in expected.items():
        status, _ = await app.api.call("OPTIONS", path, headers={
            "Origin": DASHBOARD, "Access-Control-Request-Method": "POST"})
        assert (status, app.api.last_headers["Access-Control-Allow-Methods"]) == (204, methods), path


async def test_answers_and_errors_carry_the_allowed_origin(start_app):
    app = await start_app(**{"server.allowed_origins": [DASHBOARD, "http://localhost:5173"]})
    user = new_user()
    status, _ = await app.api.get("/api/notifications/unread-count", token(user),
                                  headers={"Origin": "http://localhost:5173"})
    assert status == 200
    assert app.api.last_headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert app.api.last_headers["Access-Control-Expose-Headers"] == "Retry-After"
    status, body = await app.api.get("/api/notifications", headers={"Origin": DASHBOARD})
    assert status == 401 and body["error"]["code"] == "token_missing"
    assert app.api.last_headers["Access-Control-Allow-Origin"] == DASHBOARD


async def test_an_origin_not_on_the_list_gets_no_cors_headers(start_app):
    app = await start_app(**{"server.allowed_origins": [DASHBOARD]})
    status, body = await app.api.call("OPTIONS", "/api/notifications", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in app.api.last_headers
    status, _ = await app.api.get("/api/notifications", token(new_user()),
                                  headers={"Origin": "https://evil.example"})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in app.api.last_headers


async def test_an_empty_list_allows_no_other_origin_for_rest(start_app):
    app = await start_app()
    status, _ = await app.api.call("OPTIONS", "/api/notifications", headers={
        "Origin": DASHBOARD, "Access-Control-Request-Method": "GET"})
    assert status == 403
    assert "Access-Control-Allow-Origin" not in app.api.last_headers


async def test_cors_is_only_for_the_api(start_app):
    app = await start_app(**{"server.allowed_origins": [DASHBOARD]})
    status, _ = await app.api.get("/healthz", headers={"Origin": DASHBOARD})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in app.api.last_headers


async def test_one_notification_can_be_read_by_its_owner_only(start_app):
    app = await start_app()
    user = new_user()
    created = await app.api.notify(user, title="Payment Received", message="paid")
    status, body = await app.api.get(f"/api/notifications/{created['id']}", token(user))
    assert (status, body) == (200, created)
    status, body = await app.api.get(f"/api/notifications/{created['id']}", token(new_user()))
    assert status == 404 and body["error"]["code"] == "not_found"
