"""The notification center page and the JavaScript client in a real browser: Debian's chromium
driven by Playwright (no browser download), against a real `serve` process.

One browser for the whole module; each test gets fresh users and its own browser context. When
a test fails, a screenshot of each of its pages is saved under test-artifacts/browser/.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from mojavox_notify.push import new_vapid_pair, push_payload

from .support.paths import ROOT
from .support.ports import free_port
from .support.servers import ServeProcess
from .support.tokens import new_user, token

from playwright.sync_api import Page, expect, sync_playwright

ARTIFACTS = ROOT / "test-artifacts" / "browser"
expect.set_options(timeout=10_000)  # the machine may be busy; a real failure still fails
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVICE = token("browser-test-service", ["service"])
ADMIN = token("browser-test-admin", ["admin"])
VAPID_PUBLIC, VAPID_PRIVATE = new_vapid_pair()
DASHBOARD = "https://app.mojavox.example"  # where relative action URLs lead


def browser_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed; the browser tests need Debian's chromium "
                "(make test installs it: apt-get install chromium)")


# -- a second origin: a static page that calls the API from elsewhere ----------------------------

class OtherOrigin:
    """A plain static web server on another port, serving the client and a blank page: an
    origin other than the API's (http://127.0.0.1:<port>; http://localhost:<port> is yet another)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "clients" / "js" / "mojavox-notify.js", folder / "mojavox-notify.js")
        (folder / "index.html").write_text("<!doctype html><title>dashboard</title><p>other origin</p>")
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.unlisted_origin = f"http://localhost:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def log_message(self, *args) -> None:
        pass


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_origin(tmp_path_factory):
    origin = OtherOrigin(tmp_path_factory.mktemp("other-origin"))
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, other_origin):
    process = ServeProcess(tmp_path_factory.mktemp("serve"), **{
        "server.allowed_origins": [other_origin.origin],
        "server.ws_path": "/live/notifications",  # the page asks the server where its socket is
        "web.action_base_url": DASHBOARD,
        "push.vapid_public_key": VAPID_PUBLIC, "push.vapid_private_key": VAPID_PRIVATE,
    }).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=browser_binary(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser, request):
    """A fresh browser context (its own profile: storage, service workers, permissions)."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(10_000)
    uncaught: list[str] = []
    context.on("page", lambda page: page.on("pageerror", lambda error: uncaught.append(str(error))))
    yield context
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for number, page in enumerate(context.pages):
            path = ARTIFACTS / f"{request.node.name}-{number}.png"
            try:
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot of page {number} ({page.url}): {path}")
            except Exception as error:  # the page may have crashed: keep the test's own failure
                print(f"no screenshot of page {number}: {error}")
    context.close()
    assert uncaught == [], "uncaught errors in the page's scripts"


def open_center(context, server, user: str, token_value: str | None = None) -> Page:
    page = context.new_page()
    page.goto(f"{server.url}/#token={token_value or token(user)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    return page


def items(page: Page):
    return page.locator("#list > li.notification")


def listed_ids(page: Page) -> list[str]:
    return items(page).evaluate_all("nodes => nodes.map(node => node.dataset.id)")


# -- the page --------------------------------------------------------------------------------------

def test_page_shows_history_live_arrivals_badge_counts_and_toasts(context, server):
    user = new_user("page")
    older = server.notify(user, type="campaign_milestone", title="Campaign 50%", priority="medium")
    page = open_center(context, server, user)
    assert "token" not in page.url, "the token is taken out of the address bar"
    expect(items(page)).to_have_count(1)
    expect(page.locator("#badge")).to_have_text("1")
    expect(page.locator("#badge")).to_have_attribute("data-priority", "medium")

    low = server.notify(user, type="call_completed", title="Call completed", priority="low")
    high = server.notify(user, title="Payment Received", message="John Smith paid $2,450.00",
                         priority="high", actionUrl="/payment-history")
    critical = server.notify(user, type="call_escalation", title="Escalation", priority="critical",
                             message="agent-7 requests supervisor intervention",
                             actionUrl="/live-monitor?call=c-1")
    expect(items(page)).to_have_count(4)
    assert listed_ids(page) == [critical["id"], high["id"], low["id"], older["id"]]
    expect(page.locator("#badge")).to_have_text("4")
    expect(page.locator("#badge")).to_have_attribute("data-priority", "critical")
    for priority, count in (("critical", 1), ("high", 1), ("medium", 1), ("low", 1)):
        expect(page.locator(f'#by-priority [data-priority="{priority}"] .count')).to_have_text(str(count))
    assert page.title() == "(4) MOJAVOX Notify"

    first = items(page).first
    expect(first.locator(".title")).to_have_text("Escalation")
    expect(first.locator(".message")).to_have_text("agent-7 requests supervisor intervention")
    expect(first.locator("a.open")).to_have_attribute("href", f"{DASHBOARD}/live-monitor?call=c-1")
    expect(first.locator("a.open")).to_have_attribute("target", "_blank")
    toasts = page.locator("#toasts .toast")
    expect(toasts).to_have_count(2)  # high and critical; not low or the history
    assert toasts.evaluate_all("nodes => nodes.map(node => node.dataset.id)") == [high["id"], critical["id"]]


def test_text_from_the_server_is_shown_as_text_never_as_markup(context, server):
    user = new_user("xss")
    page = open_center(context, server, user)
    markup = '<img src=x onerror="window.__injected = 1"><b>Smith</b>'
    server.notify(user, title="Payment", message="a < b & c > d",
                  data={"debtorName": markup, "accountId": "AC-1"})
    expect(items(page)).to_have_count(1)
    expect(items(page).first.locator(".message")).to_have_text("a < b & c > d")
    expect(items(page).first.locator(".data dd").first).to_have_text(markup)
    assert items(page).first.locator("img, b").count() == 0
    assert page.evaluate("window.__injected") is None


def test_an_announcement_shows_on_open_pages_and_on_pages_opened_while_it_lasts(context, server):
    page = open_center(context, server, new_user("announce"))
    status, sent = server.call("POST", "/api/broadcasts", token("test-service", ["service"]), {
        "title": "Dialer maintenance", "message": "<b>Lines</b> pause at 22:00 UTC",
        "priority": "critical", "actionUrl": "/status", "ttlSeconds": 20})
    assert status == 201, sent
    shown = page.locator(f'#announcements li[data-id="{sent["id"]}"]')
    expect(shown.locator(".title")).to_have_text("Dialer maintenance")
    expect(shown.locator(".message")).to_have_text("Lines pause at 22:00 UTC")
    expect(shown).to_have_attribute("data-priority", "critical")
    expect(shown.locator("a.open")).to_have_attribute("href", f"{DASHBOARD}/status")
    expect(items(page)).to_have_count(0)  # not a notification of the user's

    later = open_center(context, server, new_user("announce"))
    again = later.locator(f'#announcements li[data-id="{sent["id"]}"]')
    expect(again.locator(".title")).to_have_text("Dialer maintenance")
    again.locator("button.dismiss").click()
    expect(again).to_have_count(0)
    expect(shown).to_have_count(1)  # dismissed on that page only

    page.locator("#sign-out").click()  # signed in again, the new connection shows it once
    page.locator("#token-field").fill(token(new_user("announce")))
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator("#announcements li")).to_have_count(1)
    expect(shown.locator(".title")).to_have_text("Dialer maintenance")


def test_history_scrolls_in_pages_each_notification_once(context, server):
    user = new_user("scroll")
    created = [server.notify(user, title=f"n{number}", priority="low") for number in range(65)]
    page = open_center(context, server, user)
    expect(items(page)).to_have_count(30)  # the first page only, until scrolled
    page.wait_for_timeout(200)
    expect(items(page)).to_have_count(30)
    for _ in range(5):
        page.locator("#list-end").scroll_into_view_if_needed()
        if page.locator("#list-end").text_content() == "That is all.":
            break
        page.wait_for_timeout(100)
    expect(page.locator("#list-end")).to_have_text("That is all.")
    assert listed_ids(page) == [n["id"] for n in reversed(created)]


def test_mark_read_in_one_tab_updates_the_other(context, server):
    user = new_user("tabs")
    first, second = open_center(context, server, user), open_center(context, server, user)
    one = server.notify(user, title="one", priority="high", actionUrl="/payment-history")
    two = server.notify(user, type="call_escalation", title="two", priority="critical")
    for page in (first, second):
        expect(items(page)).to_have_count(2)
        expect(page.locator("#badge")).to_have_text("2")

    first.locator(f'li[data-id="{two["id"]}"] button.mark-read').click()
    for page in (first, second):
        expect(page.locator(f'li[data-id="{two["id"]}"]')).not_to_have_class(re.compile(r"\bunread\b"))
        expect(page.locator(f'li[data-id="{one["id"]}"]')).to_have_class(re.compile(r"\bunread\b"))
        expect(page.locator("#badge")).to_have_text("1")
        expect(page.locator("#badge")).to_have_attribute("data-priority", "high")
        expect(page.locator(f'#toasts .toast[data-id="{two["id"]}"]')).to_have_count(0)

    one_link = second.locator(f'li[data-id="{one["id"]}"] a.open')
    with context.expect_page() as opened:
        one_link.click()  # opening a notification's link marks it read
    assert opened.value.url.startswith(f"{DASHBOARD}/payment-history") or opened.value.url.startswith("chrome-error")
    opened.value.close()
    for page in (first, second):
        expect(page.locator(f'li[data-id="{one["id"]}"]')).not_to_have_class(re.compile(r"\bunread\b"))
        expect(page.locator("#badge")).to_be_hidden()

    server.notify(user, title="three", priority="low")
    for page in (first, second):
        expect(page.locator("#badge")).to_have_text("1")
    second.locator("#mark-all").click()
    for page in (first, second):
        expect(page.locator("#badge")).to_be_hidden()
        expect(page.locator("#list > li.unread")).to_have_count(0)
        assert page.title() == "MOJAVOX Notify"


def test_unread_only_filter_and_delete(context, server):
    user = new_user("filter")
    first, second, third = (server.notify(user, title=f"n{n}", priority="medium") for n in range(3))
    server.call("POST", f"/api/notifications/{second['id']}/read", token(user))
    page = open_center(context, server, user)
    expect(items(page)).to_have_count(3)
    page.locator("#unread-only").check()
    expect(items(page)).to_have_count(2)
    assert listed_ids(page) == [third["id"], first["id"]]

    server.call("POST", f"/api/notifications/{first['id']}/read", token(user))  # read elsewhere
    expect(items(page)).to_have_count(1)
    page.locator(f'li[data-id="{third["id"]}"] button.delete').click()
    expect(items(page)).to_have_count(0)
    expect(page.locator("#list-end")).to_have_text("Nothing unread.")
    page.locator("#unread-only").uncheck()
    expect(items(page)).to_have_count(2)
    assert listed_ids(page) == [second["id"], first["id"]]
    status, body = server.call("GET", "/api/notifications", token(user))
    assert [n["id"] for n in body["notifications"]] == [second["id"], first["id"]]


def test_server_killed_and_restarted_the_page_resumes_without_missing_or_repeating(context, server, tmp_path):
    user = new_user("restart")
    before = server.notify(user, title="before", priority="low")
    page = open_center(context, server, user)
    expect(items(page)).to_have_count(1)

    server.kill()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#connection-text")).to_contain_text("retrying")
    # While the page's server is down, another instance on the same storage takes three.
    other = ServeProcess(tmp_path, **{"data_dir": str(server.folder / "data")}).start()
    try:
        missed = [other.notify(user, title=f"missed {n}", priority="high") for n in range(3)]
    finally:
        other.stop()
    server.start()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
    after = server.notify(user, title="after", priority="low")
    expect(items(page)).to_have_count(5)
    page.wait_for_timeout(300)  # nothing more arrives
    expected = [after, *reversed(missed), before]
    assert listed_ids(page) == [n["id"] for n in expected]
    expect(page.locator("#badge")).to_have_text("5")
    expect(page.locator("#toasts .toast")).to_have_count(3)  # the missed high ones, once each


def test_settings_toggles_persist(context, server):
    user = new_user("settings")
    page = open_center(context, server, user)
    page.locator("#settings-toggle").click()
    receive = page.locator('input[data-type="call_completed"][data-field="enabled"]')
    push = page.locator('input[data-type="payment_received"][data-field="push"]')
    expect(receive).to_be_checked()
    expect(push).to_be_checked()
    receive.uncheck()
    expect(receive).to_be_enabled()  # saved and redrawn from the server's answer
    push.uncheck()
    expect(page.locator('input[data-type="payment_received"][data-field="push"]')).to_be_enabled()

    status, stored = server.call("GET", "/api/notifications/settings", token(user))
    assert status == 200
    assert stored["channels"]["call_completed"] == {"enabled": False, "push": False}
    assert stored["channels"]["payment_received"] == {"enabled": True, "push": False}

    page.reload()
    page.locator("#settings-toggle").click()
    expect(page.locator('input[data-type="call_completed"][data-field="enabled"]')).not_to_be_checked()
    expect(page.locator('input[data-type="payment_received"][data-field="push"]')).not_to_be_checked()
    expect(page.locator('input[data-type="agent_alert"][data-field="enabled"]')).to_be_checked()


def test_token_field_signs_in_and_a_refused_token_asks_again(context, server):
    user = new_user("field")
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#signin")).to_be_visible()
    page.locator("#token-field").fill("not-a-token")
    page.locator("#signin-form button").click()
    expect(page.locator("#signin-error")).to_contain_text("refused")
    page.locator("#token-field").fill(token(user))
    page.locator("#signin-form button").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator("#list-end")).to_have_text("No notifications yet.")


def running_service_worker(context, page):
    """Wait until the page's service worker is activated and running: its DevTools session (to
    deliver pushes to it) and its activated versions."""
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    cdp = context.new_cdp_session(page)
    versions = []
    cdp.on("ServiceWorker.workerVersionUpdated", lambda event: versions.extend(event["versions"]))
    cdp.send("ServiceWorker.enable")
    for _ in range(100):
        activated = [v for v in versions if v["status"] == "activated" and v["runningStatus"] == "running"]
        if activated and context.service_workers:
            break
        page.wait_for_timeout(50)
    assert activated and context.service_workers, versions
    return cdp, activated

def test_service_worker_shows_the_push_payload_full_or_minimal(context, server):
    user = new_user("push")
    bearer = token(user)
    context.grant_permissions(["notifications"], origin=server.url)
    page = open_center(context, server, user, bearer)
    expect(page.locator("#push-toggle")).to_be_enabled()  # VAPID configured, push supported
    cdp, activated = running_service_worker(context, page)
    registration_id = activated[-1]["registrationId"]
    # What the worker asks the browser to show, recorded on its way to the real API: headless
    # chromium may take a notification off screen at once unless it requires interaction.
    worker = context.service_workers[0]
    worker.evaluate("""() => {
        const show = self.registration.showNotification.bind(self.registration);
        self.shownForTest = [];
        self.registration.showNotification = (title, options) => {
            self.shownForTest.push({ title, ...options });
            return show(title, options);
        };
    }""")

    def deliver(payload: dict) -> None:
        cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": server.url + "/", "registrationId": registration_id, "data": json.dumps(payload)})

    def shown_when(count: int) -> list[dict]:
        for _ in range(100):
            shown = worker.evaluate("self.shownForTest")
            if len(shown) >= count:
                return shown
            page.wait_for_timeout(50)
        raise AssertionError(f"the service worker showed {shown}, expected {count}")

    deliver({"title": "Payment Received", "body": "John Smith paid $2,450.00", "tag": "mojavox-aaa",
             "icon": "/icon.svg", "data": {"id": "aaa", "type": "payment_received", "priority": "high",
                      "actionUrl": "/payment-history"}})
    [full] = shown_when(1)
    assert full == {"title": "Payment Received", "body": "John Smith paid $2,450.00", "tag": "mojavox-aaa",
                    "icon": "/icon.svg", "data": {"id": "aaa", "type": "payment_received", "priority": "high",
                             "actionUrl": "/payment-history"},
                    "requireInteraction": False, "renotify": False}

    assert page.evaluate(ON_DISK, bearer) == [], "the token is never written to disk"
    stored = server.notify(user, type="call_escalation", title="Escalation", priority="critical",
                           message="agent-7 requests supervisor intervention", actionUrl="/live-monitor?call=c-9")
    deliver({"id": stored["id"], "type": "call_escalation", "priority": "critical"})
    minimal = shown_when(2)[1]
    assert minimal == {"title": "Escalation", "body": "agent-7 requests supervisor intervention",
                       "tag": f"mojavox-{stored['id']}", "icon": None,
                       "data": {"id": stored["id"], "type": "call_escalation", "priority": "critical",
                                "actionUrl": "/live-monitor?call=c-9"},
                       "requireInteraction": True, "renotify": True}
    on_screen = page.evaluate("""async () => (await (await navigator.serviceWorker.ready).getNotifications())
        .map(n => ({ title: n.title, tag: n.tag, requireInteraction: n.requireInteraction }))""")
    assert {"title": "Escalation", "tag": f"mojavox-{stored['id']}", "requireInteraction": True} in on_screen

    page.evaluate("document.getElementById('sign-out').click()")
    expect(page.locator("#signin")).to_be_visible()
    second = server.notify(user, type="call_escalation", title="Escalation 2", priority="critical",
                           message="agent-7 requests help with John Smith")
    deliver({"id": second["id"], "type": "call_escalation", "priority": "critical"})
    signed_out = shown_when(3)[2]
    assert signed_out == {"title": "Call escalation", "body": "Critical priority. Open MOJAVOX to see it.",
                          "tag": f"mojavox-{second['id']}", "icon": None,
                          "data": {"id": second["id"], "type": "call_escalation", "priority": "critical",
                                   "actionUrl": "/"},
                          "requireInteraction": True, "renotify": True}
    assert page.evaluate(ON_DISK, bearer) == []


# -- browser push and signing out ----------------------------------------------------------------

# Where a real browser's push service would be: pushManager.subscribe needs Google's push
# service, which this machine cannot reach. The stand-in keeps one subscription per origin, as
# the browser does, across the pages of a context; `unsubscribed` lists what was dropped.
PUSH_MANAGER_STAND_IN = """(() => {
  const key = 'push-manager-stand-in';
  const keys = { p256dh: 'BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM',
                 auth: 'tBHItJI5svbpez7KI4CCXg' };
  const stored = () => JSON.parse(localStorage.getItem(key) || 'null');
  const subscription = (json) => ({
    endpoint: json.endpoint, expirationTime: null, toJSON: () => json,
    unsubscribe: async () => {
      if (stored() && stored().endpoint === json.endpoint) localStorage.removeItem(key);
      localStorage.setItem(key + '-unsubscribed',
        JSON.stringify([...JSON.parse(localStorage.getItem(key + '-unsubscribed') || '[]'), json.endpoint]));
      return true;
    },
  });
  PushManager.prototype.getSubscription = async function () {
    return stored() && subscription(stored());
  };
  PushManager.prototype.subscribe = async function () {
    if (!stored()) {
      localStorage.setItem(key, JSON.stringify({
        endpoint: `https://push.example.com/send/${crypto.randomUUID()}`, expirationTime: null, keys }));
    }
    return subscription(stored());
  };
})()"""
BROWSER_ENDPOINT = """async () => {
  const subscription = await (await navigator.serviceWorker.ready).pushManager.getSubscription();
  return subscription && subscription.endpoint;
}"""
UNSUBSCRIBED = "JSON.parse(localStorage.getItem('push-manager-stand-in-unsubscribed') || '[]')"
# Everything of the origin on disk that could hold a token: CacheStorage and IndexedDB.
ON_DISK = """async (token) => {
  const found = [];
  for (const name of await caches.keys()) {
    const cache = await caches.open(name);
    for (const request of await cache.keys()) {
      if ((await (await cache.match(request)).text()).includes(token)) found.push(`cache ${name}: ${request.url}`);
    }
  }
  for (const database of await indexedDB.databases()) found.push(`IndexedDB ${database.name}`);
  return found;
}"""


def turn_push_on(page: Page) -> str:
    expect(page.locator("#push-toggle")).to_be_enabled()
    page.locator("#push-toggle").click()
    expect(page.locator("#push-toggle")).to_have_attribute("data-on", "true")
    return page.evaluate(BROWSER_ENDPOINT)


def test_signing_out_turns_push_off_on_the_server_and_in_the_browser(context, server):
    context.add_init_script(PUSH_MANAGER_STAND_IN)
    context.grant_permissions(["notifications"], origin=server.url)
    agent = new_user("agent")
    bearer = token(agent)
    page = open_center(context, server, agent, bearer)
    endpoint = turn_push_on(page)
    assert endpoint.startswith("https://push.example.com/send/")
    taken = server.call("POST", "/api/notifications/push-subscription", token(new_user("next")),
                        {"endpoint": endpoint, "keys": {"p256dh": "BKey", "auth": "secret"}})
    assert taken[0] == 409, "the server has this browser subscribed for the agent"

    page.locator("#sign-out").click()
    expect(page.locator("#signin")).to_be_visible()
    status, body = server.call("DELETE", "/api/notifications/push-subscription", bearer,
                               {"endpoint": endpoint})
    assert status == 404, f"the server still has the browser subscribed for the agent: {body}"
    assert page.evaluate(BROWSER_ENDPOINT) is None
    assert page.evaluate(UNSUBSCRIBED) == [endpoint]
    assert page.evaluate(ON_DISK, bearer) == [], "no token left on disk"


def test_a_browser_left_subscribed_by_someone_else_subscribes_again_for_the_next_user(context, server):
    context.add_init_script(PUSH_MANAGER_STAND_IN)
    context.grant_permissions(["notifications"], origin=server.url)
    first = new_user("first")
    page = open_center(context, server, first)
    endpoint = turn_push_on(page)
    page.close()  # without signing out

    following = new_user("following")
    page = open_center(context, server, following)
    expect(page.locator("#push-toggle")).to_be_enabled()
    expect(page.locator("#push-toggle")).to_have_attribute("data-on", "true")
    renewed = page.evaluate(BROWSER_ENDPOINT)
    assert renewed and renewed != endpoint, "a new endpoint of the next user's own"
    assert page.evaluate(UNSUBSCRIBED) == [endpoint]
    status, _ = server.call("DELETE", "/api/notifications/push-subscription", token(following),
                            {"endpoint": renewed})
    assert status == 200, "registered for the next user"


# -- another origin ----------------------------------------------------------------------------------

CALL_EVERY_ENDPOINT = """async ([api, user, service, admin]) => {
  const { NotifyClient, NotifyApiError } = await import('./mojavox-notify.js');
  const results = {};
  const raw = async (method, path, token, body, extra = {}) => {
    const headers = { Authorization: `Bearer ${token}`, ...extra };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return [response.status, await response.json()];
  };
  const draft = (title) => ({ userId: user.id, type: 'payment_received', title, message: 'paid' });
  results.create = (await raw('POST', '/api/notifications', service, draft('one'), { 'Idempotency-Key': crypto.randomUUID() }))[0];
  results.event = (await raw('POST', '/api/events', service, { type: 'payment.received', id: crypto.randomUUID(),
    data: { userId: user.id, amount: 10, accountId: 'AC-1', debtorName: 'Jo' } }))[0];
  results.plugins = (await raw('GET', '/api/plugins', admin))[0];
  const client = new NotifyClient({ url: api, token: user.token, wsPath: '/live/notifications' });
  const page = await client.history({ limit: 10 });
  results.history = page.notifications.length;
  const [first, second] = page.notifications;
  results.get = (await client.getNotification(first.id)).id === first.id;
  await client.markRead(first.id);
  results.unread = (await client.getUnreadCount()).count;
  await client.markAllRead();
  results.unreadAfterAll = (await client.getUnreadCount()).count;
  await client.deleteNotification(second.id);
  results.afterDelete = (await client.history()).total;
  results.settings = (await client.updateSettings({ agent_alert: { push: false } })).agent_alert;
  results.settingsRead = (await client.getSettings()).agent_alert;
  results.vapid = await client.getVapidPublicKey();
  const subscription = { endpoint: 'https://push.example.com/send/cors-' + user.id,
    keys: { p256dh: 'BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM', auth: 'tBHItJI5svbpez7KI4CCXg' } };
  await client.savePushSubscription(subscription);
  await client.removePushSubscription(subscription.endpoint);
  results.subscription = 'saved and removed';
  try { await client.markRead('0123456789abcdef01234567'); } catch (error) {
    results.errorReadable = error instanceof NotifyApiError && error.status === 404 && error.code === 'not_found';
  }
  await client.connect();
  results.socket = client.state;
  client.close();
  return results;
}"""


def test_a_page_on_another_allowed_origin_can_call_every_rest_endpoint(context, server, other_origin):
    user = new_user("cors")
    page = context.new_page()
    page.goto(other_origin.origin + "/index.html")
    results = page.evaluate(CALL_EVERY_ENDPOINT, [server.url, {"id": user, "token": token(user)}, SERVICE, ADMIN])
    assert results == {
        "create": 201, "event": 202, "plugins": 200, "history": 2, "get": True, "unread": 1,
        "unreadAfterAll": 0, "afterDelete": 1, "settings": {"enabled": True, "push": False},
        "settingsRead": {"enabled": True, "push": False}, "vapid": VAPID_PUBLIC,
        "subscription": "saved and removed", "errorReadable": True, "socket": "open"}


def test_a_page_on_an_origin_not_listed_cannot_read_the_api(context, server, other_origin):
    page = context.new_page()
    page.goto(other_origin.unlisted_origin + "/index.html")
    outcome = page.evaluate("""async ([api, token]) => {
        try {
            await fetch(api + '/api/notifications', { headers: { Authorization: `Bearer ${token}` } });
            return 'read';
        } catch (error) { return error.name + ': ' + error.message; }
    }""", [server.url, token(new_user())])
    assert outcome == "TypeError: Failed to fetch"


def test_the_page_names_the_call_center_of_a_tenant_token_and_shows_its_broadcasts_only(context, server):
    user = new_user("collector")
    north = open_center(context, server, user, token(user, tenant="north"))
    expect(north.locator("#tenant")).to_have_text("north")
    expect(north.locator("#tenant")).to_be_visible()
    plain = open_center(context, server, user)
    expect(plain.locator("#tenant")).to_be_hidden()
    sent = {}
    for tenant in ("south", "north"):
        status, sent[tenant] = server.call("POST", "/api/broadcasts", token(f"{tenant}-ops", ["service"], tenant=tenant), {
            "title": f"{tenant.title()} dialer restarts", "message": "At 22:00 UTC", "ttlSeconds": 20})
        assert status == 201, sent[tenant]

    def shown(page, tenant):
        return page.locator(f'#announcements li[data-id="{sent[tenant]["id"]}"]')

    expect(shown(north, "north").locator(".title")).to_have_text("North dialer restarts")
    expect(shown(north, "south")).to_have_count(0)
    expect(shown(plain, "north")).to_have_count(0)
    expect(shown(plain, "south")).to_have_count(0)


# -- escalations: pinned, taken, resolved; the desktop notification ------------------------------

ESCALATION_POLICY = {
    "call_escalation": {"claim": True, "repeat": 0,
                        "steps": [{"after_seconds": 600, "to": {"users": ["nobody"]}}]},
    # One that nobody answers within the test: its one step comes after 1 s.
    "agent_alert": {"claim": True, "repeat": 0,
                    "steps": [{"after_seconds": 1, "to": {"users": ["nobody"]}}]},
}
HIDDEN_TAB = """() => {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
  document.dispatchEvent(new Event('visibilitychange'));
}"""
ON_SCREEN = """async (tag) => (await (await navigator.serviceWorker.ready).getNotifications({ tag }))
    .map(n => ({ title: n.title, body: n.body, tag: n.tag, silent: n.silent,
                 requireInteraction: n.requireInteraction }))"""


@pytest.fixture(scope="module")
def escalating(tmp_path_factory):
    """A server whose call_escalation escalates (its one step far off), with push configured."""
    process = ServeProcess(tmp_path_factory.mktemp("escalating"), **{
        "escalations": ESCALATION_POLICY, "escalation_timers.poll_interval_seconds": 0.2,
        "push.vapid_public_key": VAPID_PUBLIC, "push.vapid_private_key": VAPID_PRIVATE,
    }).start()
    yield process
    process.stop()


def escalate(server: ServeProcess, users: list[str], call_id: str) -> None:
    topic = f"floor-{call_id}"
    status, body = server.call("PUT", f"/api/topics/{topic}/members", SERVICE, {"add": users})
    assert status == 200, body
    status, body = server.call("POST", "/api/notifications", SERVICE, {
        "topic": topic, "type": "call_escalation", "title": "Call Escalation Required",
        "message": "agent-7 requests supervisor intervention on call with John Smith",
        "actionUrl": f"/live-monitor?call={call_id}", "escalationKey": f"call:{call_id}"})
    assert status == 202 and body["created"] == len(users), body


def end_call(server: ServeProcess, call_id: str) -> None:
    status, body = server.call("POST", "/api/events", SERVICE,
                               {"type": "call.ended", "data": {"callId": call_id}})
    assert status == 202, body


def newest_notification(server: ServeProcess, user: str) -> dict:
    status, body = server.call("GET", "/api/notifications?limit=1", token(user))
    return body["notifications"][0]


def test_an_escalation_is_pinned_taken_on_one_page_seen_as_taken_on_the_other_and_resolved(
        context, escalating):
    bob, carol = new_user("bob"), new_user("carol")
    bob_page, carol_page = open_center(context, escalating, bob), open_center(context, escalating, carol)
    call_id = new_user("call")
    escalate(escalating, [bob, carol], call_id)
    bob_card, carol_card = (page.locator("#escalations li.escalation") for page in (bob_page, carol_page))
    for card in (bob_card, carol_card):
        expect(card).to_have_count(1)
        expect(card).to_have_attribute("data-state", "open")
        expect(card.locator(".title")).to_have_text("Call Escalation Required")
        expect(card.locator(".state")).to_have_text(re.compile(r"^Waiting \d+ s$"))
        expect(card.locator("button.take")).to_be_visible()
    expect(carol_card.locator(".state")).not_to_have_text("Waiting 0 s", timeout=3000)  # it ticks

    bob_card.locator("button.take").click()
    expect(bob_card.locator(".state")).to_have_text("Taken by you")
    expect(carol_card.locator(".state")).to_have_text(re.compile(rf"^Taken by {bob} after \d+ s$"))
    expect(carol_card.locator("button.take")).to_be_hidden()
    expect(carol_card).to_have_attribute("data-state", "acknowledged")

    end_call(escalating, call_id)
    for card in (bob_card, carol_card):
        expect(card.locator(".state")).to_have_text("Resolved: call ended")
        expect(card).to_have_attribute("data-state", "resolved")

    # Both pages were visible with the card on screen: each user's `seen` is in the timeline.
    escalation_id = bob_card.get_attribute("data-escalation-id")
    status, detail = escalating.call("GET", f"/api/escalations/{escalation_id}", token(bob))
    assert status == 200, detail
    assert sorted(line["userId"] for line in detail["timeline"] if line["event"] == "seen") == sorted([bob, carol])
    assert [line["userId"] for line in detail["timeline"] if line["event"] == "acknowledged"] == [bob]


def deaf_page(context, server: ServeProcess, user: str) -> tuple[Page, list]:
    """A page whose socket never hears `escalation` frames; the list of its routed sockets
    (close one to make the page reconnect)."""
    page = context.new_page()
    sockets = []

    def route(socket) -> None:
        server_side = socket.connect_to_server()
        server_side.on_message(lambda message: None if json.loads(message).get("type") == "escalation"
                               else socket.send(message))
        socket.on_message(server_side.send)
        sockets.append(socket)

    page.route_web_socket(re.compile(r"/ws/notifications"), route)
    page.goto(f"{server.url}/#token={token(user)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    return page, sockets


def taken_unheard(context, server: ServeProcess) -> tuple[Page, str, list]:
    """Carol's page shows an escalation that Bob has just taken, unheard by her socket."""
    bob, carol = new_user("bob"), new_user("carol")
    page, sockets = deaf_page(context, server, carol)
    escalate(server, [bob, carol], new_user("call"))
    card = page.locator("#escalations li.escalation")
    expect(card).to_have_count(1)
    status, body = server.call(
        "POST", f"/api/notifications/{newest_notification(server, bob)['id']}/ack", token(bob))
    assert status == 200, body
    expect(card.locator(".state")).to_have_text(re.compile(r"^Waiting \d+ s$"))
    return page, bob, sockets


