"""Durable escalation timers: the due steps are stored (`due_at` on each escalation), and every
process polls for those that came due and fires them. A step fires once across restarts,
workers and instances because firing is a compare-and-set of the stored document
(record.step_started) stored in one transaction with the step's notifications and timeline
lines (store.EscalationChange): of two processes that read one due escalation, one stores the
step and sends it, the other's change is refused with its notifications and it moves on. An
acknowledgement stored first makes the step's change fail the same way, so no further step is
sent after it; a process killed before the step's transaction commits leaves it due, and one
killed after has stored all of it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import tenants
from ..errors import StorageUnavailableError
from ..model import Draft, utcnow
from ..plugins import Plugins
from ..service import Prepared
from ..settings import EscalationTimerSettings
from ..store import MAX_TOPIC_MEMBERS, Created, DueShare, EscalationChange, NotificationStore
from ..wire.escalation import to_escalation_payload
from ..wire.input import check_recipient
from . import record
from .policy import Step, step_targets
from .service import EscalationService, now_ms

log = logging.getLogger(__name__)

#: Rounds whose stored steps are being published at once (run()).
MAX_PUBLISHING = 2
#: Changes and notifications published at a time, between which requests are served.
PUBLISH_SLICE = 50
#: How long stopping waits for the publications it cancelled.
PUBLISH_CANCEL_SECONDS = 2.0
#: After a storage failure, the timers look again this much later (the watchdog reports it).
STORAGE_RETRY_SECONDS = 1.0
#: Under `serve --workers N` each worker fires its share of the due steps (store.DueShare);
#: a step this late is anyone's (its worker died or fell behind).
SHARE_TAKEOVER_MS = 1000


@dataclass
class _Round:
    """A batch of due escalations read and prepared (`EscalationTimers._take`), to store."""

    now: int
    changes: list[tuple[dict[str, Any], dict[str, Any]]]  # (as read, as changed)
    told: list[dict[str, Any]]  # the changes clients see
    recipients: dict[str, list[dict[str, Any]]]
    shown: dict[str, dict[str, Any]]
    prepared: Prepared
    of_escalation: dict[str, list[int]]  # escalation id -> its drafts among prepared.wanted
    requests: list[EscalationChange]
    created_at: datetime
    last: tuple[int, str]  # (due_at, id) of the last one read


class EscalationTimers:
    def __init__(self, store: NotificationStore, escalations: EscalationService, notifications: Any,
                 plugins: Plugins, settings: EscalationTimerSettings,
                 share: tuple[int, int] | None = None):
        """`notifications` is the NotificationService: a step's notifications are created like
        any other (preferences, push, publication). `share` (index, count) under `serve
        --workers`: the workers split the due steps instead of all reading all of them (the
        compare-and-set keeps each step once either way; the split spares the losers' work)."""
        self._share = share
        self.store = store
        self.escalations = escalations
        self.notifications = notifications
        self.plugins = plugins
        self._poll_ms = int(settings.poll_interval_seconds * 1000)
        self._batch = settings.batch
        self._wake = asyncio.Event()
        self._next_wake: int | None = None
        self._publishing: set[asyncio.Task] = set()
        self._storing: asyncio.Task | None = None
        escalations.on_scheduled = self.wake_at

    def wake_at(self, due_ms: int) -> None:
        """Something is due at `due_ms` (epoch ms): look then, not only at the next poll."""
        if self._next_wake is None or due_ms < self._next_wake:
            self._next_wake = due_ms
            self._wake.set()

    async def run(self) -> None:
        """Fire what is due, then wait for the next poll or the next due time known here (a
        supervised task: a failure is logged and the task restarted). While one round's
        changes are being stored, the next round is read and prepared, and stored rounds are
        published while later ones go on (at most MAX_PUBLISHING at once): the storage's
        threads and the event loop work at the same time."""
        try:
            await self._rounds()
        finally:  # stopped (or failed): what is stored reaches the sockets that resync
            pending = list(self._publishing) + ([self._storing] if self._storing else [])
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=PUBLISH_CANCEL_SECONDS)

    async def _rounds(self) -> None:
        """A scan over what is due, a batch at a time in due order, each batch read after the
        previous one (not again from the start while that one is being stored); a scan ends
        with a batch that is not full, and the next begins from the earliest due again (what
        another process changed first is looked at once more there)."""
        after: tuple[int, str] | None = None
        while True:
            try:
                taken = await self._take(now_ms(), after)
                await self._stored()  # the previous batch's transaction
            except StorageUnavailableError as error:
                # Nothing of a step is stored unless all of it is: what failed stays due, for
                # the next scan or another process.
                log.warning("escalation timers: storage failed (%s); trying again in %g s",
                            error.message, STORAGE_RETRY_SECONDS)
                await asyncio.sleep(STORAGE_RETRY_SECONDS)
                after = None
                continue
            if taken is not None:
                self._storing = asyncio.get_running_loop().create_task(self._store(taken))
            if taken is not None and len(taken.changes) >= self._batch:
                after = taken.last
                continue  # more are due right now
            after = None
            try:
                await self._stored()  # the scan is over: all of it stored before the next
            except StorageUnavailableError as error:
                log.warning("escalation timers: storage failed (%s)", error.message)
            await self._pause()

    async def _stored(self) -> None:
        """Wait for the batch being stored, if any (its failure raised here)."""
        storing, self._storing = self._storing, None
        if storing is not None:
            await storing

    async def _pause(self) -> None:
        now = now_ms()
        wait_ms = self._poll_ms
        if self._next_wake is not None:
            wait_ms = min(wait_ms, max(0, self._next_wake - now))
            if self._next_wake <= now:
                self._next_wake = None
        self._wake.clear()
        try:
            # Not asyncio.wait_for: on Python 3.11 it can swallow the task's cancellation
            # when the wait ends at the same moment, and the timers would never stop.
            async with asyncio.timeout(wait_ms / 1000):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def fire_due(self, wait: bool = True) -> int:
        """One batch of due escalations taken on, from the earliest due; how many this
        process won (a batch's worth means more may be due). With `wait` False, the
        publication of what was stored may still be under way when it returns."""
        taken = await self._take(now_ms(), None)
        if taken is None:
            return 0
        return await self._store(taken, wait)

    async def _take(self, now: int, after: tuple[int, str] | None) -> _Round | None:
        """A batch read and prepared: two storage trips, the due escalations (after `after`,
        a (due_at, id) position) and their recipients (whom a step skips, and whom a change
        is told), and each step's notifications made ready (the users' settings read)."""
        share = None if self._share is None else DueShare(*self._share, now - SHARE_TAKEOVER_MS)
        due = await self.store.due_escalations(now, self._batch, after, share)
        if not due:
            return None
        changes = [(document, self._transition(document, now)) for document in due]
        # A step or the chain's end changes what clients see; a settle does not.
        told = [changed for document, changed in changes
                if changed["state"] != document["state"] or changed["step"] != document["step"]
                or changed["round"] != document["round"]]
        recipients = await self.store.escalation_recipients([d["_id"] for d in told])
        shown = {changed["_id"]: to_escalation_payload(changed) for changed in told}
        drafts = await self._step_drafts(changes, recipients, shown)
        prepared = await self.notifications.prepare([draft for _, draft in drafts])
        created_at = utcnow()
        at = int(created_at.timestamp() * 1000)
        of_escalation: dict[str, list[int]] = {}
        for index, position in enumerate(prepared.positions):
            of_escalation.setdefault(drafts[position][0], []).append(index)
        wanted = prepared.wanted
        lines = await self.escalations.notified_lines(
            (draft.user_id, draft.escalation, at) for draft in wanted)
        lines_of: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            lines_of.setdefault(line["escalation_id"], []).append(line)
        requests = []
        for document, changed in changes:
            indexes = of_escalation.get(changed["_id"], [])
            requests.append(EscalationChange(
                changed, document["version"], drafts=[wanted[index] for index in indexes],
                push=[prepared.push[index] for index in indexes],
                events=[*self._step_lines(document, changed), *lines_of.get(changed["_id"], [])]))
        last = due[-1]
        return _Round(now, changes, told, recipients, shown, prepared, of_escalation, requests,
                      created_at, (last["due_at"], last["_id"]))

    async def _store(self, taken: _Round, wait: bool = False) -> int:
        """One transaction with every change of the batch, each compare-and-set and stored with
        its step's notifications and timeline lines or not at all; then what was stored
        published (in the background unless `wait`). How many changes won."""
        results = await self.store.change_escalations(taken.requests, taken.created_at)
        stored: list[Created | None] = [None] * len(taken.prepared.positions)
        won = []
        for (document, changed), records in zip(taken.changes, results):
            if records is None:
                continue
            won.append((document, changed))
            for index, created in zip(taken.of_escalation.get(changed["_id"], []), records):
                stored[index] = created
        if not won:
            return 0
        self._count(won, taken.now)
        told_ids = {changed["_id"] for changed in taken.told}
        publication = self._publish([changed for _, changed in won if changed["_id"] in told_ids],
                                    taken.recipients, taken.shown, taken.prepared, stored)
        if wait:
            await publication
        else:
            await self._in_background(publication)
        for _, changed in won:
            if changed["due_at"] is not None:
                self.wake_at(changed["due_at"])
        return len(won)

    def _transition(self, document: dict[str, Any], now: int) -> dict[str, Any]:
        action = record.due_action(document)
        if document["state"] != "open" or action is None:
            return record.settled(document, now)
        if action.unanswered:
            return record.unanswered(document, now)
        return record.step_started(document, action, now)

    @staticmethod
    def _step_lines(document: dict[str, Any], changed: dict[str, Any]) -> list[dict[str, Any]]:
        """`escalated` for a step started, `unanswered` for the chain's end."""
        if changed["state"] == "unanswered" and document["state"] != "unanswered":
            event = "unanswered"
        elif changed["step"] != document["step"] or changed["round"] != document["round"]:
            event = "escalated"
        else:
            return []
        return [{"escalation_id": changed["_id"], "at": changed["updated_at"], "event": event,
                 "step": changed["step"]}]

    def _count(self, won: list[tuple[dict[str, Any], dict[str, Any]]], now: int) -> None:
        metrics = self.escalations.metrics
        outcomes: collections.Counter = collections.Counter()
        for document, changed in won:
            for line in self._step_lines(document, changed):
                outcomes[changed["type"], line["event"]] += 1
                if line["event"] == "escalated":
                    metrics.escalation_lateness.observe(max(0, now - document["due_at"]) / 1000)
        for labels, count in outcomes.items():
            metrics.escalations.labels(*labels).inc(count)

    async def _publish(self, told: list[dict[str, Any]], recipients: dict[str, list[dict[str, Any]]],
                       shown: dict[str, dict[str, Any]], prepared: Prepared,
                       stored: list[Created | None]) -> None:
        """The changes to the recipients known before the step (the new ones receive the
        step's notification, which carries the change), then the step's notifications. A
        slice at a time, giving way to the requests waiting between slices: a batch written
        to sockets in one go would hold every request behind it."""
        for start in range(0, len(told), PUBLISH_SLICE):
            await self.escalations.published(told[start:start + PUBLISH_SLICE], recipients, shown)
            await asyncio.sleep(0)
        for start in range(0, len(stored), PUBLISH_SLICE):
            end = start + PUBLISH_SLICE
            part = Prepared(prepared.drafts, prepared.positions[start:end],
                            prepared.push[start:end], prepared.started)
            await self.notifications.announce(part, stored[start:end], lines_stored=True)
            await asyncio.sleep(0)

    async def _in_background(self, publication: Any) -> None:
        """Publish a round's stored steps as a task, once fewer than MAX_PUBLISHING are under
        way. One that fails leaves what is stored to the sockets' next resync."""
        while len(self._publishing) >= MAX_PUBLISHING:
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(publication)
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning("escalation steps stored but not all published (%s)",
                        getattr(error, "message", error))

    # -- a step's notifications ----------------------------------------------------------------

    async def _step_drafts(self, changes: list[tuple[dict[str, Any], dict[str, Any]]],
                           recipients: dict[str, list[dict[str, Any]]],
                           shown: dict[str, dict[str, Any]]) -> list[tuple[str, Draft]]:
        """(escalation id, draft) for every step started: to its targets not told yet in the
        step's round."""
        members: dict[str, list[str]] = {}
        drafts: list[tuple[str, Draft]] = []
        for document, changed in changes:
            if changed["state"] != "open" or (changed["step"] == document["step"]
                                              and changed["round"] == document["round"]):
                continue
            step = record.policy_of(changed).steps[changed["step"] - 1]
            told = {r["user_id"] for r in recipients[changed["_id"]]
                    if changed["round"] == 0 or r["round"] == changed["round"]}
            targets = await self._targets(changed, step, changed["step"], members)
            part = record.notification_part(changed, changed["step"], changed["round"],
                                            shown[changed["_id"]])
            drafts.extend((changed["_id"], _draft(changed, user, part))
                          for user in targets if user not in told)
        return drafts

    async def _targets(self, document: dict[str, Any], step: Step, number: int,
                       members: dict[str, list[str]]) -> list[str]:
        """The step's users (keys): its topic's members, its named users and the hook's."""
        tenant = tenants.tenant_of(document["key"])
        topic, users = step_targets(step, tenant)
        targets = list(users)
        if topic is not None:
            if topic not in members:
                members[topic] = await self.store.topic_members(topic, MAX_TOPIC_MEMBERS)
            targets.extend(members[topic])
        if self.plugins.listens("mojavox_escalation_targets"):
            targets.extend(await self._from_hook(document, step, number, tenant))
        return list(dict.fromkeys(targets))

    async def _from_hook(self, document: dict[str, Any], step: Step, number: int,
                         tenant: str) -> list[str]:
        template = document["template"]
        notification = {"type": document["type"], "title": template["title"],
                        "message": template["message"], "priority": template["priority"],
                        "data": template["data"], "actionUrl": template["action_url"],
                        "tenant": tenant, "escalation": to_escalation_payload(document)}
        step_shown = {"number": number, "round": document["round"],
                      "afterSeconds": step.after_seconds, "topic": step.topic,
                      "users": list(step.users)}
        try:
            answers = await self.plugins.call_each("mojavox_escalation_targets",
                                                   notification=notification, step=step_shown)
        except Exception:  # the roster being away must not stop the chain's own targets
            log.exception("a mojavox_escalation_targets hook failed; its step goes to the "
                          "policy's targets only")
            return []
        users = []
        for answer in answers:
            for user in answer or ():
                try:
                    users.append(tenants.key(tenant, check_recipient(user)))
                except Exception:
                    log.warning("mojavox_escalation_targets returned %r, not a user id", user)
        return users


def _draft(document: dict[str, Any], user_id: str, part: dict[str, Any]) -> Draft:
    template = document["template"]
    expires = template.get("expires_at")
    return Draft(user_id=user_id, type=document["type"], title=template["title"],
                 message=template["message"], priority=template["priority"],
                 data=template["data"], action_url=template["action_url"],
                 expires_at=None if expires is None
                 else datetime.fromtimestamp(expires / 1000, timezone.utc),
                 escalation=part)
