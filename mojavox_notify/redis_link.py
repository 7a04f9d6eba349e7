"""One process's connection to Redis, shared by the broker, the rate limits and presence.

Whether Redis answers is known here without asking it on every request: the broker's
subscription is the watchdog (it is connected, or it is reconnecting with backoff), and any
command that fails marks Redis down at once. While Redis is down the callers fall back to what
one process can do alone (local delivery, per-process limits, local presence) instead of
waiting on a timeout for every request.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlparse, urlunparse

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .settings import RedisSettings

log = logging.getLogger(__name__)

#: What a failing Redis command raises (a refused or reset connection, a timeout, a bad reply).
REDIS_ERRORS = (aioredis.RedisError, OSError, TimeoutError)
#: Connections one process opens to Redis at most (the subscription and publishing take one
#: each; rate limits and presence share the rest).
MAX_CONNECTIONS = 64


def redacted(url: str) -> str:
    """The URL without its password, for logs, /healthz and `check`."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.hostname or ""
    netloc = f"{parsed.username + ':' if parsed.username else ':'}***@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


class RedisLink:
    def __init__(self, settings: RedisSettings):
        self.settings = settings
        self.description = redacted(settings.url)
        self.prefix = settings.key_prefix
        # No silent retries: redis-py would otherwise reconnect a subscription behind our back
        # (messages published meanwhile would be lost unnoticed) and make a request wait out
        # several attempts. Failures surface at once; the broker reconnects with backoff.
        # A burst of commands past MAX_CONNECTIONS waits for a free connection (up to the
        # timeout) instead of failing: a full pool is not Redis being away (measured: 32
        # concurrent posters made redis-py's plain pool refuse, every socket resynced).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.url, max_connections=MAX_CONNECTIONS, timeout=settings.timeout_seconds,
            socket_timeout=settings.timeout_seconds, socket_connect_timeout=settings.timeout_seconds,
            health_check_interval=0, retry=Retry(NoBackoff(), 0))
        self.client = aioredis.Redis(connection_pool=pool)
        self.available = False
        self.error: str | None = "not connected yet"
        self._down_since: float | None = time.monotonic()
        self._was_up = False

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def up(self) -> None:
        if not self.available and self._was_up:
            log.warning("redis %s answers again after %.1f s", self.description,
                        time.monotonic() - self._down_since)
        self.available = True
        self._was_up = True
        self.error = None
        self._down_since = None

    def down(self, error: BaseException | str) -> None:
        """A command or the subscription failed: Redis counts as unavailable until the broker's
        subscription is back."""
        text = str(error) or type(error).__name__
        if self.available:
            log.error("redis %s unavailable: %s", self.description, text)
        self.available = False
        self.error = text
        if self._down_since is None:
            self._down_since = time.monotonic()

    async def ping(self) -> float:
        """Round-trip time of one PING in seconds; raises a REDIS_ERRORS error when it does not
        answer within `redis.timeout_seconds`."""
        started = time.perf_counter()
        await self.client.ping()
        return time.perf_counter() - started

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ok": self.available, "backend": "redis", "url": self.description}
        if not self.available:
            report["error"] = self.error
            report["unavailableForSeconds"] = round(time.monotonic() - self._down_since, 1)
        return report

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)
