"""Fixtures: real apps on real sockets over either storage engine.

Tests run on the embedded SQLite engine (a file of their own) unless they ask for
`storage_engine` "mongo": then the MongoDB engine talks over the wire to one real nx-27017
server shared by the session, in a database of the test's own. Fresh user ids everywhere, so
nothing is wiped between tests.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from mojavox_notify.app import NotifyApp
from mojavox_notify.push import new_vapid_pair
from mojavox_notify.settings import load_settings

from .support.apps import start_on_loopback
from .support.logwatch import CredentialWatch
from .support.nats import NatsServer
from .support.nx27017 import Nx27017Server
from .support.paths import PLUGINS_DIR
from .support.pushservice import PushServiceStandIn
from .support.redis import RedisServer
from .support.tokens import TEST_SECRET


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory):
    """A real nx-27017 server (MongoDB's wire protocol) shared by the whole session."""
    server = Nx27017Server(tmp_path_factory.mktemp("storage"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def storage_engine(request) -> str:
    """"sqlite" unless a test is parametrized with `both_engines` (or indirectly)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage_overrides(request, storage_engine, tmp_path) -> dict:
    """Settings that put a test's app on its own storage of the chosen engine."""
    if storage_engine == "sqlite":
        return {"storage.url": f"sqlite:///{tmp_path / 'notify.db'}"}
    return {"storage.url": request.getfixturevalue("mongo_url"),
            "mongodb.database": f"test_{uuid.uuid4().hex[:12]}"}


@pytest.fixture
def make_settings(storage_overrides, tmp_path):
    """Settings for a test app: its own storage, a test secret, the shipped plugins."""

    def make(**overrides):
        values = {
            "data_dir": str(tmp_path / "data"),
            **storage_overrides,
            "auth.secret": TEST_SECRET,
            "plugins.directory": str(PLUGINS_DIR),
            "retention.cleanup_interval_minutes": 0,
            "server.host": "127.0.0.1",
        }
        values.update(overrides)
        return load_settings(None, environ={}, overrides=values)

    return make


@pytest.fixture
async def start_app(make_settings):
    """`await start_app(**settings_overrides)` → a running NotifyApp on a free loopback port.

    Pass `plugins=[(name, module)]` and `discover_plugins=False` to choose its plugins exactly,
    and `resolver` (a tornado Resolver) to answer its DNS lookups for push endpoints.
    Every app started here is stopped after the test.
    """
    started = []

    async def start(settings=None, plugins=(), discover_plugins=True, resolver=None, **overrides):
        settings = settings or make_settings(**overrides)
        app = NotifyApp(settings, plugins=plugins, discover_plugins=discover_plugins,
                        resolver=resolver)
        started.append(await start_on_loopback(app))
        return app

    yield start
    for app in reversed(started):
        async with asyncio.timeout(30):
            await app.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell that a test failed (the
    browser tests save screenshots then)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def credential_watch():
    """One CredentialWatch on the root logger for the whole session (INFO and up reach it)."""
    watch = CredentialWatch()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    yield watch
    root.removeHandler(watch)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_token_in_any_log(credential_watch):
    """No test may leave a token in a log line, whatever path it takes (issue 8)."""
    credential_watch.leaks.clear()
    yield
    assert credential_watch.leaks == [], "a token reached the log"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server shared by the session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test alone, which it may kill and start again on the same port."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One real `nats-server -js` shared by the session; tests isolate themselves by stream and
    subject names of their own."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path):
    """A nats-server of this test alone, which it may kill and start again on the same port and
    JetStream store."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_overrides(redis_server) -> dict:
    """Settings that put a test's apps on the shared Redis, under a key prefix of their own."""
    return {"redis.url": redis_server.url, "redis.key_prefix": f"test-{uuid.uuid4().hex[:12]}"}


@pytest.fixture
async def push_service():
    """A started stand-in; `push_service.settings` are the app settings that push to it."""
    public, private = new_vapid_pair()
    service = PushServiceStandIn(vapid_public_key=public)
    await service.start()
    service.settings = {"push.vapid_public_key": public, "push.vapid_private_key": private,
                        "push.allowed_insecure_hosts": ["127.0.0.1"],
                        "rate_limits.notifications_per_minute": 0}
    yield service
    await service.stop()
