"""A topic: a named set of users inside a tenant, as services manage it over REST.

`check_topic_key` is the key rule (a path segment, and a draft's `topic`); `check_topic_update`
takes a `PUT /api/topics/{key}/members` body through `TOPIC_UPDATE`, then each user id through
the rule a draft's `userId` keeps (no control character: with one, an id could spell another
tenant's user key); `check_member` checks one user id of a query (`after`, `userId`). The
answers' schemas are `TOPIC_UPDATED`, `TOPIC_MEMBERS` and `TOPICS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from .input import check_recipient
from .schema import COUNT, TENANT, USER_ID, Checker, object_schema

MAX_TOPIC_KEY = 128
TOPIC_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
TOPIC_KEY_RULE = (f"must be a topic key of 1 to {MAX_TOPIC_KEY} characters: letters, digits, "
                  "'.', '_', ':' or '-', starting with a letter or digit")
#: The most user ids one update may add, and the most it may remove.
MAX_CHANGES = 1000
#: The page sizes of `GET /api/topics/{key}/members`.
MAX_MEMBERS_PAGE = 1000
DEFAULT_MEMBERS_PAGE = 100

TOPIC_KEY = {"type": "string", "minLength": 1, "maxLength": MAX_TOPIC_KEY,
             "pattern": f"^{TOPIC_KEY_PATTERN.pattern}$", "x-error": TOPIC_KEY_RULE}
MEMBER = USER_ID


def _members(verb: str) -> dict[str, Any]:
    return {"type": "array", "maxItems": MAX_CHANGES, "items": MEMBER,
            "x-error": f"must be a list of at most {MAX_CHANGES} user ids to {verb}"}


TOPIC_UPDATE = object_schema({}, {
    "add": _members("add"),
    "remove": _members("remove"),
    "tenant": TENANT,
}, description="Members to add, then members to remove (an id in both ends up not a member); "
               "a platform service may name the tenant")

TOPIC_UPDATED = object_schema({"topic": TOPIC_KEY, "members": COUNT})
TOPIC_MEMBERS = object_schema({
    "members": {"type": "array", "maxItems": MAX_MEMBERS_PAGE, "items": MEMBER},
    "next": {"type": ["string", "null"],
             "description": "The `after` of the next page; null on the last one"},
})
TOPICS = object_schema({"topics": {"type": "array", "items": TOPIC_KEY}})

#: The query parameters of the topic endpoints, for /openapi.json.
MEMBERS_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS_PAGE,
                 "default": DEFAULT_MEMBERS_PAGE}


@dataclass(frozen=True, slots=True)
class TopicUpdate:
    """User ids (plain, as the tenant knows them) to add and to remove, and the tenant the body
    names (None: the caller's)."""

    add: list[str]
    remove: list[str]
    tenant: str | None


_UPDATE_CHECK = Checker(TOPIC_UPDATE)


def check_topic_key(value: Any, name: str = "key") -> str:
    if not isinstance(value, str) or TOPIC_KEY_PATTERN.fullmatch(value) is None:
        raise ValidationError(name, TOPIC_KEY_RULE)
    return value


def check_member(value: Any, name: str) -> str:
    """One user id as a topic holds it: as a draft's `userId`."""
    return check_recipient(value, name)


def check_topic_update(raw: Any) -> TopicUpdate:
    """A `PUT /api/topics/{key}/members` body; errors name the field (`add[3]`)."""
    _UPDATE_CHECK.check(raw)
    lists = {}
    for field in ("add", "remove"):
        lists[field] = [check_member(user_id, f"{field}[{index}]")
                        for index, user_id in enumerate(raw.get(field, []))]
    return TopicUpdate(add=lists["add"], remove=lists["remove"], tenant=raw.get("tenant"))
