"""Draining the push outbox: each recorded push reaches every browser of its user, or is given up.

Creation records a push job in storage with the notification (see `NotificationStore.insert_many`);
this worker claims due jobs with a lease (so several processes never send one twice) and works on
up to `push.concurrency` of them at once, claiming more as each one ends, so a slow job never
holds up the others. A job sends to each of the user's subscriptions that does not have it yet,
within the shares of `push_slots.py` (per push service, per user), and then finishes or is
rescheduled: after the push service's `Retry-After` on 429/5xx, else with exponential backoff. A
retry that would come after the job is given up (`push.give_up_after_seconds`, or its priority's
TTL if shorter) is not scheduled: that endpoint is given up at once. A 404/410 endpoint is
forgotten. When storage cannot save what a job sent, this process remembers it, so the job's
next attempt sends only to the rest. Nothing of this runs on a request's path.

A notification of an escalation is pushed with its escalation's id as the `Topic` (a newer push
of it replaces one still waiting at the push service), and the first push service to accept it
puts `notified` on the `push` channel in the escalation's timeline (once per notification).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from typing import Sequence
from urllib.parse import urlparse

from .errors import NotFoundError, StorageUnavailableError, ValidationError
from .ids import ObjectId
from .model import utcnow
from .wire.escalation import shown_of
from .wire.notification import to_payload
from .push import (SEND_TIMEOUT_SECONDS, SETTLED, TTL_SECONDS, PushOutcome, PushSender,
                   push_payload, push_topic)
from .push_addresses import check_url
from .push_slots import Slots, SlotsTaken
from .settings import PushSettings
from .store import NotificationStore, PushJob
from .supervision import Supervisor

log = logging.getLogger(__name__)

SLOT_WAIT_SECONDS = 1.0  # how long a send waits for a share of its push service or its user
LEASE_SECONDS = 60.0  # longer than an attempt can take: two slot waits, then one send
POLL_SECONDS = 1.0  # how often rescheduled jobs are looked for when nothing wakes the worker
STOP_GRACE_SECONDS = SEND_TIMEOUT_SECONDS + 2 * SLOT_WAIT_SECONDS
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0
MIN_RETRY_SECONDS = 1.0  # a Retry-After of 0 must not make a loop of sends
UNSAVED_JOBS_KEPT = 10_000


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts + 1`: doubling from 2 s to 5 min, with jitter."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** attempts) * random.uniform(0.75, 1.25)


class PushWorker:
    def __init__(self, store: NotificationStore, sender: PushSender, settings: PushSettings,
                 lease_seconds: float = LEASE_SECONDS, supervisor: Supervisor | None = None):
        """`lease_seconds`: how long a claimed job stays this process's before another may take
        it (a test that waits for a lease to run out makes it short). The claiming loop runs
        under `supervisor`: a failure nobody foresaw starts it again."""
        self._store = store
        self._supervisor = supervisor or Supervisor()
        self._sender = sender
        self._settings = settings
        self._lease_seconds = lease_seconds
        self._hosts = Slots(settings.concurrency_per_host, SLOT_WAIT_SECONDS)
        self._users = Slots(settings.concurrency_per_user, SLOT_WAIT_SECONDS)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: dict[str, asyncio.Task] = {}  # by job id
        self._unsaved: dict[str, list[str]] = {}  # job id → endpoints that have it, not stored
        self._stopping = False
        self.stats: Counter = Counter()  # sent, failed, removed, retried, given_up

    def start(self) -> None:
        self._task = self._supervisor.spawn("push_worker", self._run)

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
        """Keep up to `push.concurrency` jobs going: claim as many as there are free places,
        then wait until a job ends, new ones are recorded, or the poll interval passes."""
        while not self._stopping:
            self._wakeup.clear()
            free = self._settings.concurrency - len(self._running)
            if free > 0:
                for job in await self._claim(free):
                    self._begin(job)
            try:
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _claim(self, limit: int) -> list[PushJob]:
        """Due jobs, less those still going here (their lease ran out mid-attempt)."""
        try:
            jobs = await self._store.claim_pushes(limit, self._lease_seconds)
        except StorageUnavailableError:
            return []
        return [job for job in jobs if job.id not in self._running]

    def _begin(self, job: PushJob) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(job))
        self._running[job.id] = task
        task.add_done_callback(lambda _: self._ended(job.id))

    def _ended(self, job_id: str) -> None:
        del self._running[job_id]
        self._wakeup.set()

    async def _deliver(self, job: PushJob) -> None:
        try:
            await self._attempt(job)
        except StorageUnavailableError as error:
            log.warning("push job %s: storage unavailable (%s); its lease expires and it is "
                        "tried again", job.id, error.message)
        except Exception:  # one broken job must not stop the worker
            log.exception("push job %s failed unexpectedly; it is tried again after its lease", job.id)

    async def _attempt(self, job: PushJob) -> None:
        limit = min(self._settings.give_up_after_seconds, TTL_SECONDS[job.priority])
        age = (utcnow() - job.created_at).total_seconds()
        if age > limit:
            self.stats["given_up"] += 1
            log.warning("push of notification %s to %s given up after %.0f s and %d attempts",
                        job.notification_id, job.user_id, age, job.attempts)
            await self._finish(job)
            return
        try:
            stored = await self._store.get(job.user_id, ObjectId(job.notification_id))
        except NotFoundError:  # deleted or expired meanwhile: nothing to push
            await self._finish(job)
            return
        notification = to_payload(stored)
        payload = push_payload(notification, self._settings.payload, self._settings.icon)
        topic = push_topic(notification)
        done = list(dict.fromkeys([*job.done, *self._unsaved.get(job.id, ())]))
        subscriptions = [subscription for subscription in
                         await self._store.push_subscriptions_of(job.user_id)
                         if subscription["endpoint"] not in done]
        outcomes = await asyncio.gather(*(self._send(job, subscription, payload, topic)
                                          for subscription in subscriptions))
        if any(outcome.kind == "delivered" for outcome in outcomes):
            await self._notified(job, stored)
        left = limit - (utcnow() - job.created_at).total_seconds()
        retry_in, gone = self._settle(job, left, subscriptions, outcomes, done)
        try:
            for endpoint in gone:
                await self._store.forget_push_subscription(endpoint)
            if retry_in is None:
                await self._finish(job)
            else:
                await self._store.reschedule_push(job.id, retry_in, job.attempts + 1, done)
                self._unsaved.pop(job.id, None)
        except BaseException:
            self._remember_unsaved(job.id, done)
            raise

    def _settle(self, job: PushJob, left: float, subscriptions: list[dict],
                outcomes: Sequence[PushOutcome], done: list[str]) -> tuple[float | None, list[str]]:
        """Count and log each outcome, adding the endpoints that are over to `done`; (seconds
        until the job is tried again, or None when it is over; the endpoints that are gone)."""
        retry_in: float | None = None
        gone = []
        for subscription, outcome in zip(subscriptions, outcomes):
            endpoint = subscription["endpoint"]
            if outcome.kind == "retry":
                delay = self._retry_delay(outcome, job.attempts)
                if delay < left:
                    retry_in = max(retry_in or 0.0, delay)
                    self.stats["retried"] += 1
                    log.info("push of %s to %s: %s; retrying in %.1f s", job.notification_id,
                             _host(endpoint), outcome.status or outcome.detail, delay)
                    continue
                self.stats["failed"] += 1
                log.warning("push of %s to %s given up: %s, and a retry in %.0f s would come "
                            "after the push is given up (in %.0f s)", job.notification_id,
                            _host(endpoint), outcome.status or outcome.detail, delay, left)
            elif outcome.kind == "delivered":
                self.stats["sent"] += 1
                log.info("pushed notification %s to %s (%s)", job.notification_id, _host(endpoint),
                         outcome.status)
            elif outcome.kind == "gone":
                self.stats["removed"] += 1
                gone.append(endpoint)
                log.info("push subscription on %s is gone (%s): removed", _host(endpoint), outcome.status)
            else:
                self.stats["failed"] += 1
                log.warning("push of %s to %s failed for good: %s %s", job.notification_id,
                            _host(endpoint), outcome.status, outcome.detail)
            done.append(endpoint)
        return retry_in, gone

    @staticmethod
    def _retry_delay(outcome: PushOutcome, attempts: int) -> float:
        """The push service's Retry-After (at least MIN_RETRY_SECONDS), else our backoff."""
        if outcome.retry_after is None:
            return backoff(attempts)
        return max(MIN_RETRY_SECONDS, outcome.retry_after)

    async def _finish(self, job: PushJob) -> None:
        await self._store.finish_push(job.id)
        self._unsaved.pop(job.id, None)

    def _remember_unsaved(self, job_id: str, done: list[str]) -> None:
        """What a job sent when storage could not take it: its next attempt here skips those."""
        self._unsaved[job_id] = done
        while len(self._unsaved) > UNSAVED_JOBS_KEPT:
            del self._unsaved[next(iter(self._unsaved))]

    async def _notified(self, job: PushJob, stored: dict) -> None:
        """The escalation's timeline: this user was told by push (not for the push that says
        someone has it). A storage failure here loses the line, not the push."""
        part = stored.get("escalation")
        if part is None or shown_of(part)["state"] in SETTLED:
            return
        try:
            await self._store.add_escalation_events([{
                "escalation_id": part["id"], "at": int(time.time() * 1000), "event": "notified",
                "user_id": job.user_id, "step": part["step"], "channel": "push",
                "once": f"push:{job.notification_id}"}])
        except StorageUnavailableError as error:
            log.warning("push of %s: its escalation's timeline line is lost (%s)",
                        job.notification_id, error.message)

    async def _send(self, job: PushJob, subscription: dict, payload: str,
                    topic: str | None = None) -> PushOutcome:
        """Within the shares of the endpoint's push service and of the job's user. (Its
        addresses are checked as it connects: see push_addresses.PublicResolver.)"""
        endpoint = subscription["endpoint"]
        try:
            check_url(endpoint, self._settings.allowed_insecure_hosts)
        except ValidationError as error:
            return PushOutcome("failed", detail=error.message)
        try:
            async with self._users.hold(job.user_id), self._hosts.hold(_origin(endpoint)):
                return await self._sender.send(subscription, payload, job.priority, topic)
        except SlotsTaken as taken:
            return PushOutcome("retry", detail=f"the sends for {taken} are at their share; put off")


def _origin(endpoint: str) -> str:
    """The push service an endpoint belongs to: scheme, host and port."""
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def _host(endpoint: str) -> str:
    """An endpoint for logs: its host only (the path identifies a browser)."""
    return endpoint.split("/")[2] if endpoint.count("/") >= 2 else endpoint
