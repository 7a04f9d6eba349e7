"""Measuring how long something held up the app's event loop, from outside, over /healthz."""

from __future__ import annotations

import asyncio
import time


class HealthWatch:
    """`async with HealthWatch(app) as watch:` asks /healthz over and over, on the app's own loop,
    while the body does something else there. `watch.longest` is the longest time from one
    answer to the next: a stall of the loop lands inside one of these intervals wherever it
    falls (during a health request or between two), so it is how long the body held up every
    other request. Idle, an interval is a few milliseconds."""

    PAUSE = 0.005

    def __init__(self, app):
        self.app = app
        self.longest = 0.0
        self._stop = False
        self._answered = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "HealthWatch":
        self._task = asyncio.get_running_loop().create_task(self._watch())
        await asyncio.wait_for(self._answered.wait(), 10)
        self.longest = 0.0  # the first answer waited for the connection to open
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._stop = True
        await self._task

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:  # once more after the stop: the interval the stop came in is measured too
            status, body = await self.app.api.get("/healthz")
            assert status == 200, body
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now
            self._answered.set()
            if self._stop:
                return
            await asyncio.sleep(self.PAUSE)
