"""Background tasks start again after a failure nobody foresaw, and /metrics counts it.

Each test injects the unforeseen failure where the audit traced one: the storage watchdog on a
non-storage exception, the broker's listener when the pool's `disconnect()` raises inside its
own error handling.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from mojavox_notify.errors import StorageUnavailableError
from mojavox_notify.supervision import Supervisor

from .support.tokens import token

bounded = pytest.mark.timeout(60)


async def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def restarts_of(app, task: str) -> float:
    status, text = await app.api.get("/metrics", token("ops", ["admin"]))
    assert status == 200
    found = re.search(rf'mojavox_background_restarts_total{{task="{task}"}} ([0-9.]+)', text)
    return float(found.group(1)) if found else 0.0


@bounded
async def test_a_task_that_fails_is_run_again_with_backoff_until_it_returns():
    supervisor = Supervisor()
    runs = []

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) < 3:
            raise RuntimeError(f"unforeseen #{len(runs)}")

    await asyncio.wait_for(supervisor.spawn("flaky", flaky), 5)
    assert len(runs) == 3 and supervisor.restarts["flaky"] == 2
    assert runs[2] - runs[1] > runs[1] - runs[0] > 0, "the wait doubles"


@bounded
async def test_a_supervised_task_stops_when_cancelled():
    supervisor = Supervisor()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = supervisor.spawn("forever", forever)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.restarts["forever"] == 0


@bounded
async def test_the_storage_watchdog_survives_an_unforeseen_failure_and_health_recovers(start_app):
    app = await start_app(**{"storage.probe_interval_seconds": 0.1})
    real_probe = app.store.probe
    failures = [StorageUnavailableError("the disk went away (injected)"),
                RuntimeError("a bug in a probe (injected)")]

    async def probe() -> None:
        if failures:
            raise failures.pop(0)
        await real_probe()

    app.store.probe = probe
    assert await eventually(lambda: _status(app, 503)), "the first failure is reported"
    assert await eventually(lambda: _status(app, 200)), "healthy again after the restart"
    assert await restarts_of(app, "storage_watchdog") == 1


async def _status(app, wanted: int) -> bool:
    status, _ = await app.api.get("/healthz")
    return status == wanted


@bounded
async def test_the_broker_listener_survives_a_failing_disconnect_during_a_redis_outage(
        start_app, own_redis):
    app = await start_app(**{"redis.url": own_redis.url, "redis.reconnect_max_seconds": 0.5})
    pool = app.redis.client.connection_pool
    real_disconnect = pool.disconnect
    broke = []

    async def disconnect(*args, **kwargs):
        if not broke:
            broke.append(1)
            raise RuntimeError("disconnect failed (injected)")
        return await real_disconnect(*args, **kwargs)

    pool.disconnect = disconnect
    own_redis.kill()

    async def failed_disconnecting() -> bool:
        return not app.broker.healthy and bool(broke)

    async def healthy() -> bool:
        return app.broker.healthy

    assert await eventually(failed_disconnecting, 10)
    own_redis.start()
    assert await eventually(healthy, 15), "the listener came back with Redis"
    assert await restarts_of(app, "broker_listener") >= 1
