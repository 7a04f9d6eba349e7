"""Operational endpoints: health for load balancers, the plugin list for admins."""

from __future__ import annotations

from typing import Callable

from ..plugins import Plugins
from .base import BaseHandler


class HealthHandler(BaseHandler):
    """200 when storage answers (`degraded` when the Redis broker does not), 503 otherwise,
    with what was checked."""

    public = True
    checks: Callable

    async def get(self) -> None:
        report = await self.checks()
        self.send_json(report, status=503 if report["status"] == "unavailable" else 200)


class PluginsHandler(BaseHandler):
    plugins: Plugins

    async def get(self) -> None:
        self.principal.require("admin")
        self.send_json({"plugins": self.plugins.describe(),
                        "eventTypes": dict(sorted(self.plugins.event_descriptions.items()))})
