"""Redis pub/sub between processes: one channel, `<redis.key_prefix>:fanout`, one
subscription per process. Only transmitting and listening are Redis's (`pubsub.py` has the
rest): publishes that queued meanwhile go in one pipeline, and the subscription reconnects with
backoff, proving itself alive with PINGs while idle."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from ..redis_link import REDIS_ERRORS, RedisLink
from ..supervision import Supervisor
from .base import Receiver
from .pubsub import PubSubBroker

log = logging.getLogger(__name__)


class RedisBroker(PubSubBroker):
    name = "redis"
    errors = REDIS_ERRORS

    def __init__(self, link: RedisLink, supervisor: Supervisor | None = None):
        super().__init__()
        self.link = link
        self._supervisor = supervisor or Supervisor()
        self.channel = self.source = link.key("fanout")
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self._heartbeat = max(1.0, link.settings.timeout_seconds * 2)
        self._stopping = False
        # Each listener serves one generation: one that outlives its cancellation (redis-py may
        # swallow a cancellation inside a command) stops at its next step instead of delivering
        # messages twice beside its successor.
        self._generation = 0

    @property
    def available(self) -> bool:
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

    async def _transmit(self, batches: list[bytes]) -> None:
        """One round trip and one connection however many requests publish at once."""
        if len(batches) == 1:
            await self.link.client.publish(self.channel, batches[0])
            return
        async with self.link.client.pipeline(transaction=False) as pipeline:
            for batch in batches:
                pipeline.publish(self.channel, batch)
            await pipeline.execute()

    def _lost(self, error: BaseException) -> None:
        """A publish failed: drop the subscription too, so recovery takes the one path below
        (reconnect with backoff, then resync)."""
        self.link.down(error)
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
            if message["type"] == "message":
                self._heard(message["data"], lambda: self._current(generation))

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
    except Exception:  # closing a connection to a server that is gone: nothing to do
        pass
