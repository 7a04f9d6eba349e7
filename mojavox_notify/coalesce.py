"""Calls that arrive while one is being served are served together next, in one batch.

The embedded engine's writes and reads run on threads; each trip costs a thread hand-off and
the GIL back (waiting up to Python's switch interval while the event loop is busy), and each
write a transaction of its own. Under load those trips, not the work, limited a process: at
1,000 creates/s most of its time went to hand-offs. Coalesced, the creations that queue during
one transaction are stored by the next in one, so the busier the server, the fewer trips per
notification, while a lone call waits for nothing but its own. The Redis broker's publishes
go the same way: one pipeline, one round trip and one connection for all that queued.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """`await coalescer(item)`: `serve(items)` answers a batch of items (one result each, in
    order); items queued while a batch is served form the next one, up to `limit` items (an
    item's `weight` counts towards it: a 1,000-draft alert fills a batch on its own)."""

    def __init__(self, serve: Callable[[list[Item]], Awaitable[list[Result]]], limit: int,
                 weight: Callable[[Item], int] = lambda item: 1):
        self._serve = serve
        self._limit = limit
        self._weight = weight
        self._queued: list[tuple[Item, asyncio.Future]] = []
        self._serving: asyncio.Task | None = None

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((item, future))
        if self._serving is None:
            self._serving = loop.create_task(self._serve_queued())
        return await future

    async def many(self, items: list[Item]) -> list[Result]:
        """Several items queued at once, so they are served together (in one batch, unless they
        weigh more than `limit`): a stream's batch of events in one transaction. Raises what
        their batch raised."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queued.extend(zip(items, futures))
        if self._serving is None and items:
            self._serving = loop.create_task(self._serve_queued())
        return list(await asyncio.gather(*futures))

    async def _serve_queued(self) -> None:
        batch: list[tuple[Item, asyncio.Future]] = []
        try:
            while self._queued:
                batch = self._next_batch()
                if not batch:
                    break
                try:
                    results = await self._serve([item for item, _ in batch])
                except Exception as error:  # every caller of the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():  # its caller may have given up waiting
                        future.set_result(result)
        finally:
            self._serving = None
            for _, future in batch + self._queued:  # cancelled (the loop is closing)
                future.cancel()
            self._queued = []

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """The next items whose callers still wait: one whose caller gave up (a timeout
        cancelled its wait) is dropped unserved, so a 503 never turns into a late write."""
        self._queued = [(item, future) for item, future in self._queued if not future.done()]
        taken, weight = 0, 0
        for item, _ in self._queued:
            weight += self._weight(item)
            if taken and weight > self._limit:
                break
            taken += 1
        batch, self._queued = self._queued[:taken], self._queued[taken:]
        return batch
