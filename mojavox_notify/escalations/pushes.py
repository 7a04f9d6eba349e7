"""Pushes that follow an escalation to the desktop: once someone takes it or it is resolved,
each recipient's browsers get one more push of their notification (its payload now says
"Taken by bob" or "Resolved: call ended", push.py), which replaces the notification on screen
(the service worker closes the tag `escalation-<id>`) and, by the Web Push `Topic`, a push the
push service still holds for a browser that is offline.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

from ..store import NotificationStore


class EscalationPushes:
    def __init__(self, store: NotificationStore,
                 wanted: Callable[[Sequence[tuple[str, str]]], Awaitable[list[bool]]]):
        """`wanted((user_id, type) pairs)` answers whether each user gets pushes of that type
        at all (push configured, their settings): the one who turned them off gets none of
        these either."""
        self.store = store
        self._wanted = wanted
        #: Told when jobs were queued (the push worker looks at once).
        self.wake: Callable[[], None] = lambda: None

    async def changed(self, documents: Sequence[Mapping[str, Any]],
                      recipients: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
        """After changes were stored and published: a push job for each recipient of an
        escalation that was just taken (its first acknowledgement) or resolved, for their
        newest notification of it. How many were queued (users with a subscription)."""
        newest: dict[tuple[str, str], tuple[str, str, str]] = {}
        for document in documents:
            if not _just_settled(document):
                continue
            for recipient in recipients.get(document["_id"], ()):  # oldest first
                newest[(document["_id"], recipient["user_id"])] = (
                    recipient["user_id"], str(recipient["notification_id"]),
                    document["template"]["priority"])
        if not newest:
            return 0
        types = {document["_id"]: document["type"] for document in documents}
        jobs = list(newest.values())
        wanted = await self._wanted([(user_id, types[escalation_id])
                                     for escalation_id, user_id in newest])
        queued = await self.store.queue_pushes([job for job, want in zip(jobs, wanted) if want])
        if queued:
            self.wake()
        return queued


def _just_settled(document: Mapping[str, Any]) -> bool:
    """Resolved, or acknowledged by this very change (a later acknowledgement of one that does
    not claim changes `updated_at` only, and tells no browser again)."""
    if document["state"] == "resolved":
        return True
    return (document["state"] == "acknowledged"
            and document.get("acknowledged_at") == document.get("updated_at"))
