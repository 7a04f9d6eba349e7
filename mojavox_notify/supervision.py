"""Background tasks that start again when they fail in a way nobody foresaw.

The server relies on a few loops for as long as it runs: the storage watchdog, the push worker,
the Redis broker's listener, presence and cleanup. Each handles the failures it expects (storage
or Redis away); anything else used to end its task silently, and then, say, `/healthz` never
recovered from a 503 once the watchdog had died. `Supervisor.spawn(name, run)` runs
`await run()` in a task: when it raises, the failure is logged with its traceback, counted
(`mojavox_background_restarts{task}` in /metrics), and `run` starts again after a backoff that
doubles from RESTART_FIRST_SECONDS to RESTART_MAX_SECONDS, back to the first once a run has
lasted HEALTHY_SECONDS. A `run` that returns is done; cancelling the task (at shutdown) stops it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

RESTART_FIRST_SECONDS = 0.1
RESTART_MAX_SECONDS = 30.0
HEALTHY_SECONDS = 60.0


class Supervisor:
    def __init__(self) -> None:
        #: Restarts so far, by task name (read by /metrics).
        self.restarts: Counter[str] = Counter()

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """A task running `run` under supervision (see the module docstring)."""
        return asyncio.get_running_loop().create_task(self._supervise(name, run),
                                                      name=f"mojavox:{name}")

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_FIRST_SECONDS
        while True:
            started = loop.time()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if loop.time() - started >= HEALTHY_SECONDS:
                    delay = RESTART_FIRST_SECONDS
                self.restarts[name] += 1
                log.exception("background task %s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(RESTART_MAX_SECONDS, delay * 2)
