"""Storing notifications, the embedded engine's hot path: the drafts of every insertion queued
meanwhile go into one transaction, with their users' counters, their push jobs and the
completion of their claims; rows go in by multi-row statements.
"""

from __future__ import annotations

import functools
import json

from ...model import PRIORITIES, to_document
from .. import ClaimLostError, Created, Insertion, UserState
from .execution import transaction
from .queries import _counters_of, _holds, _subscribed
from .rows import NEVER_MS, NOTIFICATION_COLUMNS, STATE_COLUMNS, _row, to_ms

# One counter row per user, created by its first notification. `expiry_due` is the earliest
# expiry among the user's notifications that expire at all: reads sweep only when it has come.
# A batch computes the new counters itself (it holds the write lock) and writes them back here.
SAVE_STATES = (f"INSERT INTO user_state (user_id, {STATE_COLUMNS}, expiry_due) VALUES {{rows}} "
               f"""ON CONFLICT (user_id) DO UPDATE SET
    seq = excluded.seq,
    total = excluded.total,
    {", ".join(f"unread_{p} = excluded.unread_{p}" for p in PRIORITIES)},
    expiry_due = min(expiry_due, excluded.expiry_due)""")
STATE_WIDTH = 4 + len(PRIORITIES)

INSERT_NOTIFICATIONS = f"INSERT INTO notifications ({NOTIFICATION_COLUMNS}) VALUES {{rows}}"
NOTIFICATION_WIDTH = 16

INSERT_PUSH_JOBS = """
INSERT INTO push_outbox (user_id, notification_id, priority, created_at, due_at, attempts, done,
                         leased_until) VALUES {rows}"""
PUSH_JOB_WIDTH = 8
# Rows per multi-row statement, at most (a power of two; a batch takes as few as it can).
ROWS_PER_STATEMENT = 256


def _insert_many(connection, insertions: list[Insertion], created_at) -> list:
    """All insertions' drafts in one transaction, in order: the users' counters are read once,
    advanced here (the write lock is held, so nobody else moves them) and written back once per
    user; the push jobs of flagged drafts whose users have a subscription go into the outbox with
    them, and each insertion's claim is completed with its ids. One list of records per
    insertion; an insertion given up on is skipped (an empty list, nobody reads it), and one
    whose claim is lost gets a ClaimLostError instead, having stored nothing."""
    with transaction(connection):
        outcomes: list = []
        live = []
        for insertion in insertions:
            if insertion.abandoned:
                outcomes.append([])
            elif insertion.claim is not None and not _holds(connection, insertion.claim):
                outcomes.append(ClaimLostError(f"the claim on {insertion.claim.key} was given up"))
            else:
                outcomes.append(None)
                live.append(insertion)
        created = _insert_live(connection, live, created_at)
    records = iter(created)
    return [[next(records) for _ in insertion.drafts] if outcome is None else outcome
            for insertion, outcome in zip(insertions, outcomes)]


def _insert_live(connection, insertions: list[Insertion], created_at) -> list[Created]:
    users = {draft.user_id for insertion in insertions for draft in insertion.drafts}
    counters = _counters_of(connection, users)
    subscribed = _subscribed(connection, {
        draft.user_id for insertion in insertions
        for draft, wanted in zip(insertion.drafts, insertion.push) if wanted})
    expiry: dict[str, int] = {}
    rows, created = [], []
    for insertion in insertions:
        key = insertion.claim.key if insertion.claim is not None else None
        for draft, wanted in zip(insertion.drafts, insertion.push):
            seq, total, unread = counters.get(draft.user_id) or (0, 0, dict.fromkeys(PRIORITIES, 0))
            unread = {**unread, draft.priority: unread[draft.priority] + 1}
            counters[draft.user_id] = (seq + 1, total + 1, unread)
            if draft.expires_at is not None:
                expiry[draft.user_id] = min(expiry.get(draft.user_id, NEVER_MS),
                                            to_ms(draft.expires_at))
            document = to_document(draft, created_at=created_at, seq=seq + 1, event_id=key)
            rows.append(_row(document))
            created.append(Created(document, UserState(seq + 1, total + 1, unread),
                                   pushed=wanted and draft.user_id in subscribed))
    _insert_rows(connection, INSERT_NOTIFICATIONS, NOTIFICATION_WIDTH, rows)
    _insert_rows(connection, INSERT_PUSH_JOBS, PUSH_JOB_WIDTH, [
        (record.document["user_id"], str(record.document["_id"]), record.document["priority"],
         to_ms(created_at), to_ms(created_at), 0, "[]", 0) for record in created if record.pushed])
    _insert_rows(connection, SAVE_STATES, STATE_WIDTH, [
        (user_id, seq, total, *(unread[p] for p in PRIORITIES), expiry.get(user_id, NEVER_MS))
        for user_id, (seq, total, unread) in counters.items()])
    records = iter(created)
    for insertion in insertions:
        stored = [next(records) for _ in insertion.drafts]
        if insertion.claim is not None:
            connection.execute("""
                UPDATE events SET state = 'done', notifications = ?, completed_at = ?
                WHERE id = ?""", (json.dumps([str(record.document["_id"]) for record in stored]),
                                  to_ms(created_at), insertion.claim.key))
    return created


def _queue_pushes(connection, jobs: list[tuple[str, str, str]], now_ms: int) -> int:
    """Push jobs for stored notifications, of the users among them with a subscription."""
    with transaction(connection):
        subscribed = _subscribed(connection, {user_id for user_id, _, _ in jobs})
        rows = [(user_id, notification_id, priority, now_ms, now_ms, 0, "[]", 0)
                for user_id, notification_id, priority in jobs if user_id in subscribed]
        _insert_rows(connection, INSERT_PUSH_JOBS, PUSH_JOB_WIDTH, rows)
    return len(rows)


def _insert_rows(connection, statement: str, width: int, rows: list[tuple]) -> None:
    """Rows inserted by multi-row statements: one step each (one GIL hand-off, see
    coalesce.py) for up to ROWS_PER_STATEMENT rows, where `executemany` takes one per row."""
    start = 0
    while start < len(rows):
        size = ROWS_PER_STATEMENT
        while size > len(rows) - start:
            size //= 2
        connection.execute(_multi_row(statement, width, size),
                           [value for row in rows[start:start + size] for value in row])
        start += size


@functools.lru_cache(maxsize=64)
def _multi_row(statement: str, width: int, count: int) -> str:
    """`statement` with its `{rows}` as `count` rows of `width` parameters."""
    row = "(" + ", ".join("?" * width) + ")"
    return statement.format(rows=", ".join([row] * count))
