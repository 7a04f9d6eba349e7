"""Operational endpoints: health for load balancers, the plugin list and metrics for admins."""

from __future__ import annotations

import json
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ForbiddenError
from ..metrics import Metrics
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


class MetricsHandler(BaseHandler):
    """Prometheus' text format. On the server's port it needs the admin role; on the separate
    metrics port (`metrics.access: port`) it is open, so bind that port privately."""

    metrics: Metrics
    needs_admin: bool = True

    async def get(self) -> None:
        if self.needs_admin:
            self.principal.require("admin")
            if self.principal.tenant is not None:
                raise ForbiddenError("/metrics covers every tenant: it needs an admin token "
                                     "without a tenant claim", code="tenant_forbidden")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.metrics.exposition())


class DocumentHandler(BaseHandler):
    """A published description of the API (/openapi.json, /protocol.json), open to anyone."""

    public = True
    document: dict
    media_type: str = "application/json"

    async def get(self) -> None:
        self.set_header("Content-Type", self.media_type)
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(json.dumps(self.document, indent=1))
