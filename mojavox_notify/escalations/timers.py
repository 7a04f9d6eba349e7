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
from .service import MAX_ATTEMPTS, EscalationService, now_ms

log = logging.getLogger(__name__)


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
        escalations.on_scheduled = self.wake_at

    def wake_at(self, due_ms: int) -> None:
        """Something is due at `due_ms` (epoch ms): look then, not only at the next poll."""
        if self._next_wake is None or due_ms < self._next_wake:
            self._next_wake = due_ms
            self._wake.set()

    async def run(self) -> None:
        """Fire what is due, then wait for the next poll or the next due time known here (a
        supervised task: a failure is logged and the task restarted)."""
        while True:
            try:
                fired = await self.fire_due()
            except StorageUnavailableError as error:
                # What was stored stays due (a send begun keeps its lease): the next round, or
                # another process, takes it on.
                log.warning("escalation timers: storage failed (%s); trying again", error.message)
                fired = 0
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
                await asyncio.wait_for(self._wake.wait(), wait_ms / 1000)
            except TimeoutError:
                pass

    async def fire_due(self) -> int:
        """One batch of due escalations taken on; how many this process won."""
        now = now_ms()
        due = await self.store.due_escalations(now, self._batch)
        if not due:
            return 0
        changes = [(document, self._transition(document, now)) for document in due]
        stored = await self.store.change_escalations(
            [(changed, document["version"], to_escalation_payload(changed))
             for document, changed in changes])
        won = [(document, changed) for (document, changed), ok in zip(changes, stored) if ok]
        lateness = self.escalations.metrics.escalation_lateness
        for document, changed in won:
            if changed.get("sending") is not None and document.get("sending") is None:
                lateness.observe(max(0, now - document["due_at"]) / 1000)
        sends = [changed for _, changed in won if changed.get("sending") is not None]
        ended = [changed for document, changed in won
                 if changed["state"] == "unanswered" and document["state"] != "unanswered"]
        if sends:
            await self._send(sends)
        if ended:
            await self._unanswered(ended)
        for _, changed in won:
            if changed["due_at"] is not None and changed.get("sending") is None:
                self.wake_at(changed["due_at"])
        return len(won)

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

    async def _send(self, documents: list[dict[str, Any]]) -> None:
        """Every step's notifications in one creation, the sends finished, the timeline told."""
        recipients = await self.store.escalation_recipients([d["_id"] for d in documents])
        members: dict[str, list[str]] = {}
        drafts: list[Draft] = []
        notified: dict[str, int] = {}
        for document in documents:
            if document["state"] == "resolved":
                continue  # the call ended while the step was under way: tell nobody new
            sending = document["sending"]
            step = record.policy_of(document).steps[sending["step"] - 1]
            told = {r["user_id"] for r in recipients[document["_id"]]
                    if sending["round"] == 0 or r["round"] == sending["round"]}
            targets = await self._targets(document, step, sending["step"], members)
            part = record.notification_part(document, sending["step"], sending["round"])
            new = [user for user in targets if user not in told]
            notified[document["_id"]] = len(new)
            drafts.extend(_draft(document, user, part) for user in new)
        if drafts:
            await self.notifications.create_many(drafts)
        await self.store.add_escalation_events([  # when each step fired
            {"escalation_id": d["_id"], "at": d["updated_at"], "event": "escalated",
             "step": d["step"]} for d in documents if d["state"] != "resolved"])
        finished = await self._finish(documents)
        for document in finished:
            self.escalations.metrics.escalations.labels(document["type"], "escalated").inc()
        await self.escalations.published(finished)

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

    async def _finish(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each send marked finished; one changed meanwhile (acknowledged, resolved) is read
        again and finished over its new version."""
        now = now_ms()
        pending = list(documents)
        finished: list[dict[str, Any]] = []
        for _ in range(MAX_ATTEMPTS):
            changes = [(d, record.send_finished(d, now)) for d in pending]
            stored = await self.store.change_escalations(
                [(changed, d["version"], to_escalation_payload(changed)) for d, changed in changes])
            retry = []
            for (document, changed), ok in zip(changes, stored):
                if ok:
                    finished.append(changed)
                    if changed["due_at"] is not None:
                        self.wake_at(changed["due_at"])
                    continue
                current = await self.store.escalation(document["_id"])
                if current is not None and current.get("sending") == document["sending"]:
                    retry.append(current)
            if not retry:
                return finished
            pending = retry
        log.warning("%d escalation sends kept changing; their leases will finish them",
                    len(pending))
        return finished

    async def _unanswered(self, documents: list[dict[str, Any]]) -> None:
        await self.store.add_escalation_events([
            {"escalation_id": d["_id"], "at": d["updated_at"], "event": "unanswered",
             "step": d["step"]} for d in documents])
        for document in documents:
            self.escalations.metrics.escalations.labels(document["type"], "unanswered").inc()
        await self.escalations.published(documents)


def _draft(document: dict[str, Any], user_id: str, part: dict[str, Any]) -> Draft:
    template = document["template"]
    expires = template.get("expires_at")
    return Draft(user_id=user_id, type=document["type"], title=template["title"],
                 message=template["message"], priority=template["priority"],
                 data=template["data"], action_url=template["action_url"],
                 expires_at=None if expires is None
                 else datetime.fromtimestamp(expires / 1000, timezone.utc),
                 escalation=part)
