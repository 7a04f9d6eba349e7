"""What every pub/sub backend shares (python-socketio's `PubSubManager` is the model): each
backend only transmits batches and listens.

- A message reaches this process's own receiver at once and is published for the others,
  which skip their own batches by origin: sockets on the publishing process never wait for
  the round trip, and keep receiving while the backend is away.
- Publishes made while one is on its way follow together, in order, in one transmission.
- While the backend is away nothing published reaches the other processes. So when the
  backend answers again, a `Resync` names the users whose messages the others missed, and
  every socket of this process resyncs from storage, since it may have missed theirs. A
  notification is published only after it is stored, so nothing stored stays missing.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from typing import Callable, Iterable

from ..coalesce import Coalescer
from .base import Broker, Receiver, deliver
from .messages import Message, NotOurs, Resync, decode, encode

log = logging.getLogger(__name__)

#: Messages of one publish (one creation, e.g. a 1,000-user alert) travel together, this many at
#: most per batch.
MAX_BATCH = 200
#: Batches sent in one transmission at most (the publishes queued during the previous one).
MAX_PIPELINE = 256
#: Past this many users missed while the backend was away, every socket resyncs instead.
MAX_REMEMBERED_USERS = 10_000


class PubSubBroker(Broker):
    #: The backend's errors that mean "away": a publish that meets one is remembered, not raised.
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self.origin = os.urandom(6).hex()
        self.source = self.name  # where messages come from, for the logs
        self._own_prefix = self.origin.encode() + b"|"
        self._receiver: Receiver | None = None
        self._missed: set[str] | None = set()  # users not published to others; None: everyone
        self._publishes = Coalescer(self._publish_queued, MAX_PIPELINE, weight=len)

    # -- what a backend writes ------------------------------------------------------------------

    @property
    @abstractmethod
    def available(self) -> bool:
        """Whether the backend answered last time (cached, no I/O)."""

    @abstractmethod
    async def _transmit(self, batches: list[bytes]) -> None:
        """Send encoded batches to every process, in order; raise one of `errors` on failure."""

    def _lost(self, error: BaseException) -> None:
        """A publish met `error`: note that the backend is away."""

    # -- publishing -----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.available

    async def publish_many(self, messages: list[Message]) -> None:
        for message in messages:
            deliver(self._receiver, message)
        if not self.available:
            self._remember(messages)
            return
        batches = [encode(self.origin, messages[start:start + MAX_BATCH])
                   for start in range(0, len(messages), MAX_BATCH)]
        if not await self._publishes(batches):
            self._remember(messages)

    async def _publish_queued(self, queued: list[list[bytes]]) -> list[bool]:
        """The batches of every publish that queued meanwhile, in their order, in one
        transmission. On failure each publisher remembers whom the others missed (True:
        published)."""
        try:
            await self._transmit([batch for publish in queued for batch in publish])
        except self.errors as error:
            self._lost(error)
            return [False] * len(queued)
        return [True] * len(queued)

    def _remember(self, messages: Iterable[Message]) -> None:
        """Note whom the other processes missed; a message for every socket concerns everyone
        (they reload their broadcasts on a resync of everyone)."""
        if self._missed is None:
            return
        for message in messages:
            if message.addressees is None:
                self._missed = None
                return
            self._missed.update(message.addressees)
        if len(self._missed) > MAX_REMEMBERED_USERS:
            self._missed = None

    # -- receiving ------------------------------------------------------------------------------

    def _heard(self, data: bytes, current: Callable[[], bool] = lambda: True) -> None:
        """A batch from the backend: delivered unless it is our own (delivered when published),
        while `current()` holds (a listener that outlived its cancellation stops)."""
        if data.startswith(self._own_prefix):
            return
        try:
            _, messages = decode(data)
        except NotOurs as error:
            log.warning("ignored a malformed message on %s: %s", self.source, error)
            return
        for message in messages:
            if not current():
                return
            deliver(self._receiver, message)

    async def _recovered(self) -> None:
        """The backend answers again: tell the other processes which of our messages they
        missed, then resync our own sockets (they may have missed theirs)."""
        await self._publish_missed()
        deliver(self._receiver, Resync(users=None))

    async def _publish_missed(self) -> None:
        """Raises the backend's error when it is away again (the missed stay remembered)."""
        missed, self._missed = self._missed, set()
        if missed is not None and not missed:
            return
        try:
            await self._transmit([encode(self.origin, [
                Resync(users=None if missed is None else sorted(missed))])])
        except self.errors:
            if missed is None or self._missed is None:
                self._missed = None
            else:
                self._missed |= missed
            raise
