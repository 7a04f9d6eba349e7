"""Storage: one interface, two engines, chosen by URL.

- `embedded` (the default) or `sqlite:///path`: SQLite in this process (`store/sqlite/`),
  WAL mode, real indexes; several processes on one host may share the file.
- `mongodb://…`: MongoDB through PyMongo's async API (`store/mongo/`), for several hosts.

Callers (the service, ingest, the CLI) only see `NotificationStore`, get documents (plain dicts
shaped as `model.to_document` makes them) and `UserState`s back, and every backend failure as
`StorageUnavailableError`. Both engines pass the same contract tests (tests/test_store_contract.py).

Each user has a state record (a "counter document") holding the last sequence number and the
unread counts per priority, kept exact by every change, so the hot paths never count rows.
"""

from __future__ import annotations

import functools
import inspect
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import StorageUnavailableError
from ..ids import ObjectId
from ..model import PRIORITIES, ChannelPreference, Draft, PushSubscription
from ..settings import Settings

EMBEDDED_FILE = "notify.db"


@dataclass(slots=True)  # not frozen: made per notification, and frozen ones cost 3× to make
class UserState:
    """One user's counters: `seq` of their newest notification, how many are stored (`total`),
    and how many of those are unread, per priority. All O(1) to read."""

    seq: int = 0
    total: int = 0
    unread: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))

    @property
    def unread_total(self) -> int:
        return sum(self.unread.values())

    def unread_payload(self) -> dict[str, Any]:
        """The `{count, byPriority}` shape of `unread_count` frames and the REST answer."""
        by_priority = {priority: self.unread.get(priority, 0) for priority in PRIORITIES}
        return {"count": sum(by_priority.values()), "byPriority": by_priority}


@dataclass(slots=True)  # (as UserState)
class Created:
    """A stored notification, its recipient's state right after it was stored, and whether a
    web push of it was recorded in the push outbox."""

    document: dict[str, Any]
    state: UserState
    pushed: bool = False


@dataclass(frozen=True)
class EventClaim:
    """The right to handle one idempotency key (an event id, an Idempotency-Key), held by one
    request: `owner` is a random token of that request's. Storing with a claim also completes
    it, in the same transaction, and only while the claim is still this owner's and pending:
    a write that lands after its request gave up (and released the claim) or was taken over
    stores nothing, so a retry can never duplicate it."""

    key: str
    owner: str


@dataclass
class Insertion:
    """One `insert_many` call as an engine queues it: its drafts, the claim they are stored
    under and one push flag per draft; `abandoned` once its caller gave up waiting (a batch
    that has not written it yet then never does)."""

    drafts: list[Draft]
    claim: EventClaim | None
    push: tuple[bool, ...]
    abandoned: bool = False


@dataclass(frozen=True)
class DueShare:
    """One process's share of the due escalations under `serve --workers N`: those whose
    `due_at` is `index` modulo `count`, and everyone's due at `everyone_before` or earlier (a
    worker that died, or fell behind, leaves its share to the others). Due times are
    milliseconds, spread enough for an even split."""

    index: int
    count: int
    everyone_before: int


@dataclass
class EscalationChange:
    """One compare-and-set of an escalation (`change_escalations`) and what is stored with it
    only if it wins: a step's notifications (`drafts`, one push flag each) and its timeline
    lines (`events`, records without `once`). A step is its change and its notifications at
    once: stored together or not at all, so no process can die between the two."""

    document: dict[str, Any]
    expected_version: int
    drafts: Sequence[Draft] = ()
    push: Sequence[bool] = ()
    events: Sequence[dict[str, Any]] = ()


#: One group of `insert_groups`: its drafts, the claim they are stored under, a push flag each.
InsertGroup = tuple[list[Draft], "EventClaim | None", Sequence[bool]]

#: Members one topic may have (wire.topic's checks keep to it; the engines refuse past it).
MAX_TOPIC_MEMBERS = 100_000