def test_a_take_it_refused_because_someone_was_quicker_shows_who(context, escalating):
    page, bob, _ = taken_unheard(context, escalating)
    card = page.locator("#escalations li.escalation")
    card.locator("button.take").click()
    expect(card.locator(".state")).to_have_text(re.compile(rf"^Taken by {bob} after \d+ s$"))
    expect(card.locator("button.take")).to_be_hidden()
    expect(page.locator("#banner")).to_be_hidden()  # a refusal with an answer is no failure


def test_after_a_reconnection_the_page_shows_the_changes_it_missed(context, escalating):
    page, bob, sockets = taken_unheard(context, escalating)
    sockets[-1].close()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator("#escalations li.escalation .state")).to_have_text(
        re.compile(rf"^Taken by {bob} after \d+ s$"))


def test_escalations_resolved_before_the_page_opened_are_not_pinned_and_text_stays_text(context, escalating):
    user = new_user("sup")
    done, waiting = new_user("call"), new_user("call")
    escalate(escalating, [user], done)
    end_call(escalating, done)
    status, body = escalating.call("POST", "/api/notifications", SERVICE, {
        "userId": user, "type": "call_escalation", "title": "Help with a < b & c > d",
        "message": "agent-7 & co. <needs> you", "escalationKey": f"call:{waiting}"})
    assert status == 201, body
    page = open_center(context, escalating, user)
    card = page.locator("#escalations li.escalation")
    expect(card).to_have_count(1)
    expect(card.locator(".title")).to_have_text("Help with a < b & c > d")
    expect(card.locator(".message")).to_have_text(body["message"])
    expect(items(page)).to_have_count(2)  # both are in the list as notifications


