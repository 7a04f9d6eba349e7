"""The notification use cases: every handler and event source goes through here.

Order of a creation: validate → sanitize → recipient's channel settings → rate limit → persist
→ publish → observers. A notification is published only after it is stored, so anything a
socket receives can also be read back, and recovery never sees what was not stored.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, Iterable, Sequence

from tornado.netutil import DefaultLoopResolver, Resolver

from .broker import Broker
from .broker.messages import (AllRead, BroadcastPosted, Message, NotificationCreated,
                              NotificationDeleted, NotificationRead)
from .errors import ConflictError, NotFoundError, ValidationError
from .idempotency import Idempotency, request_key
from .ids import new_object_id
from .metrics import Metrics
from .model import (ChannelPreference, Draft, PushSubscription, default_preferences,
                    to_broadcast_document, utcnow)
from .plugins import Plugins
from .push_addresses import check_endpoint
from .ratelimit import RateLimiter
from .settings import Settings
from . import tenants
from .store import (MAX_TOPIC_MEMBERS, ClaimLostError, Created, EventClaim, NotificationStore,
                    UserState)
from .tenants import Reach
from .wire.broadcast import MAX_ACTIVE, check_broadcast, to_broadcast_payload
from .wire.notification import DraftCheck, notification_id, page_bounds, to_payload
from .wire.preferences import PreferencesCheck, preferences_payload
from .wire.push_subscription import check_endpoint_body, check_push_subscription

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
#: A topic send without an Idempotency-Key is stored and published this many at a time.
TOPIC_CHUNK = 2000


@dataclass
class Prepared:
    """Drafts ready to store (`NotificationService.prepare`): `positions` are where the wanted
    ones (not muted; critical ones never are) stand among `drafts`, `push` one flag for each
    wanted one."""

    drafts: list[Draft]
    positions: list[int]
    push: list[bool]
    started: float

    @property
    def wanted(self) -> list[Draft]:
        return [self.drafts[position] for position in self.positions]


def _topic_answer(topic: str, created: list[dict | None]) -> dict[str, Any]:
    made = sum(payload is not None for payload in created)
    return {"topic": tenants.name_of(topic), "created": made, "muted": len(created) - made}


async def _nobody_online(user_ids: set[str]) -> set[str]:
    return set()


class NotificationService:
    def __init__(self, store: NotificationStore, broker: Broker, plugins: Plugins, settings: Settings,
                 online: Callable[[set[str]], Awaitable[set[str]]] = _nobody_online,
                 limiter: Any = None, metrics: Metrics | None = None,
                 resolver: Resolver | None = None, escalations: Any = None):
        """`await online(user_ids)` answers which of them have a live socket anywhere (for push
        decisions); `limiter` counts notifications per recipient (`acquire(keys)`; by default
        in this process); `resolver` looks up push endpoints' hosts (tornado's by default);
        `escalations` (escalations.service) opens the escalation of a draft whose type has a
        policy, before it is stored."""
        self.store = store
        self.broker = broker
        self.plugins = plugins
        self.types = plugins.types
        self._action_url_hosts = settings.server.action_url_hosts
        self.limiter = limiter or RateLimiter(settings.rate_limits.notifications_per_minute,
                                              "notifications")
        self._defaults = default_preferences(self.types, settings.push.default_priorities)
        self._push = settings.push
        self._retention = settings.retention
        self._resolver = resolver or DefaultLoopResolver()
        self._online = online
        self._metrics = metrics or Metrics()
        self._idempotency = Idempotency(store)
        self._drafts = DraftCheck(self.types, settings.server.action_url_hosts)
        self._preferences = PreferencesCheck(self.types)
        self._escalations = escalations
        #: Called when a creation recorded push jobs (the push worker wakes up).
        self.on_push_recorded: Callable[[], None] | None = None

    # -- creation ------------------------------------------------------------------------------

    def validate(self, raw_drafts: Iterable[Any], reach: Reach = Reach()) -> list[Draft]:
        """Drafts checked and sanitized inside the caller's `reach` (wire.notification's
        DraftCheck), or a ValidationError (a ForbiddenError for a tenant it may not address)."""
        return self._drafts.check_many(raw_drafts, reach)

    async def expand(self, drafts: list[Draft]) -> list[Draft]:
        """Each topic draft as one draft per member of its topic (none for an empty or unknown
        topic); the others as they are. The members' drafts of an escalating type share one
        escalation: a topic draft without an `escalationKey` gets one of its own."""
        if all(draft.topic is None for draft in drafts):
            return drafts
        expanded: list[Draft] = []
        for draft in drafts:
            if draft.topic is None:
                expanded.append(draft)
                continue
            if (draft.escalation_key is None and self._escalations is not None
                    and self._escalations.escalates(draft.type)):
                draft.escalation_key = tenants.key(tenants.tenant_of(draft.topic),
                                                   f"escalation:{new_object_id()}")
            members = await self.store.topic_members(draft.topic, MAX_TOPIC_MEMBERS)
            expanded.extend(draft.to(member) for member in members)
        return expanded

    async def create(self, raw_draft: Any, reach: Reach = Reach()) -> dict[str, Any] | None:
        """Create one notification; None when the recipient turned its type off. A draft to a
        topic answers `{"topic", "created", "muted"}` instead."""
        [draft] = self.validate([raw_draft], reach)
        if draft.topic is None:
            return (await self.create_many([draft]))[0]
        return _topic_answer(draft.topic, await self._create_in_chunks(await self.expand([draft])))

    async def _create_in_chunks(self, drafts: list[Draft]) -> list[dict | None]:
        """A topic's drafts without an Idempotency-Key, TOPIC_CHUNK at a time, all queued at
        once: while one chunk's notifications go out to their sockets, the next is written
        (the store serves queued insertions one transaction each). A failure midway leaves the
        chunks before it created, as a retry without a key would anyway; with a key a topic
        send is one transaction (create_once)."""
        chunks = [drafts[start:start + TOPIC_CHUNK] for start in range(0, len(drafts), TOPIC_CHUNK)]
        results = await asyncio.gather(*(self.create_many(chunk) for chunk in chunks),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [payload for chunk in results for payload in chunk]

    async def create_once(self, raw_draft: Any, caller: str, key: str,
                          reach: Reach = Reach()) -> tuple[dict[str, Any] | None, bool]:
        """`create`, at most once per caller and `Idempotency-Key`: a client retrying after a
        timeout gets the first notification back (the second value says it is a replay) and
        nothing new is stored. The key reused with another body is refused."""
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise ValidationError("Idempotency-Key", "must be 1 to 128 printable ASCII characters")
        [draft] = self.validate([raw_draft], reach)
        body = json.dumps(raw_draft, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fingerprint = "POST /api/notifications " + hashlib.sha256(body.encode()).hexdigest()[:32]
        first: list[dict | None] = []

        async def create(claim: EventClaim) -> list[str]:
            first[:] = await self.create_many(await self.expand([draft]), claim=claim)
            return [payload["id"] for payload in first if payload is not None]

        ids, replayed = await self._idempotency.once(
            request_key(caller, key), fingerprint, create,
            lambda _: ValidationError("Idempotency-Key", "was already used with another body",
                                      code="idempotency_key_conflict"))
        if draft.topic is not None:
            # A replay knows what was created, not how many members had muted it then.
            return ({"topic": tenants.name_of(draft.topic), "created": len(ids), "muted": None}
                    if replayed else _topic_answer(draft.topic, first)), replayed
        if not ids:
            return None, replayed
        try:
            return to_payload(await self.store.get(draft.user_id, notification_id(ids[0]))), replayed
        except NotFoundError:
            raise NotFoundError("the notification this Idempotency-Key created has since been "
                                "deleted") from None

    async def create_many(self, drafts: list[Draft],
                          claim: EventClaim | None = None) -> list[dict | None]:
        """Store and publish validated drafts, under `claim` when the caller holds one
        (idempotency.py). Muted ones give None in their place.

        Critical notifications can be neither muted nor rate limited: an escalation must reach
        its supervisor. Preferences are read once for the whole batch, the rate limit is checked
        for all drafts before any is stored, and all are stored in one write before any is
        published, so what a socket receives can always be read back. Push jobs are recorded in
        the same write.
        """
        prepared = await self.prepare(drafts)
        wanted = prepared.wanted
        escalating = self._escalations is not None and any(
            self._escalations.escalates(draft.type) for draft in wanted)
        opened = await self._escalations.attach(wanted) if escalating else []
        stored = await self.store.insert_many(wanted, claim=claim, push=prepared.push)
        return await self.announce(prepared, stored, opened)

    async def create_groups(self, groups: Sequence[tuple[list[Draft], EventClaim | None]]
                            ) -> list[list[dict | None] | ClaimLostError]:
        """`create_many` for several groups of drafts at once, each under its own claim (a
        stream's batch of events): prepared together (one settings read, one rate-limit
        check), stored in one write (`insert_groups`), announced together. Each group's
        payloads, or a ClaimLostError in the place of a group whose claim was lost (it stored
        nothing; the others did)."""
        prepared = await self.prepare([draft for drafts, _ in groups for draft in drafts])
        wanted = prepared.wanted
        escalating = self._escalations is not None and any(
            self._escalations.escalates(draft.type) for draft in wanted)
        opened = await self._escalations.attach(wanted) if escalating else []
        # Each group's wanted drafts and their push flags (prepare's positions are in order).
        kept = list(zip(prepared.positions, wanted, prepared.push))
        insertions, taken, end = [], 0, 0
        for drafts, claim in groups:
            end += len(drafts)
            first = taken
            while taken < len(kept) and kept[taken][0] < end:
                taken += 1
            insertions.append(([draft for _, draft, _ in kept[first:taken]], claim,
                               [push for _, _, push in kept[first:taken]]))
        stored_groups = await self.store.insert_groups(insertions)
        stored: list[Created | None] = []
        for (drafts, _, _), records in zip(insertions, stored_groups):
            stored.extend([None] * len(drafts) if isinstance(records, ClaimLostError) else records)
        if not any(record is not None for record in stored):
            opened = []  # nothing of theirs was stored: their timeline has nothing to say
        created = await self.announce(prepared, stored, opened)
        results: list[list[dict | None] | ClaimLostError] = []
        start = 0
        for (drafts, _), records in zip(groups, stored_groups):
            results.append(records if isinstance(records, ClaimLostError)
                           else created[start:start + len(drafts)])
            start += len(drafts)
        return results

    async def prepare(self, drafts: list[Draft]) -> Prepared:
        """The first half of a creation: the drafts' users' settings read, the muted ones left
        out and the rest counted against the rate limit, their pushes decided."""
        started = time.perf_counter()
        preferences = await self.store.preferences_of_many({draft.user_id for draft in drafts})
        choices = [self._choice(draft, preferences.get(draft.user_id, {})) for draft in drafts]
        positions = [position for position, (draft, choice) in enumerate(zip(drafts, choices))
                     if choice.enabled or draft.priority == "critical"]
        await self.limiter.acquire(drafts[position].user_id for position in positions
                                   if drafts[position].priority != "critical")
        push = await self._pushed([(drafts[position], choices[position]) for position in positions])
        return Prepared(drafts, positions, push, started)

    async def announce(self, prepared: Prepared, stored: Sequence[Created | None],
                       opened: Sequence[dict[str, Any]] = (),
                       lines_stored: bool = False) -> list[dict | None]:
        """The second half, once `prepared.wanted` are stored (`stored`: a record for each,
        None where one was not stored after all): published, counted and observed; the
        timeline told of escalations' notifications unless their lines were stored with
        them (`lines_stored`). The payloads, None in the place of each muted or unstored one."""
        created: list[dict | None] = [None] * len(prepared.drafts)
        kept = [(position, record) for position, record in zip(prepared.positions, stored)
                if record is not None]
        messages, at = [], time.time()
        for position, record in kept:
            payload = created[position] = to_payload(record.document)
            messages.append(NotificationCreated(
                record.document["user_id"], record.document["seq"], payload,
                record.state.unread_payload(), at))
        by_tenant = self._metrics.tenant_label
        kinds = collections.Counter(
            (draft.type, draft.priority, *((tenants.tenant_of(draft.user_id),) if by_tenant else ()))
            for draft in (prepared.drafts[position] for position, _ in kept))
        for labels, count in kinds.items():
            self._metrics.notifications_created.labels(*labels).inc(count)
        if messages:
            await self._publish_many(messages)
            self._metrics.create_to_publish.observe(time.perf_counter() - prepared.started)
        if self.on_push_recorded is not None and any(record.pushed for _, record in kept):
            self.on_push_recorded()
        told = [record.document for _, record in kept
                if record.document.get("escalation") is not None]
        if self._escalations is not None and (opened or told and not lines_stored):
            try:
                await self._escalations.recorded(opened, [] if lines_stored else told)
            except Exception:  # the timeline's lines must not fail a creation that is stored
                log.exception("could not record the escalation timeline of a creation")
        if self.plugins.listens("mojavox_notification_created"):
            for position, record in kept:
                await self._observe(created[position], record.document["user_id"])
        return created

    async def _publish(self, message: Message) -> None:
        await self._publish_many([message])

    async def _publish_many(self, messages: list[Message]) -> None:
        """To every instance's hub, in one broker round trip (each message carries the time it
        was published, `at`, so receivers measure the broker's lag)."""
        await self.broker.publish_many(messages)
        self._metrics.broker_published.inc(len(messages))

    def _choice(self, draft: Draft, preferences: dict[str, ChannelPreference]) -> ChannelPreference:
        chosen = preferences.get(draft.type)
        default = self._defaults[draft.type]
        return default if chosen is None else chosen.over(default)

    async def push_wanted(self, recipients: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether each `(user_id, type)` gets pushes of that type at all: push configured,
        and the user's setting (else the type's default) says push. Presence is not asked: a
        push that replaces one already on a desktop goes whether a tab is open or not."""
        if not self._push.vapid_private_key:
            return [False] * len(recipients)
        preferences = await self.store.preferences_of_many({user_id for user_id, _ in recipients})
        wanted = []
        for user_id, type_name in recipients:
            chosen = preferences.get(user_id, {}).get(type_name)
            default = self._defaults[type_name]
            wanted.append((default if chosen is None else chosen.over(default)).push)
        return wanted

    async def _pushed(self, chosen: list[tuple[Draft, ChannelPreference]]) -> list[bool]:
        """Push when push is configured and the user wants this type pushed; with
        `push.only_when_offline`, only to users with no live socket on any instance, except
        critical ones, which are always pushed (an escalation must reach a supervisor whose tab
        is closed). Presence is asked once for the whole batch."""
        if not self._push.vapid_private_key:
            return [False] * len(chosen)
        if_offline = {draft.user_id for draft, choice in chosen if choice.push
                      and draft.priority != "critical" and self._push.only_when_offline}
        online = await self._online(if_offline) if if_offline else set()
        return [choice.push and (draft.priority == "critical" or not self._push.only_when_offline
                                 or draft.user_id not in online) for draft, choice in chosen]

    async def _observe(self, payload: dict, user_id: str) -> None:
        try:
            await self.plugins.call_each("mojavox_notification_created",
                                         notification=payload, user_id=user_id)
        except Exception:  # an observer's failure must not undo or fail the creation
            log.exception("a mojavox_notification_created observer failed")

    # -- reading -------------------------------------------------------------------------------

    async def list(self, user_id: str, limit: int = 50, offset: int = 0,
                   unread_only: bool = False) -> dict[str, Any]:
        limit, offset = page_bounds(limit, offset)
        documents, total = await self.store.list(user_id, limit, offset, unread_only)
        return {
            "notifications": [to_payload(document) for document in documents],
            "total": total,
            "hasMore": offset + len(documents) < total,
        }

    async def unread(self, user_id: str) -> dict[str, Any]:
        """`{count, byPriority}` from the user's counters (never a scan)."""
        return (await self.store.state(user_id)).unread_payload()

    async def connection_state(self, user_id: str) -> UserState:
        """What a socket needs to go live, in one read: the newest seq and the unread counts."""
        return await self.store.state(user_id)

    async def get(self, user_id: str, raw_id: Any) -> dict[str, Any]:
        """One of the user's notifications as its payload (NotFoundError otherwise); the service
        worker reads it when the push payload is minimal."""
        return to_payload(await self.store.get(user_id, notification_id(raw_id)))

    async def seq_of(self, user_id: str, raw_id: Any) -> int:
        """The sequence number of one of the user's notifications (NotFoundError otherwise)."""
        document = await self.store.get(user_id, notification_id(raw_id))
        return document["seq"]

    async def after(self, user_id: str, seq: int, limit: int) -> tuple[list[tuple[int, dict]], bool]:
        """Up to `limit` notifications after `seq`, oldest first, as (seq, payload); and whether
        more follow."""
        documents = await self.store.after(user_id, seq, limit + 1)
        return [(d["seq"], to_payload(d)) for d in documents[:limit]], len(documents) > limit

    async def between(self, user_id: str, after_seq: int, up_to_seq: int,
                      limit: int) -> tuple[list[tuple[int, dict]], bool]:
        """The newest `limit` notifications with after_seq < seq <= up_to_seq, oldest first; and
        whether older ones in that range were left out."""
        documents = await self.store.newest_between(user_id, after_seq, up_to_seq, limit + 1)
        kept = list(reversed(documents[:limit]))
        return [(d["seq"], to_payload(d)) for d in kept], len(documents) > limit

    # -- changes ---------------------------------------------------------------------------------

    async def mark_read(self, user_id: str, raw_id: Any) -> None:
        """Idempotent; every tab hears of it even when it was already read, so a client may
        wait for `notification_read` as its acknowledgement."""
        oid = notification_id(raw_id)
        _, state = await self.store.mark_read(user_id, oid)
        await self._publish(NotificationRead(user_id, str(oid), state.unread_payload(), time.time()))

    async def mark_all_read(self, user_id: str) -> int:
        changed, state = await self.store.mark_all_read(user_id)
        await self._publish(AllRead(user_id, state.unread_payload(), time.time()))
        return changed

    async def delete(self, user_id: str, raw_id: Any) -> None:
        oid = notification_id(raw_id)
        state = await self.store.delete(user_id, oid)
        await self._publish(NotificationDeleted(user_id, str(oid), state.unread_payload(),
                                                time.time()))

    # -- preferences and push subscriptions ------------------------------------------------------

    async def preferences(self, user_id: str) -> dict[str, Any]:
        stored = await self.store.preferences_of(user_id)
        return preferences_payload({name: stored.get(name, ChannelPreference()).over(default)
                                    for name, default in self._defaults.items()})

    async def update_preferences(self, user_id: str, raw: Any) -> dict[str, Any]:
        changes = self._preferences.check(raw)
        await self.store.update_preferences(user_id, changes)
        return await self.preferences(user_id)

    async def save_push_subscription(self, user_id: str, raw: Any) -> PushSubscription:
        subscription = check_push_subscription(raw)
        await check_endpoint(subscription.endpoint, self._push.allowed_insecure_hosts, self._resolver)
        if not await self.store.save_push_subscription(user_id, subscription,
                                                       keep=self._push.max_subscriptions_per_user):
            raise ConflictError("endpoint: this push subscription is registered to another user; "
                                "unsubscribe the browser and subscribe again for a new endpoint",
                                code="push_subscription_taken")
        return subscription

    async def remove_push_subscription(self, user_id: str, raw: Any) -> None:
        await self.store.remove_push_subscription(user_id, check_endpoint_body(raw))

    # -- broadcasts ------------------------------------------------------------------------------

    async def broadcast(self, raw: Any, reach: Reach = Reach()) -> dict[str, Any]:
        """Store an announcement for every dashboard user of a tenant (or of every tenant:
        `"tenant": "*"` from a platform service), then publish it to every instance's sockets;
        its payload."""
        draft = check_broadcast(raw, self._action_url_hosts, reach)
        document = to_broadcast_document(draft, utcnow())
        await self.store.insert_broadcast(document)
        payload = to_broadcast_payload(document)
        await self._publish(BroadcastPosted(payload, time.time(), draft.audience))
        self._metrics.broadcasts_created.inc()
        return payload

    async def active_broadcasts(self, tenant: str = tenants.DEFAULT) -> list[dict[str, Any]]:
        """What `tenant`'s users are shown: the newest broadcasts not yet expired, for it or for
        everyone (at most wire.broadcast.MAX_ACTIVE), newest first."""
        return [to_broadcast_payload(document)
                for document in await self.store.active_broadcasts(MAX_ACTIVE, tenant)]

    async def every_active_broadcast(self) -> list[tuple[str, dict[str, Any]]]:
        """(audience, payload) of every audience's active broadcasts, for a process's board."""
        return [(document.get("audience") or tenants.DEFAULT, to_broadcast_payload(document))
                for document in await self.store.active_broadcasts(MAX_ACTIVE)]

    async def cleanup(self) -> int:
        """Delete expired broadcasts, event ids and Idempotency-Keys past
        `retention.idempotency_hours`, and expired or past-retention notifications; how many
        notifications."""
        removed = await self.store.delete_expired_broadcasts()
        if removed:
            log.info("cleanup removed %d expired broadcasts", removed)
        forgotten = await self.store.delete_expired_events(
            utcnow() - timedelta(hours=self._retention.idempotency_hours))
        if forgotten:
            log.info("cleanup forgot %d event ids and Idempotency-Keys older than %d hours",
                     forgotten, self._retention.idempotency_hours)
        finished = await self.store.delete_finished_escalations(
            int((utcnow() - timedelta(days=self._retention.days)).timestamp() * 1000))
        if finished:
            log.info("cleanup forgot %d escalations finished more than %d days ago",
                     finished, self._retention.days)
        return await self.store.delete_expired(self._retention.days)
