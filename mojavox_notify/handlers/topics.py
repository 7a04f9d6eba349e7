"""The REST API under /api/topics: services manage who is in a topic (topics.py does the work).
Every method needs the `service` role; `tenant` (body or query) names the tenant for a platform
service."""

from __future__ import annotations

from ..topics import Topics
from ..wire.topic import DEFAULT_MEMBERS_PAGE
from .base import BaseHandler


class TopicHandler(BaseHandler):
    """What the topic handlers share: `topics`, passed in, and query values read as sent."""

    topics: Topics

    def text_query(self, name: str) -> str | None:
        """A query value as sent (tornado would strip its spaces), or None."""
        return self.get_query_argument(name, None, strip=False)


class TopicMembersHandler(TopicHandler):
    async def put(self, key: str) -> None:
        self.principal.require("service")
        self.send_json(await self.topics.update(self.principal.reach, key, self.json_body()))

    async def get(self, key: str) -> None:
        self.principal.require("service")
        self.send_json(await self.topics.members(
            self.principal.reach, key, limit=self.query_int("limit", DEFAULT_MEMBERS_PAGE),
            after=self.text_query("after"), tenant=self.text_query("tenant")))


class TopicKeyHandler(TopicHandler):
    async def delete(self, key: str) -> None:
        self.principal.require("service")
        await self.topics.delete(self.principal.reach, key, tenant=self.text_query("tenant"))
        self.send_json({"success": True})


class TopicsHandler(TopicHandler):
    async def get(self) -> None:
        self.principal.require("service")
        self.send_json(await self.topics.topics_of(
            self.principal.reach, self.text_query("userId"), tenant=self.text_query("tenant")))