def test_an_escalation_nobody_takes_shows_unanswered_and_can_still_be_taken(context, escalating):
    user = new_user("sup")
    page = open_center(context, escalating, user)
    status, body = escalating.call("POST", "/api/notifications", SERVICE, {
        "userId": user, "type": "agent_alert", "title": "Agent alert", "message": "agent-7 is stuck"})
    assert status == 201, body
    card = page.locator("#escalations li.escalation")
    expect(card.locator(".state")).to_have_text(re.compile(r"^Waiting \d+ s$"))
    expect(card).to_have_attribute("data-state", "unanswered", timeout=8000)
    expect(card.locator(".state")).to_have_text(re.compile(r"^Unanswered: nobody took it \(\d+ s\)$"))
    card.locator("button.take").click()
    expect(card.locator(".state")).to_have_text("Taken by you")


def test_a_critical_notification_while_the_page_is_hidden_shows_on_the_desktop_without_push(
        context, escalating):
    user = new_user("sup")
    context.grant_permissions(["notifications"], origin=escalating.url)
    page = open_center(context, escalating, user)
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    expect(page.locator("#push-toggle")).to_have_text("Turn on browser push")  # push is off
    page.evaluate(HIDDEN_TAB)
    call_id = new_user("call")
    escalate(escalating, [user], call_id)
    expect(page.locator("#escalations li.escalation")).to_have_count(1)
    escalation_id = page.locator("#escalations li.escalation").get_attribute("data-escalation-id")
    tag = f"escalation-{escalation_id}"
    shown = []
    for _ in range(100):
        shown = page.evaluate(ON_SCREEN, tag)
        if shown:
            break
        page.wait_for_timeout(50)
    assert shown == [{"title": "Call Escalation Required", "tag": tag, "silent": False,
                      "body": "agent-7 requests supervisor intervention on call with John Smith",
                      "requireInteraction": True}]
    # Resolved while the tab is still hidden: this page takes it off the desktop.
    end_call(escalating, call_id)
    expect(page.locator("#escalations li.escalation .state")).to_have_text("Resolved: call ended")
    for _ in range(100):
        if not page.evaluate(ON_SCREEN, tag):
            break
        page.wait_for_timeout(50)
    assert page.evaluate(ON_SCREEN, tag) == []
    # Hidden, nothing of it was reported seen.
    status, detail = escalating.call("GET", f"/api/escalations/{escalation_id}", token(user))
    assert [line for line in detail["timeline"] if line["event"] == "seen"] == []


