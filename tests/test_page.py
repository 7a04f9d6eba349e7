"""The page's files as served (headers, the client's one source) and `serve`'s ready link.
(The page itself is exercised in a real browser in test_browser.py.)"""

from __future__ import annotations

import re

import pytest

from mojavox_notify.handlers.web import STATIC_DIR

from .support.paths import ROOT
from .support.servers import ServeProcess
from .support.tokens import TEST_SECRET


async def test_the_page_is_served_at_the_root_with_a_strict_content_security_policy(start_app):
    app = await start_app()
    status, body = await app.api.get("/")
    assert status == 200 and "<title>MOJAVOX Notify</title>" in body
    headers = app.api.last_headers
    assert headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"

    status, worker = await app.api.get("/sw.js")
    assert status == 200 and "showNotification" in worker
    assert app.api.last_headers["Service-Worker-Allowed"] == "/"
    assert app.api.last_headers["Content-Type"].startswith(("application/javascript", "text/javascript"))


async def test_the_page_is_told_where_the_socket_is(start_app):
    app = await start_app(**{"server.ws_path": "/live/notifications",
                             "web.action_base_url": "https://app.mojavox.ai"})
    status, body = await app.api.get("/config.json")
    assert (status, body) == (200, {"wsPath": "/live/notifications",
                                    "actionBaseUrl": "https://app.mojavox.ai"})


async def test_the_page_imports_the_client_of_clients_js(start_app):
    app = await start_app()
    status, served = await app.api.get("/client/mojavox-notify.js")
    assert status == 200
    assert served == (ROOT / "clients" / "js" / "mojavox-notify.js").read_text(encoding="utf-8")
    status, body = await app.api.get("/client/../settings.yaml")
    assert status == 404


def test_the_packaged_client_is_the_one_of_clients_js():
    source = (ROOT / "clients" / "js" / "mojavox-notify.js").read_bytes()
    packaged = (STATIC_DIR / "mojavox-notify.js").read_bytes()
    assert packaged == source, ("the page's copy of the client differs from clients/js: "
                                "cp clients/js/mojavox-notify.js mojavox_notify/static/")


async def test_the_page_can_be_turned_off(start_app):
    app = await start_app(**{"web.page": False})
    status, body = await app.api.get("/")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_serve_prints_a_ready_link_with_a_development_token(tmp_path):
    server = ServeProcess(tmp_path, secret=None).start()
    try:
        link = re.search(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", server.log_text())
        assert link, server.log_text()
        assert link.group(1) == server.url
        status, body = server.call("GET", "/api/notifications", link.group(2))
        assert status == 200, body
        assert "for supervisor" in server.log_text()
    finally:
        server.stop()


def test_serve_prints_no_token_when_a_real_secret_is_configured(tmp_path):
    server = ServeProcess(tmp_path, secret=TEST_SECRET).start()
    try:
        assert "#token=" not in server.log_text()
    finally:
        server.stop()


def test_web_settings_are_validated():
    from mojavox_notify.settings import SettingsError, load_settings

    for key, value in (("web.demo_user", " "), ("web.cors_max_age_seconds", 90000), ("web.page", "sometimes"), ("web.action_base_url", "ftp://x")):
        with pytest.raises(SettingsError) as error:
            load_settings(None, environ={}, overrides={key: value})
        assert error.value.key == key
