"""The escalation use cases: opening one when a notification of an escalating type is created,
acknowledging, resolving, `seen`, and the reads (one escalation with its timeline, a user's
open ones). Every change is a compare-and-set on the stored document (record.py), published
to every recipient's sockets as `escalation {payload}` after it is stored, and told to the
`mojavox_escalation_changed` hook.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from .. import tenants
from ..broker import Broker
from ..broker.messages import EscalationChanged
from ..errors import ConflictError, NotFoundError, ValidationError
from ..metrics import Metrics
from ..model import Draft
from ..plugins import Plugins
from ..store import EscalationChange, NotificationStore
from ..tenants import Reach
from ..wire.escalation import (STATES, UNRESOLVED, check_resolve, check_seen, to_escalation_payload,
                               to_recipient, to_timeline_entry)
from ..wire.notification import notification_id
from . import record
from .journal import Journal
from .policy import Policy
from .pushes import EscalationPushes

log = logging.getLogger(__name__)

#: A change that lost its compare-and-set this many times in a row gives up (503-like).
MAX_ATTEMPTS = 20
MAX_LISTED = 100


def now_ms() -> int:
    return int(time.time() * 1000)


class EscalationConflict(Exception):
    """A change kept losing its compare-and-set (many processes changing one escalation)."""


class EscalationService:
    def __init__(self, store: NotificationStore, broker: Broker, plugins: Plugins,
                 policies: dict[str, Policy], journal: Journal, metrics: Metrics | None = None,
                 online: Callable[[set[str]], Awaitable[set[str]]] | None = None):
        """`online(user_ids)` answers which of them have a live socket anywhere (the timeline's
        `notified` on the socket channel)."""
        self.store = store
        self.broker = broker
        self.plugins = plugins
        self.policies = policies
        self.journal = journal
        self.metrics = metrics or Metrics()
        self._online = online
        #: Told the due time (epoch ms) of each escalation opened here (the timers wake early).
        self.on_scheduled: Callable[[int], None] = lambda due_at: None
        #: When push is configured: the pushes that replace an escalation's notification on
        #: the desktop once it is taken or resolved (pushes.py).
        self.pushes: EscalationPushes | None = None

    def escalates(self, type_name: str) -> bool:
        return type_name in self.policies

    # -- opening (from NotificationService.create_many) ----------------------------------------

    async def attach(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        """Give every draft of an escalating type its escalation: a new one, or the unresolved
        one of its key (a second `call.escalation` for one call joins the first). The drafts
        of one key in one call share one. The escalations opened now, to `recorded` after the
        drafts are stored."""
        opened: list[dict[str, Any]] = []
        by_key: dict[str, dict[str, Any]] = {}
        now = now_ms()
        for draft in drafts:
            if draft.escalation is not None or draft.type not in self.policies:
                continue
            document = by_key.get(draft.escalation_key) if draft.escalation_key else None
            if document is None:
                candidate = record.new_escalation(draft, draft.escalation_key,
                                                  self.policies[draft.type], now)
                document, is_new = await self.store.open_escalation(candidate)
                by_key[document["key"]] = document
                if is_new:
                    opened.append(document)
            draft.escalation = record.notification_part(document, step=0, round_=0)
        return opened

    async def recorded(self, opened: list[dict[str, Any]], stored: Iterable[dict[str, Any]]) -> None:
        """After the drafts `attach` saw were stored (`stored`: their documents): the timeline's
        `created` and `notified` lines, and the timers told of what is due."""
        events: list[dict[str, Any]] = []
        for document in opened:
            events.append({"escalation_id": document["_id"], "at": document["created_at"],
                           "event": "created", "step": 0})
            self.metrics.escalations.labels(document["type"], "opened").inc()
            if document["due_at"] is not None:
                self.on_scheduled(document["due_at"])
        events += await self.notified_lines(
            (document["user_id"], document["escalation"],
             int(document["created_at"].timestamp() * 1000))
            for document in stored if document.get("escalation") is not None)
        await self.store.add_escalation_events(events)

    async def notified_lines(self, told: Iterable[tuple[str, dict[str, Any], int]]
                             ) -> list[dict[str, Any]]:
        """The timeline's `notified` lines of notifications stored (user id, the notification's
        `escalation` part, when in epoch ms): channel `stored` for each, and `socket` for the
        users with a live socket now."""
        told = list(told)
        if not told:
            return []
        online = await self._online({user_id for user_id, _, _ in told}) if self._online else set()
        lines = []
        for user_id, part, at in told:
            line = {"escalation_id": part["id"], "at": at, "event": "notified",
                    "user_id": user_id, "step": part["step"]}
            lines.append({**line, "channel": "stored"})
            if user_id in online:
                lines.append({**line, "channel": "socket"})
        return lines

    # -- acknowledging -------------------------------------------------------------------------

    async def acknowledge(self, user_id: str, raw_id: Any) -> tuple[dict[str, Any], bool]:
        """`user_id` takes the escalation of one of their notifications: its payload after, and
        whether this changed it (False: they had acknowledged it before).
        NotFoundError when the notification is not theirs or belongs to no escalation;
        ConflictError `already_acknowledged` (someone else took it, and it claims) or
        `escalation_resolved`."""
        notification = await self.store.get(user_id, notification_id(raw_id))
        part = notification.get("escalation")
        if part is None:
            raise NotFoundError("this notification belongs to no escalation",
                                code="not_an_escalation")
        outcome: dict[str, Any] = {}

        def take(document: dict[str, Any]) -> dict[str, Any] | None:
            outcome.clear()
            if document["state"] == "resolved":
                raise ConflictError(_resolved_message(document), code="escalation_resolved",
                                    escalation=to_escalation_payload(document))
            if user_id in document["acknowledgers"]:
                return None  # theirs already: answered as it is
            if document["state"] == "acknowledged":
                if document["claim"]:
                    raise ConflictError(f"already acknowledged by "
                                        f"{tenants.name_of(document['acknowledged_by'])}",
                                        code="already_acknowledged",
                                        escalation=to_escalation_payload(document))
                outcome["changed"] = True
                return record.also_acknowledged(document, user_id, now_ms())
            outcome.update(first=True, changed=True)
            return record.acknowledged(document, user_id, now_ms())

        document = await self.change(part["id"], take, event=lambda d: {
            "event": "acknowledged", "user_id": user_id, "step": d["step"]})
        if outcome.get("first"):
            seconds = (document["acknowledged_at"] - document["created_at"]) / 1000
            self.metrics.escalation_acknowledgement.labels(
                document["type"], str(document["step"])).observe(seconds)
            self.metrics.escalations.labels(document["type"], "acknowledged").inc()
        return to_escalation_payload(document), bool(outcome.get("changed"))

    # -- resolving -----------------------------------------------------------------------------

    async def resolve_raw(self, raw: Any, reach: Reach) -> dict[str, Any]:
        """`POST /api/escalations/resolve`: inside the caller's reach."""
        key, resolution, named_tenant = check_resolve(raw)
        tenant = reach.tenant_named(named_tenant)
        resolved = await self.resolve(tenants.key(tenant, key), resolution)
        if resolved is None:
            raise NotFoundError(f"no unresolved escalation has the key {key}",
                                code="escalation_not_found")
        return resolved

    async def resolve(self, key: str, resolution: str | None) -> dict[str, Any] | None:
        """Resolve the unresolved escalation of `key` (tenant-qualified): no step fires after
        this, and every recipient's tabs and browsers are told. Its payload, or None when no
        escalation of that key is unresolved (a call that ended without one)."""
        document = await self.store.unresolved_escalation(key)
        if document is None:
            return None

        closed: list[bool] = []

        def close(current: dict[str, Any]) -> dict[str, Any] | None:
            if current["state"] == "resolved":
                return None  # resolved meanwhile, by another caller
            closed.append(True)
            return record.resolved(current, resolution, now_ms())

        document = await self.change(document["_id"], close,
                                     event=lambda d: {"event": "resolved", "step": d["step"]})
        if closed:
            self.metrics.escalations.labels(document["type"], "resolved").inc()
        return to_escalation_payload(document)

    # -- seen ----------------------------------------------------------------------------------

    async def seen(self, user_id: str, raw: Any) -> int:
        """`{ids}` of notifications the user has on screen: recorded once per escalation step
        for those that belong to one; how many did."""
        return await self.seen_ids(user_id, check_seen(raw))

    async def seen_ids(self, user_id: str, raw_ids: Sequence[Any]) -> int:
        events = []
        at = now_ms()
        for raw_id in raw_ids:
            try:
                notification = await self.store.get(user_id, notification_id(raw_id))
            except NotFoundError:
                continue
            part = notification.get("escalation")
            if part is None:
                continue
            events.append({"escalation_id": part["id"], "at": at, "event": "seen",
                           "user_id": user_id, "step": part["step"],
                           "once": f"seen:{part['id']}:{user_id}:{part['round']}:{part['step']}"})
        await self.store.add_escalation_events(events)
        return len(events)

    def delivered(self, user_id: str, payload: dict[str, Any], step: int | None = None) -> None:
        """A socket wrote a notification frame of an escalation (recorded once per user and
        step, by the journal, off the socket's path)."""
        shown = payload.get("escalation")
        if shown is None:
            return
        self.journal.record({"escalation_id": shown["id"], "at": now_ms(), "event": "delivered",
                             "user_id": user_id, "step": shown["step"] if step is None else step,
                             "once": f"delivered:{payload['id']}"})

    # -- reading -------------------------------------------------------------------------------

    async def detail(self, raw_id: Any, user_id: str, roles: Iterable[str],
                     reach: Reach) -> dict[str, Any]:
        """`{escalation, recipients, timeline}` for a recipient, or a service or admin of its
        tenant; anyone else is told it does not exist."""
        if not isinstance(raw_id, str) or len(raw_id) > 64:
            raise NotFoundError("no such escalation")
        document = await self.store.escalation(raw_id)
        if document is None:
            raise NotFoundError("no such escalation")
        recipients = (await self.store.escalation_recipients([document["_id"]]))[document["_id"]]
        tenant = tenants.tenant_of(document["key"])
        staff = bool({"service", "admin"} & set(roles)) and (reach.platform or reach.tenant == tenant)
        if not staff and user_id not in {r["user_id"] for r in recipients}:
            raise NotFoundError("no such escalation")
        timeline = [to_timeline_entry(event) for event in
                    await self.store.escalation_events(document["_id"])]
        timeline += [to_timeline_entry({"at": r["read_at"], "event": "read",
                                        "user_id": r["user_id"], "step": r["step"]})
                     for r in recipients if r["read_at"] is not None]
        timeline.sort(key=lambda entry: entry["at"])
        return {"escalation": to_escalation_payload(document),
                "recipients": [to_recipient(r) for r in recipients], "timeline": timeline}

    async def of_user(self, user_id: str, state: Any = "open") -> list[dict[str, Any]]:
        """The escalations in `state` (open by default; `unresolved` for every one not resolved
        yet) that the user received, newest first, each with the user's newest notification
        of it (`notificationId`, what they acknowledge with)."""
        if state == "unresolved":
            states: Sequence[str] = UNRESOLVED
        elif state in STATES:
            states = (state,)
        else:
            raise ValidationError("state", f"must be one of {', '.join(STATES)}, unresolved")
        documents = await self.store.escalations_of(user_id, states, MAX_LISTED)
        recipients = await self.store.escalation_recipients([d["_id"] for d in documents])
        listed = []
        for document in documents:
            mine = [r["notification_id"] for r in recipients[document["_id"]]
                    if r["user_id"] == user_id]
            if mine:  # (deleted between the two reads: not theirs any more)
                listed.append({**to_escalation_payload(document), "notificationId": mine[-1]})
        return listed

    async def latest_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's newest escalations in every state (a socket that may have missed changes
        shows them as they are now)."""
        return [to_escalation_payload(document)
                for document in await self.store.escalations_of(user_id, STATES, MAX_LISTED)]

    # -- changing ------------------------------------------------------------------------------

    async def change(self, escalation_id: str,
                     mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
                     event: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Read, `mutate` (None: nothing to change), compare-and-set; again when another process
        changed it meanwhile. The document as it is after; the change published."""
        for _ in range(MAX_ATTEMPTS):
            document = await self.store.escalation(escalation_id)
            if document is None:
                raise NotFoundError("no such escalation")
            changed = mutate(document)
            if changed is None:
                return document
            lines = [] if event is None else [
                {"escalation_id": escalation_id, "at": changed["updated_at"], **event(changed)}]
            [stored] = await self.store.change_escalations(
                [EscalationChange(changed, document["version"], events=lines)])
            if stored is not None:
                await self.published([changed])
                return changed
        raise EscalationConflict(f"escalation {escalation_id} kept changing under this process")

    async def published(self, documents: Sequence[dict[str, Any]],
                        recipients: dict[str, list[dict[str, Any]]] | None = None,
                        payloads: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Tell every recipient's sockets and the `mojavox_escalation_changed` hook (`recipients`
        by escalation id when the caller has read them already, `payloads` by id when it has
        made them)."""
        if not documents:
            return
        if recipients is None:
            recipients = await self.store.escalation_recipients([d["_id"] for d in documents])
        payloads = payloads or {}
        at = time.time()
        messages = []
        for document in documents:
            users = sorted({r["user_id"] for r in recipients.get(document["_id"], ())})
            payload = payloads.get(document["_id"]) or to_escalation_payload(document)
            messages.append(EscalationChanged(payload, users, at))
        await self.broker.publish_many(messages)
        if self.pushes is not None:
            try:
                await self.pushes.changed(documents, recipients)
            except Exception:  # the change is stored and told; only the desktop lags behind
                log.exception("could not queue the pushes of an escalation change")
        if self.plugins.listens("mojavox_escalation_changed"):
            for message in messages:
                try:
                    await self.plugins.call_each("mojavox_escalation_changed",
                                                 escalation=message.escalation)
                except Exception:  # a plugin's failure must not undo or fail the change
                    log.exception("a mojavox_escalation_changed hook failed")


def _resolved_message(document: dict[str, Any]) -> str:
    resolution = document.get("resolution")
    return "the escalation is resolved" + (f": {resolution}" if resolution else "")

