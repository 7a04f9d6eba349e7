"""Storage that fails: answered with 503 `storage_unavailable` quickly, reported by /healthz from
cached state, recovered without a restart when it comes back, and a clean non-zero exit when it
does not come back in time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mojavox_notify.store.nx27017 import Nx27017Child

from .support.ports import free_port
from .support.sockets import Socket
from .support.tokens import new_user, token

BASE = "/api/notifications"
bounded = pytest.mark.timeout(90)
OUTAGE_SETTINGS = {"storage.operation_timeout_seconds": 1, "storage.probe_interval_seconds": 0.2,
                   "mongodb.server_selection_timeout_seconds": 1, "storage.exit_after_seconds": 0}


async def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
async def mongo_server(tmp_path):
    """An nx-27017 server of this test's own, to kill and bring back."""
    child = Nx27017Child(tmp_path / "nx")
    yield child
    async with asyncio.timeout(30):
        await child.stop()


@bounded
async def test_a_lost_mongodb_is_503_at_once_and_recovered_without_a_restart(start_app, mongo_server):
    url = await mongo_server.start()
    app = await start_app(**{"storage.url": url, "mongodb.database": f"outage_{uuid.uuid4().hex[:8]}",
                             **OUTAGE_SETTINGS})
    user = new_user()
    created = await app.api.notify(user)

    os.kill(mongo_server._process.pid, signal.SIGKILL)
    started = time.monotonic()
    status, body = await app.api.get(BASE, token(user))
    assert status == 503 and body["error"]["code"] == "storage_unavailable"
    assert time.monotonic() - started < 3, "answered within the operation timeout, not after 5 s"

    started = time.monotonic()
    status, health = await app.api.get("/healthz")
    assert status == 503 and health["storage"]["ok"] is False and health["storage"]["error"]
    assert time.monotonic() - started < 0.5, "healthz answers from cached state"

    refused = await Socket.open(app, token(user))
    assert await refused.closed() == 1013, "retryable, never 1011"

    await mongo_server.start(port=mongo_server.port)
    assert await wait_until(lambda: healthy(app)), "recovered without a restart"
    status, page = await app.api.get(BASE, token(user))
    assert status == 200 and [n["id"] for n in page["notifications"]] == [created["id"]]
    back = await Socket.open(app, token(user), since=created["id"])
    await back.expect("connected")


async def healthy(app) -> bool:
    status, _ = await app.api.get("/healthz")
    return status == 200


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB filesystem of the test's own (a tmpfs; needs root, as the tests run here)."""
    folder = tmp_path / "small-disk"
    if not mount_tmpfs(folder, "4m"):
        pytest.skip("mounting a tmpfs is not permitted on this machine")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@bounded
async def test_a_full_disk_is_503_and_unhealthy_until_space_is_freed(start_app, small_disk):
    app = await start_app(**{"storage.url": f"sqlite:///{small_disk / 'notify.db'}",
                             "rate_limits.notifications_per_minute": 0, **OUTAGE_SETTINGS})
    user = new_user()
    kept = await app.api.notify(user)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as blocks:  # unbuffered: closing has nothing to flush
        try:
            while True:
                blocks.write(b"\0" * 65536)
        except OSError:
            pass

    statuses = []
    for index in range(40):
        status, body = await app.api.post("/api/notifications", token("svc", ["service"]), {
            "userId": user, "type": "payment_received", "title": "t", "message": "x" * 1900,
            "data": {"blob": "y" * 15000}})
        statuses.append(status)
        if status == 503:
            assert body["error"]["code"] == "storage_unavailable"
            break
    assert statuses[-1] == 503, statuses
    assert await wait_until(lambda: unhealthy(app), 5)
    status, health = await app.api.get("/healthz")
    assert "full" in health["storage"]["error"] or "disk" in health["storage"]["error"]

    filler.unlink()
    assert await wait_until(lambda: healthy(app)), "healthy again once there is space"
    newer = await app.api.notify(user)
    status, page = await app.api.get(BASE, token(user))
    ids = [n["id"] for n in page["notifications"]]
    assert ids[0] == newer["id"] and kept["id"] in ids
    assert page["total"] == len(ids) and page["unreadCount"] == len(ids)


async def unhealthy(app) -> bool:
    status, _ = await app.api.get("/healthz")
    return status == 503


@bounded
async def test_serve_exits_3_when_storage_stays_lost_past_the_configured_time(mongo_server, tmp_path):
    url = await mongo_server.start()
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        f"data_dir: {tmp_path / 'data'}\nserver:\n  port: {free_port()}\n"
        f"storage:\n  url: '{url}'\n  probe_interval_seconds: 0.2\n  exit_after_seconds: 1\n"
        "  operation_timeout_seconds: 1\n"
        f"mongodb:\n  server_selection_timeout_seconds: 1\n"
        f"plugins:\n  directory: {Path(__file__).resolve().parent.parent / 'plugins'}\n"
        "retention:\n  cleanup_interval_minutes: 0\n", encoding="utf-8")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "mojavox_notify", "serve", "--settings",
                                   str(settings_file)], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert await wait_until(lambda: served(log_path), 30), log_path.read_text()
        os.kill(mongo_server._process.pid, signal.SIGKILL)
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: server.wait(timeout=30))
        assert code == 3, log_path.read_text()
        text = log_path.read_text()
        assert "storage.exit_after_seconds" in text and "Traceback" not in text
    finally:
        if server.poll() is None:
            server.kill()


async def served(log_path: Path) -> bool:
    return "serving on" in log_path.read_text()
