"""Draining the push outbox: each recorded push reaches every browser of its user, or is given up.

Creation records a push job in storage with the notification (see `NotificationStore.insert_many`);
this worker claims due jobs with a lease (so several processes never send one twice), sends to
each of the user's subscriptions that does not have it yet, and then finishes the job or
reschedules it: after the push service's `Retry-After` on 429/5xx, else with exponential backoff.
A 404/410 endpoint is forgotten. A job older than `push.give_up_after_seconds` (or its
priority's TTL) is given up. Nothing of this runs on a request's path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

from bson import ObjectId

from .errors import NotFoundError, StorageUnavailableError, ValidationError
from .model import to_payload, utcnow
from .push import (TTL_SECONDS, EndpointUnresolved, PushOutcome, PushSender, check_endpoint,
                   push_payload)
from .settings import PushSettings
from .store import NotificationStore, PushJob

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # longer than a job's sends can take (each send times out after 10 s)
POLL_SECONDS = 1.0  # how often rescheduled jobs are looked for when nothing wakes the worker
STOP_GRACE_SECONDS = 12.0  # a send times out after 10 s
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts + 1`: doubling from 2 s to 5 min, with jitter."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** attempts) * random.uniform(0.75, 1.25)


class PushWorker:
    def __init__(self, store: NotificationStore, sender: PushSender, settings: PushSettings):
        self._store = store
        self._sender = sender
        self._settings = settings
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.stats: Counter = Counter()  # sent, failed, removed, retried, given_up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """New jobs were recorded: look now rather than at the next poll."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Let the sends in flight finish and their jobs be finished or rescheduled (a job cut
        off mid-send would wait out its lease), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                jobs = await self._store.claim_pushes(self._settings.concurrency, LEASE_SECONDS)
            except StorageUnavailableError:
                jobs = []
            if jobs:
                await asyncio.gather(*(self._deliver(job) for job in jobs))
                continue
            self._wakeup.clear()
            try:
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _deliver(self, job: PushJob) -> None:
        try:
            await self._attempt(job)
        except StorageUnavailableError as error:
            log.warning("push job %s: storage unavailable (%s); its lease expires and it is "
                        "tried again", job.id, error.message)
        except Exception:  # one broken job must not stop the worker
            log.exception("push job %s failed unexpectedly; it is tried again after its lease", job.id)

    async def _attempt(self, job: PushJob) -> None:
        age = (utcnow() - job.created_at).total_seconds()
        if age > min(self._settings.give_up_after_seconds, TTL_SECONDS[job.priority]):
            self.stats["given_up"] += 1
            log.warning("push of notification %s to %s given up after %.0f s and %d attempts",
                        job.notification_id, job.user_id, age, job.attempts)
            await self._store.finish_push(job.id)
            return
        try:
            notification = to_payload(await self._store.get(job.user_id, ObjectId(job.notification_id)))
        except NotFoundError:  # deleted or expired meanwhile: nothing to push
            await self._store.finish_push(job.id)
            return
        payload = push_payload(notification, self._settings.payload, self._settings.icon)
        subscriptions = [subscription for subscription in
                         await self._store.push_subscriptions_of(job.user_id)
                         if subscription["endpoint"] not in job.done]
        outcomes = await asyncio.gather(*(self._send(subscription, payload, job.priority)
                                          for subscription in subscriptions))
        done = list(job.done)
        retry_in: float | None = None
        for subscription, outcome in zip(subscriptions, outcomes):
            endpoint = subscription["endpoint"]
            if outcome.kind == "retry":
                delay = outcome.retry_after if outcome.retry_after is not None else backoff(job.attempts)
                retry_in = max(retry_in or 0.0, delay)
                self.stats["retried"] += 1
                log.info("push of %s to %s: %s; retrying in %.1f s", job.notification_id,
                         _host(endpoint), outcome.status or outcome.detail, delay)
                continue
            done.append(endpoint)
            if outcome.kind == "delivered":
                self.stats["sent"] += 1
                log.info("pushed notification %s to %s (%s)", job.notification_id, _host(endpoint),
                         outcome.status)
            elif outcome.kind == "gone":
                self.stats["removed"] += 1
                await self._store.forget_push_subscription(endpoint)
                log.info("push subscription on %s is gone (%s): removed", _host(endpoint), outcome.status)
            else:
                self.stats["failed"] += 1
                log.warning("push of %s to %s failed for good: %s %s", job.notification_id,
                            _host(endpoint), outcome.status, outcome.detail)
        if retry_in is None:
            await self._store.finish_push(job.id)
        else:
            await self._store.reschedule_push(job.id, retry_in, job.attempts + 1, done)

    async def _send(self, subscription: dict, payload: str, priority: str) -> PushOutcome:
        """Check the endpoint again right before sending (its host may now resolve elsewhere)."""
        try:
            await check_endpoint(subscription["endpoint"], self._settings.allowed_insecure_hosts,
                                 must_resolve=True)
        except ValidationError as error:
            return PushOutcome("failed", detail=error.message)
        except EndpointUnresolved as error:
            return PushOutcome("retry", detail=f"host {error} does not resolve")
        return await self._sender.send(subscription, payload, priority)


def _host(endpoint: str) -> str:
    """An endpoint for logs: its host only (the path identifies a browser)."""
    return endpoint.split("/")[2] if endpoint.count("/") >= 2 else endpoint
