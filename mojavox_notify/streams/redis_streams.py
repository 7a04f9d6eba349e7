"""A Redis stream read by a consumer group (`ingest.redis_streams[]`).

Each process is one consumer of the group, named `<host>:<pid>` (`:worker-<i>` under
`serve --workers`), so `XINFO CONSUMERS` tells them apart. It reads with `XREADGROUP … BLOCK`
on a connection of its own (a blocking read must not hold one of the broker's), and settles
each batch by its verdicts: stored entries are acknowledged (XACK), dead ones are added to
the dead-letter stream with the error and their original fields, then acknowledged; retried
ones stay pending. Entries left pending longer than `claim_idle_seconds`, by a
consumer that died or by this one (a retry), are taken over with XAUTOCLAIM; one delivered
`max_deliveries` times that still fails for its own sake (not storage being away: a transient
verdict) goes to the dead letter. Redis being away is waited out as the broker does:
reconnect with backoff, logged once when lost and once when back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..redis_link import REDIS_ERRORS, redacted
from ..settings import RedisSettings, Settings
from ..stream_settings import RedisStreamSettings
from .intake import StreamIntake
from .source import (DEAD, RETRY, STORED, SourceStats, StreamEntry, StreamSource,
                     StreamUnavailableError, Verdict)

log = logging.getLogger(__name__)

KIND = "redis"
#: The backlog gauges (pending, lag, oldest entry) are refreshed this often while running.
BACKLOG_SECONDS = 2.0
#: Retried batches that stored nothing wait this long before the next read, doubling up to
#: `redis.reconnect_max_seconds`: a storage outage is not a busy loop.
RETRY_FIRST_SECONDS = 0.1
#: Fields the dead letter adds to an entry's own.
DEAD_FIELDS = ("error", "original_id", "original_stream", "deliveries")


def _client(redis: RedisSettings, read_seconds: float) -> aioredis.Redis:
    """A client of the source's own: `read_seconds` covers a blocking read; no silent retries
    (a failure is seen at once and waited out with backoff, as by the broker)."""
    return aioredis.Redis.from_url(
        redis.url, max_connections=2, socket_connect_timeout=redis.timeout_seconds,
        socket_timeout=read_seconds, health_check_interval=0, retry=Retry(NoBackoff(), 0))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _age_seconds(entry_id: str, now_ms: float) -> float:
    """How long ago an entry was added: its id starts with the milliseconds of its XADD."""
    return max(0.0, (now_ms - int(entry_id.split("-", 1)[0])) / 1000)


class RedisStreamSource(StreamSource):
    def __init__(self, settings: RedisStreamSettings, redis: RedisSettings, intake: StreamIntake,
                 consumer: str):
        self.settings = settings
        self.name = f"{KIND}:{settings.stream}"
        self.stats = SourceStats()
        self._redis = redis
        self._intake = intake
        self.consumer = consumer
        self._client: aioredis.Redis | None = None
        self._running = False
        self._ok = False
        self._error: str | None = "not connected yet"
        self._down_since: float | None = None
        self._claim_cursor = "0-0"
        self._claim_due = 0.0
        self._backlog_due = 0.0
        self._retry_delay = 0.0

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        delay = 0.0
        try:
            while True:
                if delay:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                self._client = _client(self._redis, self.settings.block_ms / 1000
                                       + self._redis.timeout_seconds * 4)
                try:
                    await self._create_group()
                    self._up()
                    delay = 0.0
                    while True:
                        await self._step()
                except REDIS_ERRORS as error:
                    self._down(error)
                    delay = min(self._redis.reconnect_max_seconds, max(0.1, delay * 2))
                finally:
                    await _close_quietly(self._client)
                    self._client = None
        finally:
            self._running = False

    async def _create_group(self) -> None:
        """The group, reading the stream from its start, and the stream too if missing; a
        dead-letter key holding something else is refused here (the dead letter of an entry
        would fail, and the entry be read again and again)."""
        kind = _text(await self._client.type(self.settings.dead_letter_stream))
        if kind not in ("none", "stream"):
            raise aioredis.ResponseError(f"the dead letter {self.settings.dead_letter_stream} "
                                         f"is a {kind}, not a stream")
        try:
            await self._client.xgroup_create(self.settings.stream, self.settings.group, id="0",
                                             mkstream=True)
        except aioredis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _step(self) -> None:
        """One batch: entries left idle first (when a look for them is due), else new ones."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._backlog_due:
            await self._refresh_backlog()
            self._backlog_due = loop.time() + BACKLOG_SECONDS
        entries, fields = await self._claim_idle() if loop.time() >= self._claim_due else ([], {})
        if not entries:
            entries, fields = await self._read_new()
        if not entries:
            return
        verdicts = await self._intake.handle(self.name, entries)
        await self._settle(entries, verdicts, fields)
        stored_any = any(verdict.kind == STORED for verdict in verdicts)
        if any(verdict.kind == RETRY for verdict in verdicts) and not stored_any:
            self._retry_delay = min(self._redis.reconnect_max_seconds,
                                    max(RETRY_FIRST_SECONDS, self._retry_delay * 2))
            await asyncio.sleep(self._retry_delay)
        else:
            self._retry_delay = 0.0

    async def _read_new(self) -> tuple[list[StreamEntry], dict[str, dict]]:
        answer = await self._client.xreadgroup(
            self.settings.group, self.consumer, {self.settings.stream: ">"},
            count=self.settings.batch, block=self.settings.block_ms)
        read = answer[0][1] if answer else []
        return self._entries(read, {})

    async def _claim_idle(self) -> tuple[list[StreamEntry], dict[str, dict]]:
        """Entries pending longer than `claim_idle_seconds` (a dead consumer's, or this one's
        left for a retry), taken over a batch at a time from where the last look stopped;
        their delivery counts (XAUTOCLAIM counts this one) come from XPENDING, in one round
        trip."""
        settings = self.settings
        next_cursor, claimed, *_ = await self._client.xautoclaim(
            settings.stream, settings.group, self.consumer,
            min_idle_time=int(settings.claim_idle_seconds * 1000), start_id=self._claim_cursor,
            count=settings.batch)
        self._claim_cursor = _text(next_cursor)
        if self._claim_cursor == "0-0":  # looked through all: next look after another while
            self._claim_due = asyncio.get_running_loop().time() + settings.claim_idle_seconds / 2
        if not claimed:
            return [], {}
        async with self._client.pipeline(transaction=False) as pipeline:
            for entry_id, _ in claimed:  # each its own range: the pending list has others too
                pipeline.xpending_range(settings.stream, settings.group, entry_id, entry_id, 1)
            answers = await pipeline.execute()
        counts = {_text(item["message_id"]): item["times_delivered"]
                  for answer in answers for item in answer}
        log.info("%s: took over %d entries left pending for more than %g s", self.name,
                 len(claimed), settings.claim_idle_seconds)
        return self._entries(claimed, counts)

    def _entries(self, read: list, counts: dict[str, int]
                 ) -> tuple[list[StreamEntry], dict[str, dict]]:
        """The entries as the intake takes them, and each one's own fields (for its dead
        letter); a count missing from `counts` is a first delivery."""
        entries, fields = [], {}
        for raw_id, raw_fields in read:
            entry_id = _text(raw_id)
            values = {_text(key): value for key, value in (raw_fields or {}).items()}
            tenant = values.get("tenant")
            entries.append(StreamEntry(entry_id, values.get("event"),
                                       _text(tenant) if tenant is not None else None,
                                       counts.get(entry_id, 1)))
            fields[entry_id] = values
        return entries, fields

    async def _settle(self, entries: list[StreamEntry], verdicts: list[Verdict],
                      fields: dict[str, dict]) -> None:
        """Acknowledge the stored, dead-letter and acknowledge the dead (and the retried that
        reached `max_deliveries` failing for their own sake), the dead letters first: an entry
        is never acknowledged without its dead letter (a failure between the two leaves it
        pending, and it may be dead-lettered twice). Leave the rest pending."""
        settings = self.settings
        done: list[str] = []
        dead: list[tuple[StreamEntry, str]] = []
        retried = 0
        for entry, verdict in zip(entries, verdicts):
            if verdict.kind == STORED:
                done.append(entry.entry_id)
            elif verdict.kind == DEAD:
                dead.append((entry, verdict.error or "refused"))
            elif entry.deliveries >= settings.max_deliveries and not verdict.transient:
                dead.append((entry, f"delivered {entry.deliveries} times "
                             f"(ingest.redis_streams max_deliveries); last error: {verdict.error}"))
            else:
                retried += 1
        if not done and not dead:
            self.stats.failed += retried
            return
        if dead:  # all dead letters added before any of them is acknowledged
            async with self._client.pipeline(transaction=False) as pipeline:
                for entry, error in dead:
                    pipeline.xadd(settings.dead_letter_stream, {
                        **fields[entry.entry_id], "error": error, "original_id": entry.entry_id,
                        "original_stream": settings.stream, "deliveries": entry.deliveries})
                    done.append(entry.entry_id)
                await pipeline.execute()
        await self._client.xack(settings.stream, settings.group, *done)
        for entry, error in dead:
            log.warning("%s: entry %s sent to %s: %s", self.name, entry.entry_id,
                        settings.dead_letter_stream, error)
        self.stats.processed += len(done) - len(dead)
        self.stats.dead_lettered += len(dead)
        self.stats.failed += retried

    # -- health and backlog ------------------------------------------------------------------

    async def _refresh_backlog(self, client: aioredis.Redis | None = None) -> None:
        """The group's pending count and lag, and the age of its oldest unacknowledged entry
        (the oldest pending one, or the first not delivered yet); on the loop's client unless
        given another."""
        settings = self.settings
        client = client or self._client
        groups = await client.xinfo_groups(settings.stream)
        group = next((g for g in groups if _text(g["name"]) == settings.group), None)
        if group is None:
            self.stats.pending = self.stats.lag = self.stats.oldest_unacknowledged_seconds = None
            return
        self.stats.pending = group["pending"]
        self.stats.lag = group.get("lag")
        oldest: list[str] = []
        if group["pending"]:
            summary = await client.xpending(settings.stream, settings.group)
            if summary.get("min"):
                oldest.append(_text(summary["min"]))
        if self.stats.lag is None or self.stats.lag:
            following = await client.xrange(
                settings.stream, f"({_text(group['last-delivered-id'])}", "+", count=1)
            if following:
                oldest.append(_text(following[0][0]))
        now_ms = time.time() * 1000
        self.stats.oldest_unacknowledged_seconds = (
            max(_age_seconds(entry_id, now_ms) for entry_id in oldest) if oldest else 0.0)

    def _up(self) -> None:
        if not self._ok and self._down_since is not None:
            log.warning("%s: redis %s answers again after %.1f s", self.name,
                        redacted(self._redis.url), time.monotonic() - self._down_since)
        self._ok, self._error, self._down_since = True, None, None

    def _down(self, error: BaseException) -> None:
        text = str(error) or type(error).__name__
        if self._ok or self._down_since is None:
            log.error("%s: redis %s unavailable (%s); reconnecting with backoff", self.name,
                      redacted(self._redis.url), text)
            self._down_since = time.monotonic()
        self._ok, self._error = False, text

    async def health(self) -> dict[str, Any]:
        if not self._running:
            await self._probe()
        report: dict[str, Any] = {"name": self.name, "ok": self._ok, "group": self.settings.group,
                                  "consumer": self.consumer}
        if not self._ok:
            report["error"] = self._error
        else:
            report.update(pending=self.stats.pending, lag=self.stats.lag,
                          oldestUnacknowledgedSeconds=self.stats.oldest_unacknowledged_seconds)
        return report

    async def _probe(self) -> None:
        """Asked right now (`check`, or between restarts of the loop): does Redis answer, and
        how far behind is the group. On a client of its own: the loop may start meanwhile."""
        client = _client(self._redis, self._redis.timeout_seconds * 4)
        try:
            await client.ping()
            if await client.exists(self.settings.stream):
                await self._refresh_backlog(client)
            self._ok, self._error = True, None
        except REDIS_ERRORS as error:
            self._ok, self._error = False, str(error) or type(error).__name__
        finally:
            await _close_quietly(client)


