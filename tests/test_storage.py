"""Storage as the app uses it: persistence across restarts on both engines, the embedded SQLite
file shared by two apps, and the one-time import of a data folder the earlier nx-27017 default
wrote."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from bson import ObjectId

from mojavox_notify import tenants
from mojavox_notify.app import NotifyApp, StartupError
from mojavox_notify.errors import StorageUnavailableError
from mojavox_notify.model import Draft, utcnow
from mojavox_notify.settings import load_settings
from mojavox_notify.store import build_store
from mojavox_notify.store.importer import IMPORTED_MARKER
from mojavox_notify.store.mongo import MongoStore
from mojavox_notify.store.nx27017 import Nx27017Child
from mojavox_notify.store.sqlite import CHECKPOINT_DELAY_SECONDS, SCHEMA_VERSION
from mojavox_notify.store.sqlite.execution import TurnWaiters, WaitingProbe, transaction

from .support.api import notifications_of, post_event
from .support.engines import both_engines
from .support.paths import ROOT
from .support.tokens import SERVICE, new_user, token

BASE = "/api/notifications"
bounded = pytest.mark.timeout(60)


def payment(user: str) -> dict:
    return {"userId": user, "amount": 10, "accountId": "AC-1", "debtorName": "John Smith"}


@both_engines
@bounded
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
    assert page["unreadCount"] == 1 and page["total"] == 2
    status, preferences = await second.api.get(f"{BASE}/settings", token(user))
    assert preferences["channels"]["call_completed"]["enabled"] is False
    newer = await second.api.notify(user, title="After restart")
    status, page = await second.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [newer["id"], read["id"], unread["id"]]


@bounded
async def test_embedded_is_a_sqlite_file_in_the_data_folder_with_no_child_process(start_app, make_settings):
    settings = make_settings(**{"storage.url": "embedded"})
    app = await start_app(settings=settings)
    user = new_user()
    created = await app.api.notify(user, title="Embedded")
    status, page = await app.api.get(BASE, token(user))
    assert [n["id"] for n in page["notifications"]] == [created["id"]]
    status, health = await app.api.get("/healthz")
    assert status == 200
    assert health["storage"] == {"ok": True, "backend": f"embedded SQLite {settings.data_path / 'notify.db'}"}
    assert (settings.data_path / "notify.db").is_file()
    assert not processes_naming(settings.data_path), "no child process serves the data folder"


def processes_naming(folder) -> list[int]:
    needle = str(folder).encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as command:
                    if needle in command.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@bounded
async def test_two_apps_on_one_embedded_file_see_each_others_writes_in_one_sequence(start_app, make_settings):
    settings = make_settings(**{"rate_limits.notifications_per_minute": 0})
    first = await start_app(settings=settings)
    second = await start_app(settings=settings)
    user = new_user()

    async def create(app, count):
        for index in range(count):
            await app.api.notify(user, message=f"{app.port}-{index}")

    await asyncio.gather(create(first, 20), create(second, 20))
    status, page = await second.api.get(f"{BASE}?limit=100", token(user))
    assert page["total"] == 40 and page["unreadCount"] == 40
    documents = await first.store.after(user, 0, 100)
    assert [d["seq"] for d in documents] == list(range(1, 41))
    await first.api.post(f"{BASE}/read-all", token(user))
    status, counts = await second.api.get(f"{BASE}/unread-count", token(user))
    assert counts["count"] == 0


@contextlib.asynccontextmanager
async def embedded_store(make_settings, **storage):
    """An opened embedded store with these `storage.*` settings, closed afterwards."""
    store = build_store(make_settings(**{"storage.url": "embedded",
                                         **{f"storage.{key}": value for key, value in storage.items()}}))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@bounded
async def test_embedded_insertions_queued_during_a_write_share_the_next_transaction(make_settings):
    # On the storage threads (nothing inline), where insertions queue behind a transaction.
    async with embedded_store(make_settings, sqlite_inline_limit=0) as store:
        transactions = thread_trips(store, "_write")
        user = new_user()
        drafts = [Draft(user_id=user, type="payment_received", title="Paid", message=f"{index}",
                        priority="high") for index in range(40)]
        results = await asyncio.gather(*(store.insert_many([draft]) for draft in drafts))
        assert [records[0].document["message"] for records in results] == [f"{i}" for i in range(40)]
        assert [records[0].document["seq"] for records in results] == list(range(1, 41))
        # 40 queued: one or two transactions
        assert 1 <= transactions.count("_insert_many") <= 2, transactions


@bounded
async def test_a_queued_insertion_gives_up_its_timeout_after_it_queued_not_after_its_batch_began(make_settings):
    store = build_store(make_settings(**{"storage.url": "embedded",
                                         "storage.operation_timeout_seconds": 0.3,
                                         "storage.busy_timeout_seconds": 0.2,
                                         "storage.sqlite_inline_limit": 0}))
    await store.open()
    write = store._write

    async def stalled(function, *args):
        await asyncio.sleep(1.5)  # a storage thread stuck (a disk that hangs)
        return await write(function, *args)

    store._write = stalled
    try:
        user = new_user()
        first = asyncio.ensure_future(store.insert_many([Draft(
            user_id=user, type="payment_received", title="Paid", message="1", priority="high")]))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        with pytest.raises(StorageUnavailableError):
            await store.insert_many([Draft(user_id=user, type="payment_received", title="Paid",
                                           message="2", priority="high")])
        assert asyncio.get_running_loop().time() - started < 0.9, "0.5 s after it queued"
        with pytest.raises(StorageUnavailableError):
            await first
    finally:
        store._write = write
        await store.close()


def rows_in_the_file_itself(database) -> int:
    """Notifications in the database file, not counting its write-ahead log (`immutable` reads
    the file alone): what a checkpoint has copied back."""
    with sqlite3.connect(f"file:{database}?immutable=1", uri=True) as connection:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'notifications'").fetchone():
            return 0  # not even the schema is copied yet
        return connection.execute("SELECT count(*) FROM notifications").fetchone()[0]


@bounded
async def test_the_log_is_copied_into_the_file_a_while_after_a_write_or_when_closing(make_settings):
    store = build_store(make_settings(**{"storage.url": "embedded"}))
    await store.open()
    closed = False
    try:
        user = new_user()
        drafts = [Draft(user_id=user, type="payment_received", title="Paid", message=f"{index}",
                        priority="high") for index in range(20)]
        await store.insert_many(drafts)
        assert rows_in_the_file_itself(store.path) == 0  # in the log only: no copy at commit
        deadline = asyncio.get_running_loop().time() + CHECKPOINT_DELAY_SECONDS + 5
        while rows_in_the_file_itself(store.path) < 20:
            assert asyncio.get_running_loop().time() < deadline, "the log was never copied back"
            await asyncio.sleep(0.05)

        await store.insert_many(drafts[:5])
        started = asyncio.get_running_loop().time()
        await store.close()  # a checkpoint waiting for its delay goes at once
        closed = True
        assert asyncio.get_running_loop().time() - started < CHECKPOINT_DELAY_SECONDS / 2
        assert rows_in_the_file_itself(store.path) == 25
    finally:
        if not closed:
            await store.close()


def downgrade_to_schema_1(database) -> None:
    """Store the notifications as schema 1 did: a rowid table with (user, seq) and unread indexes."""
    with sqlite3.connect(database, isolation_level=None) as connection:
        connection.executescript("""
            BEGIN;
            CREATE TABLE old AS SELECT * FROM notifications;
            DROP TABLE notifications;
            ALTER TABLE old RENAME TO notifications;
            CREATE UNIQUE INDEX notifications_id ON notifications (id);
            CREATE UNIQUE INDEX notifications_user_seq ON notifications (user_id, seq);
            CREATE INDEX notifications_user_unread ON notifications (user_id, seq) WHERE read = 0;
            CREATE INDEX notifications_created ON notifications (created_at);
            PRAGMA user_version = 1;
            COMMIT;""")


def downgrade_to_schema_2(database) -> None:
    """Keep event records as schema 2 did: no owner, the raw event id as the key, and the
    index that found a claim's notifications."""
    with sqlite3.connect(database, isolation_level=None) as connection:
        connection.executescript("""
            BEGIN;
            ALTER TABLE events DROP COLUMN owner;
            UPDATE events SET id = substr(id, 7) WHERE id LIKE 'event:%';
            UPDATE notifications SET event_id = substr(event_id, 7) WHERE event_id LIKE 'event:%';
            CREATE INDEX notifications_event ON notifications (event_id) WHERE event_id IS NOT NULL;
            PRAGMA user_version = 2;
            COMMIT;""")