class TopicFullError(Exception):
    """Adding these members would pass the topic's limit; nothing was changed."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the topic has {size} members; at most {limit}")
        self.size, self.limit = size, limit


class ClaimLostError(Exception):
    """The claim a write was made under is no longer its owner's (released after a timeout, or
    taken over as stale): nothing was stored. The owner waits for the key's record instead."""


@dataclass(frozen=True)
class PushJob:
    """A notification waiting in the push outbox to be pushed to its user's browsers; `done`
    lists the endpoints that already have it."""

    id: str
    user_id: str
    notification_id: str
    priority: str
    created_at: datetime
    attempts: int
    done: tuple[str, ...]


class NotificationStore(ABC):
    """All storage access. Sequence numbers are gap-free per user: `seq` N+1 becomes visible
    only after N is stored, so a reader of "everything after N" never skips one in flight."""

    #: A short name for health reports and logs, never holding a password.
    description: str = "storage"
    #: Told of every failed operation (the storage watchdog listens here).
    on_failure: Callable[[BaseException], None] | None = None
    #: Told how long each public operation took, by its name (metrics listen here).
    on_operation: Callable[[str, float], None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every engine's public operations are timed for `on_operation`, in this one place."""
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, _timed(name, member))

    def _report_failure(self, error: BaseException) -> None:
        if self.on_failure is not None:
            self.on_failure(error)

    def _unavailable(self, message: str) -> StorageUnavailableError:
        """A failure of this engine's own making (a timeout, a full disk), reported; to raise."""
        error = StorageUnavailableError(message)
        self._report_failure(error)
        return error

    @abstractmethod
    async def open(self) -> None:
        """Create the schema or indexes; safe at every start and from several processes."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether storage answers right now (never raises)."""

    @abstractmethod
    async def probe(self) -> None:
        """A read and a small write right now (a full disk fails it);
        StorageUnavailableError when either fails."""

    # -- notifications -------------------------------------------------------------------------

    @abstractmethod
    async def insert_many(self, drafts: list[Draft], claim: EventClaim | None = None,
                          push: Sequence[bool] = ()) -> list[Created]:
        """Store drafts in one transaction, each with the next `seq` of its user; returned in
        the order given. Where `push[i]` is true and the user has a push subscription, a push
        job is recorded with the notification, so a restart loses no push. With a `claim`, the
        notifications carry its key as `event_id` and the claim is completed with their ids in
        that transaction; ClaimLostError (nothing stored) when it is no longer the owner's."""

    @abstractmethod
    async def insert_groups(self, groups: Sequence[InsertGroup]) -> list[list[Created] | ClaimLostError]:
        """Several `insert_many` calls, `(drafts, claim, push)` each, in one transaction where
        they fit in one (a stream's batch of events, each under its own claim): each group's
        records, or a ClaimLostError in the place of a group whose claim is no longer its
        owner's (that group stored nothing; the others are stored). A group without drafts
        gets an empty list and its claim is left as it is (`complete_event` is the caller's)."""

    async def insert(self, draft: Draft, claim: EventClaim | None = None, push: bool = False) -> Created:
        return (await self.insert_many([draft], claim, [push]))[0]

    @abstractmethod
    async def state(self, user_id: str) -> UserState:
        """The user's counters, O(1); expired notifications are swept first when one is due."""

    @abstractmethod
    async def list(self, user_id: str, limit: int, offset: int,
                   unread_only: bool) -> tuple[list[dict], int]:
        """A page of unexpired notifications, newest first, and the total from the counters
        (all stored, or unread ones with `unread_only`)."""

    @abstractmethod
    async def after(self, user_id: str, seq: int, limit: int) -> list[dict]:
        """The user's unexpired notifications with `seq` above the given one, oldest first."""

    @abstractmethod
    async def newest_between(self, user_id: str, after_seq: int, up_to_seq: int,
                             limit: int) -> list[dict]:
        """Unexpired notifications with after_seq < seq <= up_to_seq, newest first."""

    @abstractmethod
    async def get(self, user_id: str, notification_id: ObjectId) -> dict[str, Any]:
        """One unexpired notification of the user; NotFoundError otherwise."""

    @abstractmethod
    async def mark_read(self, user_id: str, notification_id: ObjectId) -> tuple[bool, UserState]:
        """Mark one read; (False, state) when it already was; NotFoundError if not the user's."""

    @abstractmethod
    async def mark_all_read(self, user_id: str) -> tuple[int, UserState]:
        """Mark every unread one read; how many changed, and the state after."""

    @abstractmethod
    async def delete(self, user_id: str, notification_id: ObjectId) -> UserState:
        """Delete one of the user's notifications; NotFoundError if there is none."""

    @abstractmethod
    async def delete_expired(self, retention_days: int) -> int:
        """Delete notifications past their expiry or the retention period, keeping every
        affected user's counters exact; how many were deleted."""

    # -- broadcasts ----------------------------------------------------------------------------

    @abstractmethod
    async def insert_broadcast(self, document: dict[str, Any]) -> None:
        """Store a broadcast (`model.to_broadcast_document`'s shape, with its `audience`: a
        tenant's name, or `tenants.EVERYONE`)."""

    @abstractmethod
    async def active_broadcasts(self, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        """Broadcasts not yet expired, newest first: of `tenant`, the newest `limit` whose
        audience is that tenant or everyone; with no tenant, the newest `limit` of each audience
        (what a process's board holds). Each carries its `audience`; a broadcast stored before
        audiences existed is the default tenant's, and reads so."""

    @abstractmethod
    async def delete_expired_broadcasts(self) -> int:
        """Delete the broadcasts past their expiry; how many."""

    # -- topics --------------------------------------------------------------------------------
    # A topic is a tenant-qualified key (`tenants.key`), its members user keys.

    @abstractmethod
    async def update_topic(self, topic: str, add: list[str], remove: list[str],
                           max_members: int) -> int:
        """Add the members of `add` that are not members yet, then remove those of `remove`, in
        one transaction; the member count after. When the count would pass `max_members`
        nothing changes and `TopicFullError` is raised (unless the call shrinks the topic: one
        already past a limit since lowered may still lose members)."""

    @abstractmethod
    async def topic_members(self, topic: str, limit: int, after: str | None = None) -> list[str]:
        """Members in ascending order, the first `limit` after `after` (a member key)."""

    @abstractmethod
    async def topic_size(self, topic: str) -> int:
        """How many members (0 for a topic that does not exist)."""

    @abstractmethod
    async def delete_topic(self, topic: str) -> bool:
        """Remove every member; whether the topic had any."""

    @abstractmethod
    async def topics_of(self, member: str) -> list[str]:
        """The topics that have `member` (all in its tenant: members are added with their
        topic's tenant), in ascending order."""

    # -- escalations ---------------------------------------------------------------------------
    # An escalation is a JSON-shaped document (escalations/record.py makes them; times in epoch
    # milliseconds) with at least `_id`, `key` (tenant-qualified), `state`, `version` and
    # `due_at` (None when nothing is due), and `live_key` while it is unresolved. Its
    # notifications carry `escalation: {id, step, round, shown}`, `shown` being what clients saw
    # when it was made; every read of a notification adds `current`, the escalation document
    # as it is now (as it ended, once the escalation is forgotten).

    @abstractmethod
    async def open_escalation(self, document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store a new escalation, unless one with its `live_key` is unresolved: then (that one,
        False). Two processes opening one key at once get one escalation."""

    @abstractmethod
    async def escalation(self, escalation_id: str) -> dict[str, Any] | None:
        """The escalation, or None."""

    @abstractmethod
    async def unresolved_escalation(self, key: str) -> dict[str, Any] | None:
        """The escalation of `key` that is not resolved yet, or None."""

    @abstractmethod
    async def change_escalations(self, changes: Sequence[EscalationChange],
                                 created_at: datetime | None = None,
                                 giving_way: bool = False) -> list[list[Created] | None]:
        """Each change a compare-and-set: the stored document replaced by the change's only if
        its version is still the expected one (the document carries its new version), and
        only then its drafts stored (as `insert_many` stores them, created at `created_at`,
        by default now) and its timeline lines appended, in one transaction with them. Per
        change, in order: the records of its drafts when it was stored, None when another
        change came first. `giving_way` (the timers' batches): an engine with one writer may
        let this process's other writes go first between parts of the batch."""

    @abstractmethod
    async def due_escalations(self, now_ms: int, limit: int, after: tuple[int, str] | None = None,
                              share: DueShare | None = None) -> list[dict[str, Any]]:
        """Up to `limit` escalations whose `due_at` has come, earliest first (by `due_at`,
        then id), only those past `after` (a (due_at, id) position) when given, and only
        those of `share` when given."""

    @abstractmethod
    async def escalation_recipients(self, escalation_ids: Sequence[str]
                                    ) -> dict[str, list[dict[str, Any]]]:
        """Each escalation's notifications as `{user_id, notification_id, step, round,
        created_at, read, read_at}` (times in epoch ms), oldest first (a recipient who deleted
        theirs is not one any more); every id asked for is a key."""

    @abstractmethod
    async def escalations_of(self, user_id: str, states: Sequence[str],
                             limit: int) -> list[dict[str, Any]]:
        """The escalations in one of `states` that `user_id` has a notification of, newest first."""

    @abstractmethod
    async def add_escalation_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Append `{escalation_id, at, event, user_id?, step?, channel?, once?}` records; one
        whose `once` is already stored is left out."""

    @abstractmethod
    async def escalation_events(self, escalation_id: str) -> list[dict[str, Any]]:
        """Its events in the order they happened."""

    @abstractmethod
    async def delete_finished_escalations(self, before_ms: int) -> int:
        """Forget resolved and unanswered escalations (and their events) last changed before
        `before_ms`; how many."""

    # -- channel preferences -----------------------------------------------------------------

    @abstractmethod
    async def preferences_of_many(self, user_ids: Iterable[str]) -> dict[str, dict[str, ChannelPreference]]:
        """For each user that changed a preference, only the changed types (one round trip)."""

    async def preferences_of(self, user_id: str) -> dict[str, ChannelPreference]:
        return (await self.preferences_of_many([user_id])).get(user_id, {})

    @abstractmethod
    async def update_preferences(self, user_id: str, changes: dict[str, dict[str, bool]]) -> None:
        """Apply `{type: {enabled?, push?}}`; a stored type always has both keys."""

    # -- push subscriptions ------------------------------------------------------------------

    @abstractmethod
    async def save_push_subscription(self, user_id: str, subscription: PushSubscription,
                                     keep: int) -> bool:
        """Register an endpoint for its user, or renew its keys; False (and nothing changed)
        when the endpoint is another user's, so no one takes over someone else's browser.
        The user then keeps their `keep` most recently registered subscriptions."""

    @abstractmethod
    async def remove_push_subscription(self, user_id: str, endpoint: str) -> None:
        """NotFoundError when the user has no subscription with that endpoint."""

    @abstractmethod
    async def push_subscriptions_of(self, user_id: str) -> list[dict]:
        """`{endpoint, user_id, keys: {p256dh, auth}, created_at, updated_at}` documents."""

    @abstractmethod
    async def forget_push_subscription(self, endpoint: str) -> None:
        """The push service said the endpoint is gone (404/410): delete it, whoever's it is."""

    # -- push outbox -------------------------------------------------------------------------

    @abstractmethod
    async def claim_pushes(self, limit: int, lease_seconds: float) -> list[PushJob]:
        """Up to `limit` due jobs, leased for `lease_seconds` so that no other process takes
        them meanwhile (a job whose lease ran out, its process gone, is due again)."""

    @abstractmethod
    async def queue_pushes(self, jobs: Sequence[tuple[str, str, str]]) -> int:
        """A push job, due now, for each `(user_id, notification_id, priority)` of a stored
        notification whose user has a push subscription (a notification that changed after
        it was pushed, such as an escalation someone took). How many were recorded."""

    @abstractmethod
    async def reschedule_push(self, job_id: str, delay_seconds: float, attempts: int,
                              done: Sequence[str]) -> None:
        """Try the job again after `delay_seconds`, remembering the endpoints that have it."""

    @abstractmethod
    async def finish_push(self, job_id: str) -> None:
        """The job is over (every endpoint has it, or it was given up)."""

    @abstractmethod
    async def push_backlog(self) -> int:
        """How many jobs wait in the push outbox."""

    # -- idempotent events -------------------------------------------------------------------

    @abstractmethod
    async def claim_event(self, key: str, fingerprint: str, owner: str) -> dict[str, Any] | None:
        """Record that `owner` handles `key` (pending); None when it does now, else the earlier
        record `{_id, type, state, owner, notifications, created_at}`."""

    @abstractmethod
    async def claim_events(self, claims: Sequence[tuple[str, str, str]]
                           ) -> list[dict[str, Any] | None]:
        """`claim_event` for several distinct `(key, fingerprint, owner)`, in one write: for
        each, None when its owner handles the key now, else the earlier record."""

    @abstractmethod
    async def take_over_event(self, key: str, stale_owner: str | None, owner: str) -> bool:
        """Make a pending claim of `stale_owner`'s (a request that died) `owner`'s, restarting
        its age; False when it is not that owner's pending claim any more."""

    @abstractmethod
    async def complete_event(self, claim: EventClaim, notification_ids: list[str]) -> None:
        """Mark the claim done with the ids it created, if it is still its owner's and pending
        (`insert_many` with the claim already did, for what it stored)."""

    @abstractmethod
    async def release_event(self, claim: EventClaim) -> None:
        """Forget the claim if it is still its owner's and pending (its handling failed before
        anything was stored), so a retry can succeed; a completed one stays."""

    @abstractmethod
    async def event(self, key: str) -> dict[str, Any] | None:
        """The key's record, or None."""

    @abstractmethod
    async def delete_expired_events(self, before: datetime) -> int:
        """Forget the keys claimed before `before` (retention.idempotency_hours); how many."""


def _timed(name: str, method: Callable) -> Callable:
    @functools.wraps(method)
    async def timed(self: "NotificationStore", *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            if self.on_operation is not None:
                self.on_operation(name, time.perf_counter() - started)
    return timed


def push_flags(push: Sequence[bool], count: int) -> tuple[bool, ...]:
    """`push` as one flag per draft (missing ones false)."""
    return tuple(push) + (False,) * (count - len(push))


def storage_url(settings: Settings) -> str:
    """The configured URL with the `embedded` alias spelled out."""
    url = settings.storage.url
    if url == "embedded":
        return f"sqlite:///{settings.data_path / EMBEDDED_FILE}"
    return url


def sqlite_path(settings: Settings, url: str) -> Path:
    """`sqlite:///relative/file.db` is relative to the settings file's folder,
    `sqlite:////absolute/file.db` absolute."""
    return settings.resolve_path(url[len("sqlite:///"):])


def build_store(settings: Settings) -> NotificationStore:
    """The engine the storage URL names (not opened yet)."""
    url = storage_url(settings)
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore
        return SqliteStore(sqlite_path(settings, url), settings.storage)
    from .mongo import MongoStore
    return MongoStore.connect(url, settings.mongodb, settings.storage.operation_timeout_seconds)
