"""Durable escalation timers: the due steps are stored (`due_at` on each escalation), and every
process polls for those that came due and fires them. A step fires once across restarts,
workers and instances because firing is a compare-and-set of the stored document
(record.step_started): of two processes that read one due escalation, one stores the change
and sends the step, the other's change is refused and it moves on. An acknowledgement stored
first makes the step's change fail the same way, so no further step is sent after it.

A step's send holds a lease (`escalation_timers.lease_seconds`) recorded in that change: a
process killed mid-send leaves the escalation due when the lease ends, and the next process
finishes the send, skipping the recipients already told (they have the notification).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from .. import tenants
from ..errors import StorageUnavailableError
from ..model import Draft
from ..plugins import Plugins
from ..settings import EscalationTimerSettings
from ..store import MAX_TOPIC_MEMBERS, NotificationStore
from ..wire.escalation import to_escalation_payload
from ..wire.input import check_recipient
from . import record
from .policy import Step, step_targets
from .service import EscalationService, now_ms

log = logging.getLogger(__name__)

#: Rounds whose steps' notifications are being created at once (run()).
MAX_SENDING = 2
#: How long stopping waits for the sends it cancelled (their leases cover what is cut short).
SEND_CANCEL_SECONDS = 2.0
#: After a storage failure, the timers look again this much later (the watchdog reports it).
STORAGE_RETRY_SECONDS = 1.0


class EscalationTimers:
    def __init__(self, store: NotificationStore, escalations: EscalationService, notifications: Any,
                 plugins: Plugins, settings: EscalationTimerSettings):
        """`notifications` is the NotificationService: a step's notifications are created like
        any other (preferences, push, publication)."""
        self.store = store
        self.escalations = escalations
        self.notifications = notifications
        self.plugins = plugins
        self._poll_ms = int(settings.poll_interval_seconds * 1000)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._batch = settings.batch
        self._wake = asyncio.Event()
        self._next_wake: int | None = None
        self._sending: set[asyncio.Task] = set()
        escalations.on_scheduled = self.wake_at

    def wake_at(self, due_ms: int) -> None:
        """Something is due at `due_ms` (epoch ms): look then, not only at the next poll."""
        if self._next_wake is None or due_ms < self._next_wake:
            self._next_wake = due_ms
            self._wake.set()

    async def run(self) -> None:
        """Fire what is due, then wait for the next poll or the next due time known here (a
        supervised task: a failure is logged and the task restarted). The steps' sends of one
        round go on while the next round is taken on (at most MAX_SENDING rounds at once), so
        the storage's thread and the event loop work at the same time."""
        try:
            await self._rounds()
        finally:  # stopped (or failed): a send cut short here is finished after its lease
            for task in list(self._sending):
                task.cancel()
            if self._sending:
                await asyncio.wait(self._sending, timeout=SEND_CANCEL_SECONDS)

    async def _rounds(self) -> None:
        while True:
            try:
                fired = await self.fire_due(wait=False)
            except StorageUnavailableError as error:
                # What was stored stays due (a send begun keeps its lease): the next round, or
                # another process, takes it on.
                log.warning("escalation timers: storage failed (%s); trying again in %g s",
                            error.message, STORAGE_RETRY_SECONDS)
                await asyncio.sleep(STORAGE_RETRY_SECONDS)
                continue
            if fired >= self._batch:
                continue  # more are due right now
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
        """One batch of due escalations taken on; how many this process won. With `wait`
        False, the steps' sends may still be under way when it returns.

        One compare-and-set per escalation takes it on (a step started, the chain ended, or a
        stalled send relet); the changes are published to the recipients known then (read once:
        they are also whom a step skips), the steps' notifications created in one creation,
        and the sends marked finished without another compare-and-set (finishing changes
        nothing a client sees)."""
        now = now_ms()
        due = await self.store.due_escalations(now, self._batch)
        if not due:
            return 0
        changes = [(document, self._transition(document, now)) for document in due]
        # A step or the chain's end changes what clients see; a relet or a settle does not,
        # and leaves the notifications as they are.
        shown = {changed["_id"]: to_escalation_payload(changed) for document, changed in changes
                 if changed["state"] != document["state"] or changed["step"] != document["step"]
                 or changed.get("sending") is not None and document.get("sending") is None}
        stored = await self.store.change_escalations(
            [(changed, document["version"], shown.get(changed["_id"]))
             for document, changed in changes])
        won = [(document, changed) for (document, changed), ok in zip(changes, stored) if ok]
        if not won:
            return 0
        metrics = self.escalations.metrics
        started = []
        for document, changed in won:
            if changed.get("sending") is not None and document.get("sending") is None:
                started.append(changed)
                metrics.escalation_lateness.observe(max(0, now - document["due_at"]) / 1000)
        ended = [changed for document, changed in won
                 if changed["state"] == "unanswered" and document["state"] != "unanswered"]
        sends = [changed for _, changed in won if changed.get("sending") is not None]
        told = [*started, *ended]  # (every started one is among the sends too)
        recipients = await self.store.escalation_recipients([d["_id"] for d in [*ended, *sends]])
        await self.store.add_escalation_events(
            [{"escalation_id": d["_id"], "at": d["updated_at"], "event": "escalated",
              "step": d["step"]} for d in started]
            + [{"escalation_id": d["_id"], "at": d["updated_at"], "event": "unanswered",
                "step": d["step"]} for d in ended])
        for document in started:
            metrics.escalations.labels(document["type"], "escalated").inc()
        for document in ended:
            metrics.escalations.labels(document["type"], "unanswered").inc()
        await self.escalations.published(told, recipients)
        if sends:
            sending = self._send(sends, recipients, shown)
            if wait:
                await sending
            else:
                await self._in_background(sending)
        for _, changed in won:
            if changed["due_at"] is not None and changed.get("sending") is None:
                self.wake_at(changed["due_at"])
        return len(won)

    async def _in_background(self, sending: Any) -> None:
        """Run a round's sends as a task, once fewer than MAX_SENDING are under way. A send
        that fails is left to its lease (the escalation is due again when it ends)."""
        while len(self._sending) >= MAX_SENDING:
            await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning("escalation steps not all sent (%s); their leases will retry them",
                        getattr(error, "message", error))

    def _transition(self, document: dict[str, Any], now: int) -> dict[str, Any]:
        if document.get("sending") is not None:
            return record.send_relet(document, now, self._lease_ms)
        action = record.due_action(document)
        if document["state"] != "open" or action is None:
            return record.send_finished(document, now)  # nothing due any more: settle it
        if action.unanswered:
            return record.unanswered(document, now)
        return record.step_started(document, action, now, self._lease_ms)

    # -- a step's send -------------------------------------------------------------------------

    async def _send(self, documents: list[dict[str, Any]],
                    recipients: dict[str, list[dict[str, Any]]],
                    shown: dict[str, dict[str, Any]]) -> None:
        """Every step's notifications in one creation, to the targets not told yet (in the
        step's round), then the sends finished."""
        members: dict[str, list[str]] = {}
        drafts: list[Draft] = []
        for document in documents:
            if document["state"] == "resolved":
                continue  # the call ended while the step was under way: tell nobody new
            sending = document["sending"]
            step = record.policy_of(document).steps[sending["step"] - 1]
            told = {r["user_id"] for r in recipients[document["_id"]]
                    if sending["round"] == 0 or r["round"] == sending["round"]}
            targets = await self._targets(document, step, sending["step"], members)
            part = record.notification_part(document, sending["step"], sending["round"],
                                            shown.get(document["_id"]))
            drafts.extend(_draft(document, user, part) for user in targets if user not in told)
        if drafts:
            await self.notifications.create_many(drafts)
        now = now_ms()
        finished = [(document, record.send_finished(document, now)) for document in documents]
        await self.store.finish_escalation_sends(
            [(changed["_id"], document["sending"], changed["due_at"])
             for document, changed in finished])
        for _, changed in finished:
            if changed["due_at"] is not None:
                self.wake_at(changed["due_at"])

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
        step_shown = {"number": number, "round": document["sending"]["round"],
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