@bounded
async def test_a_schema_2_file_keeps_its_event_ids_and_an_interrupted_claim_counts_as_done(
        start_app, make_settings):
    settings = make_settings(**{"storage.url": "embedded"})
    first = await start_app(settings=settings)
    user = new_user()
    status, body = await post_event(first, "payment.received", payment(user), "pay-1")
    assert status == 202
    await first.stop()
    database = settings.data_path / "notify.db"
    downgrade_to_schema_2(database)
    with sqlite3.connect(database, isolation_level=None) as connection:
        # As the previous release left a request that died after storing, before completing.
        connection.execute("UPDATE events SET state = 'pending', notifications = '[]'")

    second = await start_app(settings=settings)
    again_status, again = await post_event(second, "payment.received", payment(user), "pay-1")
    assert again_status == 202 and again == body, "replayed, not created twice"
    assert len(await notifications_of(second, user)) == 1
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("SELECT id, state FROM events").fetchall() == [("event:pay-1", "done")]


@bounded
async def test_a_schema_1_embedded_file_is_rebuilt_by_user_once_and_keeps_everything(start_app, make_settings):
    settings = make_settings(**{"storage.url": "embedded"})
    first = await start_app(settings=settings)
    alice, bob = new_user(), new_user()
    created = [await first.api.notify(user, title=f"{user} {index}")
               for index in range(3) for user in (alice, bob)]
    await first.api.post(f"{BASE}/{created[0]['id']}/read", token(alice))
    status, before = await first.api.get(BASE, token(alice))
    await first.stop()
    database = settings.data_path / "notify.db"
    downgrade_to_schema_1(database)

    second = await start_app(settings=settings)
    status, after = await second.api.get(BASE, token(alice))
    assert after == before and after["total"] == 3 and after["unreadCount"] == 2
    newer = await second.api.notify(alice, title="After the rebuild")
    assert (await second.store.get(alice, ObjectId(newer["id"])))["seq"] == 4
    assert [d["seq"] for d in await second.store.after(bob, 0, 10)] == [1, 2, 3]
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(notifications)")}
        assert "notifications_user_seq" not in indexes and "notifications_user_unread" not in indexes
        with pytest.raises(sqlite3.OperationalError):  # WITHOUT ROWID: stored by (user_id, seq)
            connection.execute("SELECT rowid FROM notifications").fetchall()


