"""Timeline lines reported from the socket path (`delivered`): a socket must never wait for
storage, so they are queued here and written in batches by a background task. Each carries a
`once` key, so a line reported by two tabs, or again after a restart, is stored once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import StorageUnavailableError
from ..store import NotificationStore

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
#: Lines kept while storage is away; past this the oldest are dropped (and counted in the log).
MAX_QUEUED = 50_000
#: `once` keys remembered to skip repeats before they reach storage.
MAX_REMEMBERED = 100_000


class Journal:
    def __init__(self, store: NotificationStore):
        self.store = store
        self._queued: list[dict[str, Any]] = []
        self._remembered: dict[str, None] = {}
        self._wake = asyncio.Event()

    def record(self, line: dict[str, Any]) -> None:
        """Queue a line (never blocks)."""
        once = line.get("once")
        if once is not None:
            if once in self._remembered:
                return
            self._remembered[once] = None
            if len(self._remembered) > MAX_REMEMBERED:
                del self._remembered[next(iter(self._remembered))]
        self._queued.append(line)
        if len(self._queued) > MAX_QUEUED:
            del self._queued[0]
            log.warning("escalation timeline: storage is behind; dropped the oldest line")
        self._wake.set()

    async def flush(self) -> None:
        """Write what is queued; on a storage failure it stays queued for the next flush."""
        lines, self._queued = self._queued, []
        if not lines:
            return
        try:
            await self.store.add_escalation_events(lines)
        except StorageUnavailableError:
            self._queued[:0] = lines
            raise

    async def run(self) -> None:
        """Flush at most every FLUSH_SECONDS while lines come in (a supervised task)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except StorageUnavailableError as error:
                log.warning("escalation timeline not written yet: %s", error.message)
                self._wake.set()
                await asyncio.sleep(1.0)