def test_a_notification_while_hidden_without_permission_shows_nothing(context, escalating):
    user = new_user("sup")
    page = open_center(context, escalating, user)
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    page.evaluate(HIDDEN_TAB)
    escalate(escalating, [user], new_user("call"))
    expect(page.locator("#escalations li.escalation")).to_have_count(1)
    page.wait_for_timeout(300)
    assert page.evaluate(ON_SCREEN, None) == []


def test_the_service_worker_closes_the_escalation_when_the_resolving_push_arrives(context, escalating):
    user = new_user("sup")
    context.grant_permissions(["notifications"], origin=escalating.url)
    # Deaf to escalation frames: an open page would close the notification itself on hearing
    # of the resolution; here only the push can.
    page, _ = deaf_page(context, escalating, user)
    cdp, activated = running_service_worker(context, page)
    worker = context.service_workers[0]
    worker.evaluate("""() => {
        self.closedForTest = [];
        const close = Notification.prototype.close;
        Notification.prototype.close = function () { self.closedForTest.push(this.tag); return close.call(this); };
    }""")

    def deliver(notification: dict) -> None:
        # What the push worker would send for it now (the same function), as the browser gets it.
        cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": escalating.url + "/", "registrationId": activated[-1]["registrationId"],
            "data": push_payload(notification, "full", None)})

    call_id = new_user("call")
    escalate(escalating, [user], call_id)
    notification = newest_notification(escalating, user)
    tag = f"escalation-{notification['escalation']['id']}"
    deliver(notification)
    for _ in range(100):
        if page.evaluate(ON_SCREEN, tag):
            break
        page.wait_for_timeout(50)
    assert [n["title"] for n in page.evaluate(ON_SCREEN, tag)] == ["Call Escalation Required"]

    end_call(escalating, call_id)
    resolved = newest_notification(escalating, user)
    assert resolved["escalation"]["state"] == "resolved"
    deliver(resolved)
    for _ in range(100):
        if worker.evaluate("self.closedForTest").count(tag):
            break
        page.wait_for_timeout(50)
    assert tag in worker.evaluate("self.closedForTest")
    on_screen = []
    for _ in range(100):
        on_screen = page.evaluate(ON_SCREEN, tag)
        if [n["title"] for n in on_screen] == ["Resolved: call ended"]:
            break
        page.wait_for_timeout(50)
    assert on_screen == [{"title": "Resolved: call ended", "body": "Call Escalation Required", "tag": tag,
                          "silent": True, "requireInteraction": False}]
