"""`POST /api/events`: one domain event from a MOJAVOX service, idempotent by its optional id."""

from __future__ import annotations

from ..ingest import EventIngest
from .base import BaseHandler


class EventsHandler(BaseHandler):
    ingest: EventIngest

    async def post(self) -> None:
        self.principal.require("service")
        event = self.ingest.parse(self.json_body(), self.principal.reach)
        ids = await self.ingest.ingest(event)
        self.send_json({"notifications": ids}, status=202)
