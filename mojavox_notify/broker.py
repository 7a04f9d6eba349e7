"""Fan-out between the service and every process's hub.

The service publishes messages addressed to one user after it has persisted the change; every
instance's hub receives them and hands them to that user's sockets. The hub only knows the
`Broker` interface: the in-process broker serves a single instance, the Redis one several
processes and hosts.

Messages are dicts with a `kind` (`notification`, `read`, `read_all`, `deleted`, `broadcast`
or `resync`) and a `user_id` (empty for a `broadcast`, which is for every socket). A `resync`
message (`users`: a list, or None for everyone) tells the hub that live messages may have been
missed: the sockets concerned fill their gap from storage (and the process its broadcasts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable

import orjson

from .coalesce import Coalescer
from .redis_link import REDIS_ERRORS, RedisLink
from .supervision import Supervisor

log = logging.getLogger(__name__)

Message = dict[str, Any]
Receiver = Callable[[Message], None]

#: Positions of a message's fields on the wire (Redis): no key names are sent.
WIRE_FIELDS = ("kind", "user_id", "seq", "notification", "unread", "notification_id", "users",
               "at", "broadcast")
WIRE_VERSION = 1
#: Messages of one publish (one creation, e.g. a 1,000-user alert) travel together, this many at
#: most per Redis message.
MAX_BATCH = 200
#: Batches sent in one pipeline at most (the publishes queued during the previous round trip).
MAX_PIPELINE = 256
#: Past this many users missed while Redis was away, every socket resyncs instead.
MAX_REMEMBERED_USERS = 10_000


class Broker(ABC):
    """Publish user-addressed messages; deliver every published message to the receiver."""

    name = "broker"

    @abstractmethod
    async def start(self, receiver: Receiver) -> None:
        """Begin delivering published messages to `receiver` (which must not block)."""

    @abstractmethod
    async def publish(self, message: Message) -> None:
        """Send `message` (a JSON-able dict with a `user_id`) to every instance's receiver."""

    async def publish_many(self, messages: list[Message]) -> None:
        """Send several messages, in order (one round trip where the engine allows)."""
        for message in messages:
            await self.publish(message)

    @abstractmethod
    async def stop(self) -> None:
        """Stop delivering; pending messages may be dropped."""

    @property
    def healthy(self) -> bool:
        return True

    def report(self) -> dict[str, Any]:
        """For /healthz: `ok`, `backend` and, when not ok, the error (cached state, no I/O)."""
        return {"ok": self.healthy, "backend": self.name}


class InProcessBroker(Broker):
    """Delivers straight to this process's receiver: one instance, no network hop."""

    name = "in-process"

    def __init__(self) -> None:
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def publish(self, message: Message) -> None:
        deliver(self._receiver, message)

    async def publish_many(self, messages: list[Message]) -> None:
        for message in messages:
            deliver(self._receiver, message)

    async def stop(self) -> None:
        self._receiver = None


def deliver(receiver: Receiver | None, message: Message) -> None:
    if receiver is None:
        return
    try:
        receiver(message)
    except Exception:  # a broken receiver must not fail the publisher's request
        log.exception("delivering a %s message failed", message.get("kind"))


def encode(origin: str, messages: list[Message]) -> bytes:
    """Compact wire form of a batch: `<origin>|[version, [kind, user_id, seq, ...], ...]`, each
    message's fields by position without the trailing empty ones (orjson; the standard library
    for integers past 64 bits). The origin comes first so a process skips its own batches
    without decoding them."""
    wire: list[Any] = [WIRE_VERSION]
    for message in messages:
        fields = [message.get(name) for name in WIRE_FIELDS]
        while fields and fields[-1] is None:
            fields.pop()
        wire.append(fields)
    try:
        body = orjson.dumps(wire)
    except orjson.JSONEncodeError:
        body = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
    return origin.encode() + b"|" + body


