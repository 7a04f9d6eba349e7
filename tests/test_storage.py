"""Storage: notifications persist across restarts, and the embedded nx-27017 child is started,
watched and stopped by the app itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from datetime import datetime, timedelta, timezone

import pytest

from mojavox_notify.app import NotifyApp, StartupError

from .support import new_user, token

BASE = "/api/notifications"


def process_exists(pid: int) -> bool:
    """True while `pid` is a live process (a zombie or a reused pid counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


@pytest.mark.gen_test(timeout=60)
async def test_notifications_survive_an_app_restart(start_app, make_settings):
    settings = make_settings()
    first = await start_app(settings=settings)
    user = new_user()
    unread = await first.api.notify(user, title="Before restart")
    read = await first.api.notify(user, title="Read before restart")
    await first.api.post(f"{BASE}/{read['id']}/read", token(user))
    await first.api.put(f"{BASE}/settings", token(user), {"channels": {"call_completed": {"enabled": False}}})
    await first.stop()

    second = await start_app(settings=settings)
    status, page = await second.api.get(BASE, token(user))
    assert status == 200
    assert page["notifications"] == [{**read, "read": True}, unread]
    assert page["unreadCount"] == 1
    status, preferences = await second.api.get(f"{BASE}/settings", token(user))
    assert preferences["channels"]["call_completed"]["enabled"] is False
    newer = await second.api.notify(user, title="After restart")
    status, page = await second.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [newer["id"], read["id"], unread["id"]]


@pytest.mark.gen_test(timeout=60)
async def test_embedded_storage_runs_end_to_end_and_stops_with_the_app(start_app, make_settings):
    settings = make_settings(**{"mongodb.url": "embedded"})
    app = await start_app(settings=settings)
    assert app.embedded is not None and app.embedded.alive
    pid = app.embedded._process.pid
    assert process_exists(pid)
    assert (settings.data_path / "mongo").is_dir()

    user = new_user()
    created = await app.api.notify(user, title="Embedded")
    status, page = await app.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [created["id"]]
    status, health = await app.api.get("/healthz")
    assert status == 200
    assert "embedded nx-27017" in health["storage"]["backend"]

    await app.stop()
    assert not process_exists(pid), "the nx-27017 child must be gone after stop()"


@pytest.mark.gen_test(timeout=60)
async def test_embedded_storage_keeps_notifications_across_a_restart(start_app, make_settings):
    settings = make_settings(**{"mongodb.url": "embedded"})
    first = await start_app(settings=settings)
    user = new_user()
    created = await first.api.notify(user, title="Kept on disk")
    await first.stop()

    second = await start_app(settings=settings)
    status, page = await second.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [created["id"]]


@pytest.mark.gen_test(timeout=60)
async def test_healthz_is_503_when_the_embedded_child_dies(start_app, make_settings):
    app = await start_app(settings=make_settings(**{"mongodb.url": "embedded"}))
    status, _ = await app.api.get("/healthz")
    assert status == 200

    os.kill(app.embedded._process.pid, signal.SIGKILL)
    assert await wait_until(lambda: not app.embedded.alive), "the app notices its child died"

    status, health = await app.api.get("/healthz")
    assert status == 503
    assert health["status"] == "unavailable"
    assert health["storage"]["ok"] is False
    assert health["broker"]["ok"] is True


@pytest.mark.gen_test(timeout=60)
async def test_start_up_refuses_a_mongodb_url_nobody_answers_on(make_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(**{"mongodb.url": f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                "mongodb.server_selection_timeout_seconds": 0.3})
    app = NotifyApp(settings)
    with pytest.raises(StartupError) as caught:
        await app.open_storage()
    await app.stop()
    assert "mongodb.url" in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.parametrize("scan_limit", [1000, 2])
@pytest.mark.gen_test(timeout=30)
async def test_unread_counts_by_priority_leave_out_read_and_expired(start_app, monkeypatch, scan_limit):
    """Both ways of counting (a scan of priorities, and per-priority counts past the scan
    limit) agree."""
    monkeypatch.setattr("mojavox_notify.store.UNREAD_SCAN_LIMIT", scan_limit)
    app = await start_app()
    user = new_user()
    for priority in ("low", "high", "high", "critical"):
        await app.api.notify(user, priority=priority)
    read = await app.api.notify(user, priority="medium")
    await app.api.post(f"{BASE}/{read['id']}/read", token(user))
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    await app.api.notify(user, priority="low", expiresAt=soon.isoformat())
    await asyncio.sleep(1.2)
    status, counts = await app.api.get(f"{BASE}/unread-count", token(user))
    assert status == 200
    assert counts == {"count": 4, "byPriority": {"low": 1, "medium": 0, "high": 2, "critical": 1}}