async def _close_quietly(client: aioredis.Redis | None) -> None:
    if client is None:
        return
    try:
        await client.aclose(close_connection_pool=True)
    except Exception:  # closing a connection to a server that is gone: nothing to do
        pass


# -- the kind's entry points (streams/__init__.py) ---------------------------------------------

def names(settings: Settings) -> list[str]:
    return [f"{KIND}:{stream.stream}" for stream in settings.ingest.redis_streams]


def build(settings: Settings, intake: StreamIntake, consumer: str) -> list[StreamSource]:
    return [RedisStreamSource(stream, settings.redis, intake, consumer)
            for stream in settings.ingest.redis_streams]


async def publish(settings: Settings, name: str, event: dict[str, Any]) -> str:
    """XADD one event to the configured stream `name` (`emit --stream`); its entry id."""
    stream = next(s for s in settings.ingest.redis_streams if f"{KIND}:{s.stream}" == name)
    client = _client(settings.redis, settings.redis.timeout_seconds * 4)
    try:
        entry_id = await client.xadd(stream.stream, {"event": json.dumps(event)})
    except REDIS_ERRORS as error:
        raise StreamUnavailableError(f"{name}: redis {redacted(settings.redis.url)} does not "
                                     f"answer: {error or type(error).__name__}") from None
    finally:
        await _close_quietly(client)
    return _text(entry_id)
