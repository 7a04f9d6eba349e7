"""The MongoDB engine, through PyMongo's async API: for several hosts and a replica set.

Each user has a counter document in `user_state` (`_id` = user id) with the newest `seq`, the
number stored (`total`), the unread counts per priority (`unread_low` … `unread_critical`) and
`expiry_due`, the earliest expiry among their notifications in epoch milliseconds, so no hot
path counts documents. The fields are flat integers.

Every change that touches a notification and its user's counters is one multi-document
transaction, so the counters cannot drift: a write that fails or times out halfway leaves
both as they were, and a late commit carries both. MongoDB runs transactions on a replica set
or a sharded cluster (a single-member replica set is enough); `open()` says so plainly when the
server cannot. A claim (idempotency.py) is completed in the transaction that stores its
notifications. This process runs its transactions one at a time, and insertions queued meanwhile
share the next one (coalesce.py): transactions on one user's counters conflict anyway (MongoDB
aborts all but one and the driver retries them), so taking turns costs no concurrency that
would have succeeded, and it keeps nx-27017, the wire-level test server, correct (it cannot run
two transactions of one client at once).

Only plain driver features that real MongoDB has are used; the tests run this engine over the
wire against nx-27017. Every document is written with all of its fields (a notification that
never expires has a far-future `expires_at`), so queries are plain equality and range matches.

By concern: `store.py` (`MongoStore`, the storage interface), `insertion.py` (storing
notifications with their counters, push jobs and claims), `transactions.py` (failures, timeouts
and the turn to run a transaction), `schema.py` (collections, indexes, earlier schemas brought up
to date) and `documents.py` (the collections by role, counter documents, times).
"""

from .store import MongoStore

__all__ = ["MongoStore"]
