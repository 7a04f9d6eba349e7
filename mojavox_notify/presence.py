"""Presence: is a user connected anywhere, and with how many sockets?

Push's `only_when_offline` asks it. `HubPresence` knows this process's sockets only;
`RedisPresence` also knows every other instance's: each socket is a member of its user's sorted
set in Redis, scored by when it expires. Each process re-registers its sockets every third of
`redis.presence_ttl_seconds`, so the sockets of a process that died unannounced stop counting
after at most that long. While Redis does not answer, this process's own sockets are the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

from .coalesce import Coalescer
from .hub import Connection, Hub
from .redis_link import REDIS_ERRORS, RedisLink
from .supervision import Supervisor

log = logging.getLogger(__name__)

REFRESH_BATCH = 1000
#: Joins and leaves kept while Redis is away, written when it is back (past this, leaves are
#: left to expire by their score).
MAX_PENDING = 100_000


class HubPresence:
    """This process's sockets: exact for a single instance."""

    def __init__(self, hub: Hub):
        self._hub = hub

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def online_many(self, user_ids: Iterable[str]) -> set[str]:
        """The users among `user_ids` with at least one live socket."""
        return {user for user in user_ids if self._hub.connections_of(user) > 0}

    async def count(self, user_id: str) -> int:
        """How many live sockets the user has."""
        return self._hub.connections_of(user_id)

    async def elsewhere(self, user_id: str) -> int:
        """How many live sockets the user has on other processes (none known here)."""
        return 0


class RedisPresence(HubPresence):
    """Every instance's sockets, from Redis; this process's alone while Redis is away."""

    def __init__(self, hub: Hub, link: RedisLink, origin: str,
                 supervisor: Supervisor | None = None):
        super().__init__(hub)
        self._supervisor = supervisor or Supervisor()
        # A socket's connect asks for its user's sockets elsewhere; the asks of a reconnect
        # storm (a worker died: a thousand tabs at once) go to Redis together, one pipeline a
        # round trip, instead of a pooled connection each (which ran out, and a pool that ran
        # out counted as Redis being away: every socket resynced).
        self._lookups = Coalescer(self._others, REFRESH_BATCH)
        self._link = link
        self._origin = origin
        self._ttl_ms = int(link.settings.presence_ttl_seconds * 1000)
        self._pending: dict[tuple[str, str], bool] = {}  # (user, member) → joined (else left)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        hub.observers.append(self)

    def _member(self, connection: Connection) -> str:
        return f"{self._origin}:{getattr(connection, 'client_id', id(connection))}"

    def _key(self, user_id: str) -> str:
        return self._link.key("presence", user_id)

    # -- the hub's observer ------------------------------------------------------------------

    def joined(self, connection: Connection) -> None:
        self._pending[(connection.user_id, self._member(connection))] = True
        self._wake.set()

    def left(self, connection: Connection) -> None:
        self._pending[(connection.user_id, self._member(connection))] = False
        self._wake.set()

    # -- background writes -------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [self._supervisor.spawn("presence_flush", self._flush_loop),
                       self._supervisor.spawn("presence_refresh", self._refresh_loop)]

    async def stop(self) -> None:
        """Unregister what is pending (sockets closed at shutdown), then stop writing. The
        loops are asked to end rather than cancelled: redis-py may swallow a cancellation that
        lands inside a command."""
        self._stopping.set()
        self._wake.set()
        try:
            async with asyncio.timeout(self._link.settings.timeout_seconds * 4):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
        self._tasks = []

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._stopping.is_set():
                return

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        if not self._link.available:
            self._keep(pending)
            return
        expires = _now_ms() + self._ttl_ms
        try:
            async with self._link.client.pipeline(transaction=False) as pipeline:
                for (user, member), present in pending.items():
                    key = self._key(user)
                    if present:
                        pipeline.zadd(key, {member: expires})
                        pipeline.pexpire(key, self._ttl_ms)
                    else:
                        pipeline.zrem(key, member)
                await pipeline.execute()
        except REDIS_ERRORS as error:
            self._link.down(error)
            self._keep(pending)

    def _keep(self, pending: dict[tuple[str, str], bool]) -> None:
        """Keep unwritten joins and leaves for when Redis is back (newer ones win), so a socket
        closed during an outage stops counting at once instead of after its TTL."""
        if len(self._pending) + len(pending) <= MAX_PENDING:
            self._pending = {**pending, **self._pending}

    async def _refresh_loop(self) -> None:
        """Every third of the TTL, and at once when Redis is back after an outage."""
        interval = self._link.settings.presence_ttl_seconds / 3
        loop = asyncio.get_running_loop()
        refreshed_at, was_available = loop.time(), self._link.available
        while True:
            try:
                async with asyncio.timeout(min(interval, 1.0)):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            available = self._link.available
            if available and (not was_available or loop.time() - refreshed_at >= interval):
                await self._flush()
                await self._refresh()
                refreshed_at = loop.time()
            was_available = available

    async def _refresh(self) -> None:
        """Extend every local socket's membership (re-adding those lost while Redis was away)
        and drop expired members of those users."""
        connections = list(self._hub.connections())
        now = _now_ms()
        try:
            for start in range(0, len(connections), REFRESH_BATCH):
                async with self._link.client.pipeline(transaction=False) as pipeline:
                    for connection in connections[start:start + REFRESH_BATCH]:
                        key = self._key(connection.user_id)
                        pipeline.zremrangebyscore(key, "-inf", now)
                        pipeline.zadd(key, {self._member(connection): now + self._ttl_ms})
                        pipeline.pexpire(key, self._ttl_ms)
                    await pipeline.execute()
        except REDIS_ERRORS as error:
            self._link.down(error)

    # -- questions ------------------------------------------------------------------------------

    async def online_many(self, user_ids: Iterable[str]) -> set[str]:
        users = set(user_ids)
        online = await super().online_many(users)
        elsewhere = sorted(users - online)
        if not elsewhere or not self._link.available:
            return online
        try:
            members = await self._others(elsewhere)
        except REDIS_ERRORS as error:
            self._link.down(error)
            return online
        return online | {user for user, count in zip(elsewhere, members) if count}

    async def count(self, user_id: str) -> int:
        """This process's sockets of the user (exact) plus the other instances' (from Redis)."""
        return await super().count(user_id) + await self.elsewhere(user_id)

    async def elsewhere(self, user_id: str) -> int:
        """The user's sockets other processes registered (0 while Redis is away)."""
        if not self._link.available:
            return 0
        try:
            return await self._lookups(user_id)
        except REDIS_ERRORS as error:
            self._link.down(error)
            return 0

    async def _others(self, user_ids: list[str]) -> list[int]:
        """For each user, the unexpired sockets other processes registered."""
        now = _now_ms()
        async with self._link.client.pipeline(transaction=False) as pipeline:
            for user in user_ids:
                pipeline.zrangebyscore(self._key(user), now, "+inf")
            answers = await pipeline.execute()
        mine = f"{self._origin}:".encode()
        return [sum(1 for member in members if not member.startswith(mine)) for members in answers]


def _now_ms() -> int:
    return int(time.time() * 1000)


def build_presence(hub: Hub, link: RedisLink | None, origin: str = "",
                   supervisor: Supervisor | None = None) -> HubPresence:
    return HubPresence(hub) if link is None else RedisPresence(hub, link, origin, supervisor)