# The last commit before tenants and topics (issue 23): SQLite schema 3, MongoDB schema 3.
PREVIOUS_RELEASE = "ab6e1d61f4321e58c8d6fe6349f67567acb598ba"

# Run with the previous release's package on the path: stores notifications (one read), a
# channel setting and a broadcast through that release's own store, and prints what it stored.
WRITE_WITH_THE_PREVIOUS_RELEASE = """
import asyncio, json, sys
import mojavox_notify.store.sqlite
from mojavox_notify.model import BroadcastDraft, Draft, to_broadcast_document, utcnow
from mojavox_notify.settings import load_settings
from mojavox_notify.store import build_store

async def main(overrides, users):
    store = build_store(load_settings(None, environ={}, overrides=overrides))
    await store.open()
    try:
        created = await store.insert_many([
            Draft(user_id=user, type="payment_received", title=f"old {index}", message="paid",
                  priority=priority)
            for index, priority in enumerate(("high", "low", "critical")) for user in users])
        await store.mark_read(users[0], created[0].document["_id"])
        await store.update_preferences(users[0], {"call_completed": {"enabled": False}})
        broadcast = to_broadcast_document(BroadcastDraft(
            title="Dialer restart", message="22:00 UTC", priority="high", ttl_seconds=3600), utcnow())
        await store.insert_broadcast(broadcast)
    finally:
        await store.close()
    print(json.dumps({
        "schema": mojavox_notify.store.sqlite.SCHEMA_VERSION, "broadcast": str(broadcast["_id"]),
        "ids": {user: [str(c.document["_id"]) for c in created if c.document["user_id"] == user]
                for user in users}}))

asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2:]))
"""


def previous_release_package(folder) -> str:
    """The previous release's `mojavox_notify`, extracted from this repository's history into
    `folder`; the folder to put on PYTHONPATH."""
    if shutil.which("git") is None:
        pytest.skip("needs git and this repository's history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "mojavox_notify"],
                             capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"needs the repository's history: {archive.stderr.decode().strip()}")
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True, timeout=60)
    return str(folder)


