"""Topics: named sets of users inside a tenant ("the supervisors of the north team"), managed by
services, so a draft can name a topic instead of a list of user ids.

In storage a topic is `tenants.key(tenant, topic key)` and its members are user keys, so two
tenants' topics of one key, and their users of one id, never meet. Callers see plain topic keys
and user ids; the tenant is the caller's, or the one a platform service names.
"""

from __future__ import annotations

from typing import Any

from . import tenants
from .errors import ConflictError, ValidationError
from .store import MAX_TOPIC_MEMBERS, NotificationStore, TopicFullError
from .wire.topic import MAX_MEMBERS_PAGE, check_member, check_topic_key, check_topic_update

#: The most members a topic may have (the store's figure; a test lowers it here).
MAX_MEMBERS = MAX_TOPIC_MEMBERS


class Topics:
    def __init__(self, store: NotificationStore):
        self._store = store

    async def update(self, reach: tenants.Reach, key: str, raw_body: Any) -> dict[str, Any]:
        """Add, then remove members; `{"topic", "members": count after}`. Nothing changes when
        the topic would pass MAX_MEMBERS (409 `topic_full`)."""
        check_topic_key(key)
        update = check_topic_update(raw_body)
        tenant = reach.tenant_named(update.tenant)
        topic = tenants.key(tenant, key)
        if not update.add and not update.remove:
            return {"topic": key, "members": await self._store.topic_size(topic)}
        try:
            count = await self._store.update_topic(
                topic, [tenants.key(tenant, user) for user in update.add],
                [tenants.key(tenant, user) for user in update.remove], MAX_MEMBERS)
        except TopicFullError as full:
            raise ConflictError(f"add: a topic has at most {full.limit} members (this one has "
                                f"{full.size}); nothing was changed", code="topic_full") from None
        return {"topic": key, "members": count}

    async def members(self, reach: tenants.Reach, key: str, limit: int, after: str | None,
                      tenant: str | None) -> dict[str, Any]:
        """A page of user ids in ascending order, those after `after`; `next` is the `after` of
        the next page, None on the last. An unknown topic has no members."""
        check_topic_key(key)
        if not 1 <= limit <= MAX_MEMBERS_PAGE:
            raise ValidationError("limit", f"must be between 1 and {MAX_MEMBERS_PAGE}")
        if after is not None:
            check_member(after, "after")
        tenant = reach.tenant_named(tenant)
        keys = await self._store.topic_members(
            tenants.key(tenant, key), limit + 1,
            tenants.key(tenant, after) if after is not None else None)
        page = [tenants.name_of(member) for member in keys[:limit]]
        return {"members": page, "next": page[-1] if len(keys) > limit else None}

    async def delete(self, reach: tenants.Reach, key: str, tenant: str | None) -> None:
        """Remove every member; deleting an unknown topic succeeds too."""
        check_topic_key(key)
        await self._store.delete_topic(tenants.key(reach.tenant_named(tenant), key))

    async def topics_of(self, reach: tenants.Reach, user_id: str | None,
                        tenant: str | None) -> dict[str, Any]:
        """The keys of the topics the user is a member of, in ascending order."""
        if user_id is None:
            raise ValidationError("userId", "is required: the user whose topics to list")
        check_member(user_id, "userId")
        tenant = reach.tenant_named(tenant)
        topics = await self._store.topics_of(tenants.key(tenant, user_id))
        return {"topics": [tenants.name_of(topic) for topic in topics]}
