"""Whether storage works right now, known without asking it on every health check.

The watchdog probes the store (a read and a small write, so a full disk counts) every
`storage.probe_interval_seconds`, and the engines report every failed operation to it at once.
`/healthz` answers from this cached state. When storage has been lost for longer than
`storage.exit_after_seconds`, `lost` is set so `serve` can exit non-zero and let a supervisor
restart the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .errors import StorageUnavailableError
from .store import NotificationStore
from .supervision import Supervisor

log = logging.getLogger(__name__)


class StorageHealth:
    def __init__(self, store: NotificationStore, probe_interval: float, probe_timeout: float,
                 exit_after: float, supervisor: Supervisor | None = None):
        self._store = store
        self._supervisor = supervisor or Supervisor()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._exit_after = exit_after
        self.ok = True
        self.error: str | None = None
        self._failing_since: float | None = None
        self.lost = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        store.on_failure = self.failed

    def start(self) -> None:
        self._task = self._supervisor.spawn("storage_watchdog", self._watch)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def failed(self, error: BaseException) -> None:
        """An operation failed: storage counts as unavailable until a probe succeeds."""
        if self.ok:
            log.error("storage unavailable: %s", error)
        self.ok = False
        self.error = str(error)
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def _recovered(self) -> None:
        if not self.ok:
            log.warning("storage is back after %.1f s", time.monotonic() - self._failing_since)
        self.ok = True
        self.error = None
        self._failing_since = None

    async def probe(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._store.probe()
        except (StorageUnavailableError, TimeoutError) as error:
            self.failed(error if str(error) else StorageUnavailableError(
                f"no answer within {self._probe_timeout:g} s"))
            return False
        self._recovered()
        return True

    async def _watch(self) -> None:
        while not self._stopping:
            await self.probe()
            if self._failing_since is not None and self._exit_after and \
                    time.monotonic() - self._failing_since > self._exit_after:
                log.critical("storage has been unavailable for more than %g s "
                             "(storage.exit_after_seconds): stopping", self._exit_after)
                self.lost.set()
                return
            # While failing, probe more often so recovery is noticed within a fraction of it.
            await asyncio.sleep(self._probe_interval if self.ok else min(self._probe_interval, 0.5))

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ok": self.ok, "backend": self._store.description}
        if not self.ok:
            report["error"] = self.error
            report["unavailableForSeconds"] = round(time.monotonic() - self._failing_since, 1)
        return report
