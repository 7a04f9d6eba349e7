"""The React example dashboard (clients/react/example), built by Vite as a team would deploy it,
in Debian's chromium (Playwright, no browser download) against a real `serve` on another
origin: it connects, shows a live notification with the badge by priority, marks it read
and deletes it, with one socket for the page."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import json
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .support import npm
from .support.paths import ROOT
from .support.servers import ServeProcess
from .support.tokens import new_user, token
from .support.waiting import wait_for
from .test_browser import CHROMIUM_ARGS, browser_binary

EXAMPLE = npm.CLIENTS / "react" / "example"
ARTIFACTS = ROOT / "test-artifacts" / "browser"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def log_message(self, *args) -> None:
        pass


class StaticSite:
    """A folder served as a CDN would, on an origin of its own. It is bound at once (port 0: no
    other server of the test can take it) and reads the folder per request, so it can be
    started before the build fills the folder."""

    def __init__(self, folder: Path):
        handler = functools.partial(_Quiet, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site():
    static = StaticSite(EXAMPLE / "dist")
    yield static
    static.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, site):
    process = ServeProcess(tmp_path_factory.mktemp("react-example-serve"), **{
        "server.allowed_origins": [site.origin]}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def built_example(server):
    """`npm run build` of the example (it builds the package first), pointed at the server."""
    npm.installed()
    environment = {**os.environ, "VITE_API_URL": server.url,
                   "VITE_WS_URL": server.url.replace("http://", "ws://") + "/ws/notifications",
                   "VITE_TOKEN": ""}
    result = npm.run(["npm", "run", "build"], cwd=EXAMPLE, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    return EXAMPLE / "dist"


def open_sockets(server) -> int:
    with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
        return json.loads(response.read())["connections"]


def test_example_typechecks():
    result = npm.run([npm.tool("tsc"), "-p", "tsconfig.json"], cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_built_example_in_chromium_shows_live_notifications_badge_and_marks_read(server, built_example, site, request):
    user = new_user("react-example")
    older = server.notify(user, title="Campaign 50%", type="campaign_milestone", priority="medium")
    uncaught: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_binary(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.on("pageerror", lambda error: uncaught.append(str(error)))
        try:
            page.goto(f"{site.origin}/#token={token(user)}")
            expect(page.get_by_test_id("connection")).to_have_text("open", timeout=10_000)
            assert "token" not in page.url, "the token is taken out of the address bar"
            bell = page.locator(".mvx-nc__bell")
            badge = page.locator(".mvx-nc__badge")
            expect(badge).to_have_text("1")
            expect(badge).to_have_attribute("data-priority", "medium")

            live = server.notify(user, type="call_escalation", title="Escalation", priority="critical",
                                 message="agent-7 requests supervisor intervention on call with John Smith")
            expect(badge).to_have_text("2")
            expect(badge).to_have_attribute("data-priority", "critical")
            expect(page.get_by_test_id("unread")).to_have_text("2 unread")
            assert open_sockets(server) == 1, "one socket for the page, StrictMode or not"

            bell.click()
            items = page.locator(".mvx-nc__item")
            expect(items).to_have_count(2)
            expect(items.first.locator(".mvx-nc__item-title")).to_have_text("Escalation")
            items.first.get_by_role("button", name="Mark read").click()
            expect(badge).to_have_text("1")
            expect(badge).to_have_attribute("data-priority", "medium")
            expect(items.first).to_have_attribute("data-read", "true")
            # The badge changed optimistically; the server's copy follows with the answer.
            assert wait_for(lambda: server.call("GET", f"/api/notifications/{live['id']}", token(user))[1]["read"],
                            timeout=5), "the read reached the server"

            page.get_by_role("button", name="Delete Campaign 50%").click()
            expect(items).to_have_count(1)
            expect(badge).to_have_count(0)
            assert wait_for(lambda: server.call("GET", f"/api/notifications/{older['id']}", token(user))[0] == 404,
                            timeout=5), "the deletion reached the server"
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert uncaught == [], uncaught
