"""Durable escalation timers: the due steps are stored (`due_at` on each escalation), and every
process polls for those that came due and fires them. A step fires once across restarts,
workers and instances because firing is a compare-and-set of the stored document
(record.step_started) stored in one transaction with the step's notifications and timeline
lines (store.EscalationChange): of two processes that read one due escalation, one stores the
step and sends it, the other's change is refused with its notifications and it moves on. An
acknowledgement stored first makes the step's change fail the same way, so no further step is
sent after it; a process killed before the step's transaction commits leaves it due, and one
killed after has stored all of it.

Steps are read and prepared up to `escalation_timers.lookahead_seconds` before they come due
(their targets, recipients and settings read, their notifications made), held in memory, and
stored when the last of their round is due, never earlier: 10,000 steps coming due in one
second then cost only their transactions and their sending at that second. What is held is
only a plan; the stored document decides (a step acknowledged meanwhile is refused at its
compare-and-set), and a process that dies loses nothing stored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime, timezone
from typing import Any, Coroutine

from .. import tenants
from ..errors import StorageUnavailableError
from ..model import Draft
from ..plugins import Plugins
from ..service import Prepared
from ..settings import EscalationTimerSettings
from ..store import MAX_TOPIC_MEMBERS, Created, DueShare, EscalationChange, NotificationStore
from ..wire.escalation import to_escalation_payload
from ..wire.input import check_recipient
from . import record
from .rounds import HeldRounds, Round
from .policy import Step, step_targets
from .service import EscalationService, now_ms

log = logging.getLogger(__name__)

#: Changes and notifications published at a time, between which requests are served.
PUBLISH_SLICE = 50
#: After a storage failure, the timers look again this much later (the watchdog reports it).
STORAGE_RETRY_SECONDS = 1.0
#: Under `serve --workers N` each worker fires its share of the due steps (store.DueShare);
#: a step this late is anyone's (its worker died or fell behind).
SHARE_TAKEOVER_MS = 1000
#: A round's steps come due within this span: it is stored when its last one is due, so none
#: fires before its time and none waits longer than this for the others.
ROUND_SPAN_MS = 20
#: Escalations prepared at a time (the event loop serves requests between two rounds).
ROUND_SIZE = 100
#: Escalations held prepared ahead at most (memory: a few kilobytes each).
MAX_HELD = 20_000
#: A step this late that no round holds is looked for from the earliest due again (another
#: worker's share it took over, or one refused while it was still due).
OVERDUE_MS = SHARE_TAKEOVER_MS


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
        self._lookahead_ms = int(settings.lookahead_seconds * 1000)
        self._held = HeldRounds()
        self._ahead: tuple[int, str] | None = None  # how far the scan ahead has read
        self._wake = asyncio.Event()
        self._next_wake: int | None = None
        self._unpublished: asyncio.Queue[Coroutine[Any, Any, None]] = asyncio.Queue()
        escalations.on_scheduled = self.wake_at

    def holds(self, escalation_id: str) -> bool:
        """Whether a step of this escalation is prepared and held until it is due."""
        return escalation_id in self._held

    def wake_at(self, due_ms: int) -> None:
        """Something is due at `due_ms` (epoch ms): look for it then (and `lookahead` before),
        not only at the next poll."""
        if self._ahead is not None and due_ms <= self._ahead[0]:
            self._ahead = None  # due before where the scan ahead stands: it reads again
        wake = due_ms - self._lookahead_ms
        if self._next_wake is None or wake < self._next_wake:
            self._next_wake = wake
            self._wake.set()

    async def run(self) -> None:
        """Three tasks (supervised: a failure is logged and all restarted): one reads and
        prepares what comes due, one stores each round once it is due, one publishes what was
        stored, round after round: the storage's threads and the event loop work at the same
        time, and a round being stored never waits for the sending of the one before."""
        self._held, self._ahead = HeldRounds(), None  # (after a restart: nothing is held)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._preparing())
                group.create_task(self._firing())
                group.create_task(self._publishing())
        finally:  # stopped (or failed): what is stored reaches the sockets that resync
            while not self._unpublished.empty():
                self._unpublished.get_nowait().close()

    async def _preparing(self) -> None:
        """Each poll (or wake): the scan ahead onwards from where it stopped, to `lookahead`
        from now, then the steps overdue by OVERDUE_MS that no round holds (another worker's
        share taken over, one refused while it was still due), unless the held rounds are that
        late themselves (their storing is behind, not the scan)."""
        while True:
            try:
                await self._scan(ahead=True)
                if not self._held.late(now_ms() - OVERDUE_MS):
                    await self._scan(ahead=False)
            except StorageUnavailableError as error:
                # Nothing of a step is stored unless all of it is: what failed stays due, for
                # the next scan or another process.
                log.warning("escalation timers: storage failed (%s); trying again in %g s",
                            error.message, STORAGE_RETRY_SECONDS)
                self._ahead = None
                await asyncio.sleep(STORAGE_RETRY_SECONDS)
                continue
            await self._pause()

    async def _scan(self, ahead: bool) -> None:
        """Due escalations a batch at a time in due order, each batch read after the previous
        one, until a batch is not full (or MAX_HELD are held)."""
        after = self._ahead if ahead else None
        while len(self._held) < MAX_HELD:
            now = now_ms()
            rounds, last, full = await self._take(
                now, now + self._lookahead_ms if ahead else now - OVERDUE_MS, after)
            self._held.add(rounds)
            if last is not None:
                after = last
                if ahead:
                    self._ahead = last
            if not full:
                return

    async def _firing(self) -> None:
        """Each round stored once due (several due at once in one store call); a failure
        leaves its steps due, read and prepared again."""
        while True:
            rounds = await self._held.due(self._batch)
            try:
                await self._store(rounds)
            except StorageUnavailableError as error:
                log.warning("escalation timers: storage failed (%s)", error.message)
                self._ahead = None
                await asyncio.sleep(STORAGE_RETRY_SECONDS)
            finally:
                self._held.release(rounds)

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
        """One batch of due escalations taken on at once, from the earliest due; how many
        this process won (a batch's worth means more may be due). With `wait` False, the
        publication of what was stored may still be under way when it returns."""
        now = now_ms()
        rounds, _, _ = await self._take(now, now, None, held=False)
        if not rounds:
            return 0
        return await self._store(rounds, wait)

    async def _take(self, now: int, until: int, after: tuple[int, str] | None,
                    held: bool = True) -> tuple[list[Round], tuple[int, str] | None, bool]:
        """A batch due by `until` (after `after`, a (due_at, id) position) read, and prepared
        in rounds of ROUND_SIZE within ROUND_SPAN_MS, leaving out those held already (unless
        `held` False): (the rounds, the last position read, whether the batch was full)."""
        share = None if self._share is None else DueShare(*self._share, now - SHARE_TAKEOVER_MS)
        due = await self.store.due_escalations(until, self._batch, after, share)
        if not due:
            return [], None, False
        last = (due[-1]["due_at"], due[-1]["_id"])
        groups: list[list[dict[str, Any]]] = []
        for document in due:
            if held and document["_id"] in self._held:
                continue
            if (not groups or len(groups[-1]) >= ROUND_SIZE
                    or document["due_at"] - groups[-1][0]["due_at"] > ROUND_SPAN_MS):
                groups.append([])
            groups[-1].append(document)
        rounds = []
        for group in groups:
            rounds.append(await self._prepare(group, now))
            await asyncio.sleep(0)  # requests go between two rounds
        return rounds, last, len(due) >= self._batch

    async def _prepare(self, due: list[dict[str, Any]], now: int) -> Round:
        """Two storage trips: the escalations' recipients (whom a step skips, and whom a change
        is told) and their users' settings (NotificationService.prepare); the rest here."""
        changes = [(document, self._transition(document, now)) for document in due]
        # A step or the chain's end changes what clients see; a settle does not.
        told = [changed for document, changed in changes
                if changed["state"] != document["state"] or changed["step"] != document["step"]
                or changed["round"] != document["round"]]
        recipients = await self.store.escalation_recipients([d["_id"] for d in told])
        shown = {changed["_id"]: to_escalation_payload(changed) for changed in told}
        drafts = await self._step_drafts(changes, recipients, shown)
        prepared = await self.notifications.prepare([draft for _, draft in drafts])
        of_escalation: dict[str, list[int]] = {}
        for index, position in enumerate(prepared.positions):
            of_escalation.setdefault(drafts[position][0], []).append(index)
        return Round(changes, told, recipients, shown, prepared, of_escalation,
                      fire_at=max(document["due_at"] for document in due))

    async def _requests(self, rounds: list[Round], now: int) -> list[EscalationChange]:
        """The rounds' changes as stored at `now`: dated then, with their `notified` lines
        (whose channel says who has a socket then)."""
        lines = await self.escalations.notified_lines(
            (draft.user_id, draft.escalation, now)
            for taken in rounds for draft in taken.prepared.wanted)
        lines_of: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            lines_of.setdefault(line["escalation_id"], []).append(line)
        requests = []
        for taken in rounds:
            wanted = taken.prepared.wanted
            for document, changed in taken.changes:
                changed["updated_at"] = now
                indexes = taken.of_escalation.get(changed["_id"], [])
                requests.append(EscalationChange(
                    changed, document["version"], drafts=[wanted[index] for index in indexes],
                    push=[taken.prepared.push[index] for index in indexes],
                    events=[*self._step_lines(document, changed),
                            *lines_of.get(changed["_id"], [])]))
        return requests

    async def _store(self, rounds: list[Round], wait: bool = False) -> int:
        """One store call for the rounds, each change a compare-and-set stored with its step's
        notifications and timeline lines or not at all (other writes of this process may go
        between its parts); then what was stored published (in the background unless `wait`).
        How many changes won."""
        now = now_ms()
        requests = await self._requests(rounds, now)
        results = iter(await self.store.change_escalations(requests, _moment(now),
                                                           giving_way=True))
        won_in_all = 0
        for taken in rounds:
            won_in_all += await self._stored(taken, [next(results) for _ in taken.changes],
                                             now, wait)
        return won_in_all

    async def _stored(self, taken: Round, results: list[list[Created] | None], now: int,
                      wait: bool) -> int:
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
        self._count(won, now)
        told_ids = {changed["_id"] for changed in taken.told}
        prepared = taken.prepared
        sending = Prepared(prepared.drafts, prepared.positions, prepared.push,
                           time.perf_counter())  # (create→publish counts from the store)
        publication = self._publish([changed for _, changed in won if changed["_id"] in told_ids],
                                    taken.recipients, taken.shown, sending, stored)
        if wait:
            await publication
        else:
            self._unpublished.put_nowait(publication)
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

    async def _publishing(self) -> None:
        """The stored rounds' publications, one after the other (one slice of one round
        between two requests, not one of each). One that fails leaves what is stored to the
        sockets' next resync."""
        while True:
            publication = await self._unpublished.get()
            try:
                await publication
            except Exception as error:
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


def _moment(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc)


def _draft(document: dict[str, Any], user_id: str, part: dict[str, Any]) -> Draft:
    template = document["template"]
    expires = template.get("expires_at")
    return Draft(user_id=user_id, type=document["type"], title=template["title"],
                 message=template["message"], priority=template["priority"],
                 data=template["data"], action_url=template["action_url"],
                 expires_at=None if expires is None
                 else datetime.fromtimestamp(expires / 1000, timezone.utc),
                 escalation=part)