@both_engines
@pytest.mark.timeout(120)
async def test_data_of_the_previous_release_reads_as_before_as_the_default_tenants(
        start_app, make_settings, storage_overrides, tmp_path):
    package = previous_release_package(tmp_path / "previous")
    alice, bob = new_user(), new_user()
    overrides = {"data_dir": str(tmp_path / "data"), **storage_overrides}
    written = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-c", WRITE_WITH_THE_PREVIOUS_RELEASE, json.dumps(overrides), alice, bob],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": package}))
    assert written.returncode == 0, written.stderr
    stored = json.loads(written.stdout)
    assert stored["schema"] == 3, "written by the previous release"

    app = await start_app(settings=make_settings())
    status, page = await app.api.get(BASE, token(alice))
    assert status == 200
    assert [n["id"] for n in page["notifications"]] == stored["ids"][alice][::-1]
    assert [n["read"] for n in page["notifications"]] == [False, False, True]
    assert (page["total"], page["unreadCount"]) == (3, 2)
    status, counts = await app.api.get(f"{BASE}/unread-count", token(bob))
    assert counts == {"count": 3, "byPriority": {"low": 1, "medium": 0, "high": 1, "critical": 1}}
    status, preferences = await app.api.get(f"{BASE}/settings", token(alice))
    assert preferences["channels"]["call_completed"]["enabled"] is False
    newer = await app.api.notify(alice, title="After the upgrade")
    assert (await app.store.get(alice, ObjectId(newer["id"])))["seq"] == 4

    status, answer = await app.api.get("/api/broadcasts", token(alice))
    assert [b["id"] for b in answer["broadcasts"]] == [stored["broadcast"]]
    [broadcast] = await app.store.active_broadcasts(10, tenants.DEFAULT)
    assert (str(broadcast["_id"]), broadcast["audience"]) == (stored["broadcast"], tenants.DEFAULT)
    assert await app.store.active_broadcasts(10, "acme") == []
    assert await app.store.update_topic("north", [alice, bob], [], 10) == 2


def downgrade_to_schema_4(database, version: int = 4) -> None:
    """Notifications as schema 4 kept them, without escalation columns, and no escalations."""
    with sqlite3.connect(database, isolation_level=None) as connection:
        connection.executescript(f"""
            BEGIN;
            DROP TABLE escalations;
            DROP TABLE escalation_events;
            DROP INDEX notifications_escalation;
            DROP INDEX notifications_user_escalation;
            ALTER TABLE notifications DROP COLUMN escalation;
            ALTER TABLE notifications DROP COLUMN escalation_id;
            PRAGMA user_version = {version};
            COMMIT;""")


def downgrade_to_schema_3(database) -> None:
    """Keep broadcasts as schema 3 did, without an audience, and no topic memberships."""
    downgrade_to_schema_4(database, version=3)
    with sqlite3.connect(database, isolation_level=None) as connection:
        connection.executescript("""
            BEGIN;
            DROP TABLE topic_members;
            DROP INDEX broadcasts_audience;
            ALTER TABLE broadcasts DROP COLUMN audience;
            PRAGMA user_version = 3;
            COMMIT;""")


@bounded
async def test_a_schema_3_file_keeps_its_rows_and_its_broadcasts_are_the_default_tenants(
        start_app, make_settings):
    settings = make_settings(**{"storage.url": "embedded"})
    first = await start_app(settings=settings)
    user = new_user()
    created = [await first.api.notify(user, title=f"{index}") for index in range(3)]
    await first.api.post(f"{BASE}/{created[0]['id']}/read", token(user))
    status, broadcast = await first.api.post("/api/broadcasts", token(SERVICE, ["service"]),
                                             {"title": "Maintenance", "message": "22:00 UTC"})
    assert status == 201
    status, before = await first.api.get(BASE, token(user))
    await first.stop()
    database = settings.data_path / "notify.db"
    downgrade_to_schema_3(database)

    second = await start_app(settings=settings)
    status, after = await second.api.get(BASE, token(user))
    assert after == before and (after["total"], after["unreadCount"]) == (3, 2)
    status, answer = await second.api.get("/api/broadcasts", token(user))
    assert answer["broadcasts"] == [broadcast]
    assert [b["audience"] for b in await second.store.active_broadcasts(10)] == [tenants.DEFAULT]
    assert await second.store.update_topic(tenants.key("acme", "north"), [user], [], 10) == 1
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = [row[1] for row in connection.execute("PRAGMA table_info(broadcasts)")]
        assert columns[-1] == "audience"