def decode(data: bytes) -> tuple[str, list[Message]]:
    """(origin, messages) of `encode`'s output; ValueError when it is not one."""
    origin, separator, body = data.partition(b"|")
    if not separator:
        raise ValueError("not a MOJAVOX Notify broker message")
    try:
        wire = orjson.loads(body)
    except orjson.JSONDecodeError:
        wire = json.loads(body)  # integers past 64 bits
    if not isinstance(wire, list) or not wire or wire[0] != WIRE_VERSION or \
            not all(isinstance(fields, list) for fields in wire[1:]):
        raise ValueError("not a MOJAVOX Notify broker message")
    return origin.decode(), [{name: value for name, value in zip(WIRE_FIELDS, fields)
                              if value is not None} for fields in wire[1:]]


class RedisBroker(Broker):
    """Redis pub/sub: one channel, `<redis.key_prefix>:fanout`, one subscription per process.

    A message is handed to this process's own receiver at once and published for the others
    (which skip their own messages by origin), so sockets on the publishing process never wait
    for the Redis round trip, and keep receiving while Redis is away. Publishes made while one
    is on its way to Redis follow together, in order, in one pipeline.

    While Redis is away nothing published reaches the other processes; so when the subscription
    is back, every socket of this process resyncs from storage (it may have missed others'
    messages), and a `resync` message names the users whose messages this process could not
    publish meanwhile, so the other processes resync those sockets. Since a notification is
    published only after it is stored, nothing stored is missing from a socket afterwards.
    """

    name = "redis"

    def __init__(self, link: RedisLink, supervisor: Supervisor | None = None):
        self.link = link
        self._supervisor = supervisor or Supervisor()
        self.channel = link.key("fanout")
        self.origin = os.urandom(6).hex()
        self._own_prefix = self.origin.encode() + b"|"
        self._receiver: Receiver | None = None
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self._missed: set[str] | None = set()  # users not published to others; None: everyone
        self._publishes = Coalescer(self._publish_queued, MAX_PIPELINE, weight=len)
        self._heartbeat = max(1.0, link.settings.timeout_seconds * 2)
        self._stopping = False
        # Each listener serves one generation: one that outlives its cancellation (redis-py may
        # swallow a cancellation inside a command) stops at its next step instead of delivering
        # messages twice beside its successor.
        self._generation = 0

    @property
    def healthy(self) -> bool:
        return self.link.available

    def report(self) -> dict[str, Any]:
        return self.link.report()

    async def start(self, receiver: Receiver) -> None:
        """Subscribe; if Redis does not answer within a few timeouts, go on serving this
        process's sockets and keep reconnecting in the background."""
        self._receiver = receiver
        self._task = self._spawn_listener(self._generation)
        try:
            async with asyncio.timeout(self.link.settings.timeout_seconds * 4):
                await self._subscribed.wait()
        except TimeoutError:
            log.error("redis %s does not answer (%s); serving this process's sockets alone and "
                      "reconnecting in the background", self.link.description, self.link.error)

    async def publish(self, message: Message) -> None:
        await self.publish_many([message])

    async def publish_many(self, messages: list[Message]) -> None:
        for message in messages:
            deliver(self._receiver, message)
        if not self.link.available:
            self._remember(messages)
            return
        batches = [encode(self.origin, messages[start:start + MAX_BATCH])
                   for start in range(0, len(messages), MAX_BATCH)]
        if not await self._publishes(batches):
            self._remember(messages)

    async def _publish_queued(self, queued: list[list[bytes]]) -> list[bool]:
        """The batches of every publish that queued meanwhile, in their order, in one pipeline:
        one round trip and one connection however many requests publish at once. On failure
        each publisher remembers whom the others missed (True: published)."""
        batches = [batch for publish in queued for batch in publish]
        try:
            if len(batches) == 1:
                await self.link.client.publish(self.channel, batches[0])
            else:
                async with self.link.client.pipeline(transaction=False) as pipeline:
                    for batch in batches:
                        pipeline.publish(self.channel, batch)
                    await pipeline.execute()
        except REDIS_ERRORS as error:
            self.link.down(error)
            self._restart_listener()
            return [False] * len(queued)
        return [True] * len(queued)

    def _remember(self, messages: Iterable[Message]) -> None:
        """Note whom the other processes missed; a broadcast concerns everyone (they reload
        their broadcasts on a resync of everyone)."""
        if self._missed is None:
            return
        for message in messages:
            if message.get("kind") == "broadcast":
                self._missed = None
                return
            if "user_id" in message:
                self._missed.add(message["user_id"])
        if len(self._missed) > MAX_REMEMBERED_USERS:
            self._missed = None

    def _restart_listener(self) -> None:
        """A publish failed: drop the subscription too, so recovery takes the one path below
        (reconnect with backoff, then resync)."""
        if self._stopping or self._task is None:
            return
        self._generation += 1
        self._task.cancel()
        self._task = self._spawn_listener(self._generation, first_delay=0.1)

    def _spawn_listener(self, generation: int, first_delay: float = 0.0) -> asyncio.Task:
        """The subscription's loop, supervised: a failure it does not handle (not Redis being
        away) starts it again instead of ending fan-out from the other processes for good."""
        return self._supervisor.spawn(
            "broker_listener", lambda: self._listen(generation, first_delay))

    def _current(self, generation: int) -> bool:
        return not self._stopping and generation == self._generation

    async def _listen(self, generation: int, first_delay: float = 0.0) -> None:
        delay = first_delay
        cap = self.link.settings.reconnect_max_seconds
        while self._current(generation):
            if delay:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # From here on everything published reaches us: now fill what was missed.
                self.link.up()
                delay = 0.0
                await self._recovered()
                self._subscribed.set()
                await self._receive(pubsub, generation)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as error:
                self.link.down(error)
                delay = min(cap, max(0.1, delay * 2))
                # Pooled connections to a server that went away would each fail once more.
                await self.link.client.connection_pool.disconnect()
            finally:
                await _close_quietly(pubsub)

    async def _recovered(self) -> None:
        """Tell the other processes which of our messages they missed, then resync our own
        sockets (they may have missed theirs)."""
        await self._publish_missed()
        deliver(self._receiver, {"kind": "resync", "user_id": "", "users": None})

    async def _publish_missed(self) -> None:
        missed, self._missed = self._missed, set()
        if missed is None or missed:
            resync = {"kind": "resync", "user_id": "", "users": None if missed is None else sorted(missed)}
            try:
                await self.link.client.publish(self.channel, encode(self.origin, [resync]))
            except REDIS_ERRORS:
                if missed is None or self._missed is None:
                    self._missed = None
                else:
                    self._missed |= missed
                raise

    async def _receive(self, pubsub, generation: int) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while self._current(generation):
            if not self.link.available:
                # Another command failed (a rate limit, presence) while this subscription
                # stayed up: if Redis answers now, tell the others what we could not publish.
                await self.link.ping()
                self.link.up()
                await self._publish_missed()
            message = await pubsub.get_message(timeout=self._heartbeat)
            if message is None:
                # Idle: a PING proves the connection is alive (a vanished host sends no reset).
                if pinged and loop.time() - heard > self._heartbeat * 2:
                    raise TimeoutError(f"no answer to PING within {self._heartbeat * 2:g} s")
                if not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            heard, pinged = loop.time(), False
            data = message["data"]
            if message["type"] != "message" or data.startswith(self._own_prefix):
                continue  # our own batches were delivered here when published
            try:
                _, decoded = decode(data)
            except ValueError as error:
                log.warning("ignored a malformed message on %s: %s", self.channel, error)
                continue
            for each in decoded:
                if not self._current(generation):
                    return
                deliver(self._receiver, each)

    async def stop(self) -> None:
        self._stopping = True
        self._receiver = None
        if self._task is not None:
            self._task.cancel()
            try:
                async with asyncio.timeout(self.link.settings.timeout_seconds * 4):
                    await asyncio.gather(self._task, return_exceptions=True)
            except TimeoutError:
                log.warning("the redis listener did not stop within %g s",
                            self.link.settings.timeout_seconds * 4)
            self._task = None


async def _close_quietly(pubsub) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        pass


def build_broker(link: RedisLink | None, supervisor: Supervisor | None = None) -> Broker:
    return InProcessBroker() if link is None else RedisBroker(link, supervisor)
