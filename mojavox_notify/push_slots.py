"""Shares of the push sends in flight: at most N at once per key (a push service, a user).

A send to a push service that never answers holds its connection until the send timeout
(10 s). Without shares, one dead host, or one user with many endpoints on it, would take every
connection and every job of the worker, and hold up an escalation to someone else. With them,
a send whose key has its share in flight waits at most a moment and is then put off (the
worker tries it again later), so such a key keeps only its own share.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from typing import AsyncIterator


class SlotsTaken(Exception):
    """Every slot of this key stayed taken for the whole wait."""


class Slots:
    def __init__(self, per_key: int, wait_seconds: float):
        self._per_key = per_key
        self._wait_seconds = wait_seconds
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._interested: Counter = Counter()  # holders and waiters, so idle keys are dropped

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """One of `key`'s slots for the block; `SlotsTaken` when none frees up in time."""
        semaphore = self._semaphores.setdefault(key, asyncio.Semaphore(self._per_key))
        self._interested[key] += 1
        try:
            try:
                async with asyncio.timeout(self._wait_seconds):
                    await semaphore.acquire()
            except TimeoutError:
                raise SlotsTaken(key) from None
            try:
                yield
            finally:
                semaphore.release()
        finally:
            self._interested[key] -= 1
            if not self._interested[key]:
                del self._interested[key], self._semaphores[key]