@bounded
async def test_a_schema_4_file_keeps_its_notifications_and_takes_escalations(start_app,
                                                                            make_settings):
    policy = {"call_escalation": {"steps": [{"after_seconds": 60, "to": {"users": ["x"]}}]}}
    settings = make_settings(**{"storage.url": "embedded"}, escalations=policy)
    first = await start_app(settings=settings)
    user = new_user()
    created = [await first.api.notify(user, title=f"{index}") for index in range(2)]
    status, before = await first.api.get(BASE, token(user))
    await first.stop()
    database = settings.data_path / "notify.db"
    downgrade_to_schema_4(database)

    second = await start_app(settings=settings)
    status, after = await second.api.get(BASE, token(user))
    assert after == before and [n["id"] for n in after["notifications"]] == [
        c["id"] for c in reversed(created)]
    escalated = await second.api.notify(user, type="call_escalation", escalationKey="call:1")
    assert escalated["escalation"]["state"] == "open"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 5


@bounded
async def test_start_up_refuses_a_mongodb_url_nobody_answers_on(make_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(**{"storage.url": f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                "mongodb.server_selection_timeout_seconds": 0.3})
    app = NotifyApp(settings)
    with pytest.raises(StartupError) as caught:
        await app.open_storage()
    await app.stop()
    assert "storage.url" in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


@bounded
async def test_an_unusable_data_folder_is_named_at_start_up(make_settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    app = NotifyApp(make_settings(**{"storage.url": "embedded", "data_dir": str(blocker / "data")}))
    with pytest.raises(StartupError) as caught:
        await app.open_storage()
    await app.stop()
    assert str(blocker) in str(caught.value) and "storage.url" in str(caught.value)


async def write_legacy_folder(data_dir, users: list[str]) -> list[str]:
    """Data as the earlier embedded default left it: nx-27017 files under data_dir/mongo."""
    child = Nx27017Child(data_dir)
    url = await child.start()
    settings = load_settings(None, environ={}, overrides={"storage.url": url})
    store = MongoStore.connect(url, settings.mongodb)
    try:
        await store.open()
        drafts = [Draft(user_id=user, type="payment_received", title="Old", message=f"old {i}",
                        priority="high") for i in range(3) for user in users]
        created = await store.insert_many(drafts)
        await store.mark_read(users[0], created[0].document["_id"])
        await store.update_preferences(users[0], {"call_completed": {"enabled": False}})
        await store.events.insert_one({  # as that release kept an event id: raw, no owner
            "_id": "legacy-event", "type": "payment.received", "state": "done",
            "notifications": [str(c.document["_id"]) for c in created], "created_at": utcnow()})
        return [str(c.document["_id"]) for c in created]
    finally:
        await store.close()
        await child.stop()


@pytest.mark.timeout(120)
async def test_an_nx27017_data_folder_is_refused_until_imported_then_served(start_app, make_settings, tmp_path):
    settings = make_settings(**{"storage.url": "embedded"})
    alice, bob = new_user(), new_user()
    legacy_ids = await write_legacy_folder(settings.data_path, [alice, bob])

    with pytest.raises(StartupError) as caught:
        await NotifyApp(settings).open_storage()
    assert "mojavox-notify import-nx27017" in str(caught.value)
    assert str(settings.data_path / "mongo") in str(caught.value)

    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"data_dir: {settings.data_path}\n", encoding="utf-8")
    imported = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-m", "mojavox_notify", "import-nx27017", "--settings", str(settings_file)],
        capture_output=True, text=True, timeout=90))
    assert imported.returncode == 0, imported.stderr
    assert "imported 6 notifications of 2 users" in imported.stdout
    assert (settings.data_path / "mongo" / IMPORTED_MARKER).exists()

    app = await start_app(settings=settings)
    status, page = await app.api.get(BASE, token(alice))
    assert sorted(n["id"] for n in page["notifications"]) == sorted(legacy_ids[0::2])
    assert page["unreadCount"] == 2 and page["total"] == 3
    newer = await app.api.notify(alice, title="After import")
    assert (await app.store.get(alice, ObjectId(newer["id"])))["seq"] == 4
    status, preferences = await app.api.get(f"{BASE}/settings", token(alice))
    assert preferences["channels"]["call_completed"]["enabled"] is False
    assert (await app.store.event("event:legacy-event"))["state"] == "done"

    again = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-m", "mojavox_notify", "import-nx27017", "--settings", str(settings_file)],
        capture_output=True, text=True, timeout=90))
    assert again.returncode == 2 and "nothing to import" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_import_nx27017_without_the_importer_extra_says_which_extra_to_install(tmp_path):
    legacy = tmp_path / "data" / "mongo"
    legacy.mkdir(parents=True)
    (legacy / "notifications.db").write_bytes(b"")  # a folder the earlier default left
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    # The command as it runs where nx-27017 was never installed: the package cannot be imported.
    without_nx27017 = ("import sys; sys.modules['nx_27017'] = None; "
                       "from mojavox_notify.cli import main; sys.exit(main())")
    result = subprocess.run(
        [sys.executable, "-c", without_nx27017, "import-nx27017", "--settings", str(settings_file)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'mojavox-notify[importer]'" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (legacy / IMPORTED_MARKER).exists()


def thread_trips(store, *runners: str) -> list[str]:
    """The names of the functions `store` sends to its storage threads through `runners`
    (`_write`, `_read`) from now on, in order."""
    trips: list[str] = []
    for name in runners:
        run = getattr(store, name)

        async def recorded(function, *args, run=run):
            trips.append(function.__name__)
            return await run(function, *args)

        setattr(store, name, recorded)
    return trips


def _drafts(user: str, count: int) -> list[Draft]:
    return [Draft(user_id=user, type="payment_received", title="Paid", message=f"{index}",
                  priority="high") for index in range(count)]


@bounded
async def test_small_embedded_operations_run_on_the_event_loop_unless_they_would_wait(make_settings):
    async with embedded_store(make_settings, sqlite_inline_limit=8, busy_timeout_seconds=5) as store:
        on_threads = thread_trips(store, "_write", "_read")
        user = new_user()
        await store.update_preferences(user, {"call_completed": {"enabled": False}})
        on_threads.clear()
        created = await store.insert_many(_drafts(user, 8))
        preferences = await store.preferences_of_many([user])
        state = await store.state(user)
        assert on_threads == []  # all three on the loop
        assert (state.seq, state.total, state.unread["high"]) == (8, 8, 8)
        assert [record.document["seq"] for record in created] == list(range(1, 9))
        assert preferences[user]["call_completed"].enabled is False

        created = await store.insert_many(_drafts(user, 9))  # past the limit: the writer thread
        assert on_threads == ["_insert_many"]
        assert created[-1].document["seq"] == 17

        # Another process's write in progress: the insertion waits for its turn, tried again
        # from the loop, which goes on serving meanwhile.
        on_threads.clear()
        with held_write_turn(store):
            waiting = asyncio.ensure_future(store.insert_many(_drafts(user, 1)))
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.sleep(0.2)
            assert loop.time() - started < 0.3, "the loop did not wait for the lock"
            assert not waiting.done()
        assert (await waiting)[0].document["seq"] == 18
        assert on_threads == []

        # A broken connection of the loop's: the thread does the work, the loop opens anew.
        on_threads.clear()
        store._inline.close()
        assert (await store.insert_many(_drafts(user, 1)))[0].document["seq"] == 19
        assert on_threads == ["_insert_many"]
        assert (await store.insert_many(_drafts(user, 1)))[0].document["seq"] == 20
        assert on_threads == ["_insert_many"]
        assert [d["seq"] for d in await store.after(user, 0, 100)] == list(range(1, 21))


@bounded
async def test_a_small_insertion_gives_up_when_another_process_keeps_the_write_turn(make_settings):
    async with embedded_store(make_settings, operation_timeout_seconds=0.3,
                              busy_timeout_seconds=0.2) as store:
        user = new_user()
        with held_write_turn(store):
            started = asyncio.get_running_loop().time()
            with pytest.raises(StorageUnavailableError, match="embedded storage"):
                await store.insert_many(_drafts(user, 1))
            assert 0.45 <= asyncio.get_running_loop().time() - started < 0.9
        # The given-up one may still be stored by its batch (like a thread's write that timed
        # out); either way the next one gets the next number.
        later = (await store.insert_many(_drafts(user, 1)))[0].document["seq"]
        assert [d["seq"] for d in await store.after(user, 0, 10)] == list(range(1, later + 1))


@bounded
async def test_a_create_waiting_for_the_turn_goes_between_the_parts_of_a_bulk_write(make_settings):
    """A bulk write (the escalation timers' batches) gives way between two of its parts to a
    write of this process waiting for the turn, instead of holding it for the whole batch."""
    async with embedded_store(make_settings) as store:
        user = new_user()
        await store.insert_many(_drafts(user, 1))
        happened: list = []
        begun = threading.Event()

        def bulk(connection, way):
            for part in range(40):
                _write_a_part(connection, way, part, happened)
                happened.append(part)
                begun.set()

        writing = asyncio.ensure_future(store._execution.bulk(bulk))
        await asyncio.get_running_loop().run_in_executor(None, begun.wait)
        [created] = await store.insert_many(_drafts(user, 1))
        happened.append("created")
        await writing
        assert created.document["seq"] == 2
        assert "gave way" in happened
        assert happened.index("created") < happened.index(20), happened


def test_waiting_for_the_turn_is_seen_by_every_bulk_write_and_bulk_writes_not_by_each_other(
        tmp_path):
    """A bulk writer's probe takes no lock, so two of them (workers firing their shares of a
    burst) never mistake each other for a waiting write; a waiter is seen by both."""
    database = tmp_path / "notify.db"
    first, second, waiters = WaitingProbe(database), WaitingProbe(database), TurnWaiters(database)
    try:
        assert not first() and not second()
        with waiters.waiting():
            with waiters.waiting():  # two writes of one process: one mark
                assert first() and second()
            assert first() and second()
        assert not first() and not second()
    finally:
        for lock in (first, second, waiters):
            lock.close()


def _write_a_part(connection, way, part: int, happened: list) -> None:
    """One part of a test's bulk write (the write lock held for 10 ms), after giving way
    (noted in `happened`) when a write waits for the turn."""
    if part and way.wanted():
        happened.append("gave way")
        way.give_way()
    with transaction(connection):
        connection.execute("DELETE FROM heartbeat WHERE 0")
        time.sleep(0.01)


# A create in another process sharing the file: opens it, says so, creates once told to.
OTHER_PROCESS_CREATE = """
import asyncio, sys
from mojavox_notify.model import Draft
from mojavox_notify.settings import StorageSettings
from mojavox_notify.store.sqlite import SqliteStore

async def main(path, user):
    store = SqliteStore(path, StorageSettings(busy_timeout_seconds=10))
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    await store.insert_many([Draft(user_id=user, type="payment_received", title="Paid",
                                   message="from the other process", priority="high")])
    await store.close()
    print("created", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@bounded
async def test_a_create_of_another_process_goes_between_the_parts_of_a_bulk_write(make_settings):
    """Escalation timers in a process of their own (escalation_timers.own_process) write their
    bursts while the serving process creates: a create waiting there is seen here, through the
    shared waiting lock, and goes between two parts instead of after the whole bulk write."""
    async with embedded_store(make_settings) as store:
        user = new_user()
        other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS_CREATE, str(store.path), user],
                                 cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline().strip() == "ready"
            happened: list = []
            begun = threading.Event()

            def bulk(connection, way):
                for part in range(300):  # 3 s at most
                    _write_a_part(connection, way, part, happened)
                    begun.set()
                    if connection.execute("SELECT count(*) FROM notifications WHERE user_id = ?",
                                          (user,)).fetchone()[0]:
                        happened.append(("created by", part))
                        return

            writing = asyncio.ensure_future(store._execution.bulk(bulk))
            await asyncio.get_running_loop().run_in_executor(None, begun.wait)
            told_at = len(happened)
            other.stdin.write("go\n")
            other.stdin.flush()
            await writing
            assert "gave way" in happened[told_at:], happened
            [(_, part)] = [entry for entry in happened if isinstance(entry, tuple)]
            assert part < 50, happened  # within half a second, not after the 300 parts
            assert (await asyncio.get_running_loop().run_in_executor(
                None, other.stdout.readline)).strip() == "created"
        finally:
            other.kill()
            other.wait(10)


@contextlib.contextmanager
def held_write_turn(store):
    """Another process's write in progress: its flock on the store's turn file."""
    lock = os.open(store.path.with_name(store.path.name + "-writer.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)


@bounded
async def test_with_synchronous_full_insertions_stay_on_the_writer_thread(make_settings):
    async with embedded_store(make_settings, sqlite_synchronous="full") as store:
        on_threads = thread_trips(store, "_write")
        await store.insert_many(_drafts(new_user(), 1))
        assert on_threads == ["_insert_many"]
