"""The REST side of escalations: a recipient acknowledges one of their notifications' escalation
and reports what they have seen; a service resolves an escalation by its key; recipients,
services and admins read one with its timeline, and a user lists theirs."""

from __future__ import annotations

from ..escalations.service import EscalationService
from .base import BaseHandler


class AcknowledgeHandler(BaseHandler):
    escalations: EscalationService

    async def post(self, notification_id: str) -> None:
        escalation, _ = await self.escalations.acknowledge(self.principal.key, notification_id)
        self.send_json({"escalation": escalation})


class SeenHandler(BaseHandler):
    escalations: EscalationService

    async def post(self) -> None:
        self.send_json({"seen": await self.escalations.seen(self.principal.key, self.json_body())})


class ResolveHandler(BaseHandler):
    escalations: EscalationService

    async def post(self) -> None:
        self.principal.require("service")
        escalation = await self.escalations.resolve_raw(self.json_body(), self.principal.reach)
        self.send_json({"escalation": escalation})


class EscalationHandler(BaseHandler):
    escalations: EscalationService

    async def get(self, escalation_id: str) -> None:
        principal = self.principal
        self.send_json(await self.escalations.detail(escalation_id, principal.key,
                                                     principal.roles, principal.reach))


class EscalationsHandler(BaseHandler):
    escalations: EscalationService

    async def get(self) -> None:
        state = self.get_query_argument("state", "open")
        self.send_json({"escalations": await self.escalations.of_user(self.principal.key, state)})
