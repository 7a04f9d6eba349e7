"""The application object: the one place that wires the collaborators together.

Start-up order, top to bottom in `start()`: storage (schema or indexes) and its watchdog →
broker (Redis when `redis.url` is set) and presence → service and ingest → web push (an HTTP
client of its own, the sender, the outbox worker) → plugins' startup → HTTP/WebSocket listener →
event sources (the plugins' and the configured streams', `streams/`) and the cleanup job.
`stop()` undoes it in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Iterable

import pluggy
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.netutil import DefaultLoopResolver, Resolver

from .auth import build_verifier
from .broker import Broker, RedisBroker, build_broker
from .broker.messages import BroadcastPosted, Message
from .handlers.admin import DocumentHandler, HealthHandler, MetricsHandler, PluginsHandler
from .handlers.base import (BaseHandler, Cors, InFlight, NotFoundHandler, implemented_methods,
                            log_request)
from .escalations.journal import Journal
from .escalations.policy import PolicyError, build_policies
from .escalations.pushes import EscalationPushes
from .escalations.service import EscalationService
from .escalations.timers import EscalationTimers
from .handlers.escalations import (AcknowledgeHandler, EscalationHandler, EscalationsHandler,
                                   ResolveHandler, SeenHandler)
from .handlers.events import EventsHandler
from .handlers.heartbeat import Heartbeat
from .handlers.rest import (BroadcastsHandler, MarkAllReadHandler, MarkReadHandler,
                            NotificationHandler, NotificationsHandler, PushSubscriptionHandler,
                            SettingsHandler, UnreadCountHandler, VapidPublicKeyHandler)
from .handlers.web import page_routes
from .handlers.closes import CLOSE_GOING_AWAY
from .handlers.session import SessionContext
from .handlers.topics import TopicKeyHandler, TopicMembersHandler, TopicsHandler
from .handlers.transport import deliver_to_all
from .handlers.websocket import NotificationSocket
from .httpserver import NotifyHTTPServer, drain_limit, listen_sockets
from .hub import Hub
from .ingest import EventIngest
from .logs import redact_tornado_logs
from .metrics import Metrics, counter, gauge
from .model import Event
from .wire.frames import protocol_document
from .plugins import Plugins, build_plugin_manager
from .openapi import openapi_document
from .push import PushSender, load_vapid_key, push_http_client
from .push_worker import PushWorker
from .presence import build_presence
from .ratelimit import RateLimiter, build_rate_limiter
from .redis_link import RedisLink
from .service import NotificationService
from .settings import Settings
from .errors import StorageUnavailableError
from .health import StorageHealth
from .store import NotificationStore, build_store
from .store.importer import legacy_folder
from .streams import StreamIntake, StreamSource, build_sources, consumer_name, source_metrics
from .supervision import Supervisor
from .topics import Topics
from .workers import worker_count

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 3.0
IDLE_CONNECTION_SECONDS = 120  # also how long a request's headers may take to arrive
ROLES = ("all", "serve", "fire")


class StartupError(RuntimeError):
    """The server cannot start; the message says what to fix."""


class NotifyApp:
    def __init__(self, settings: Settings, plugins: Iterable[tuple[str, Any]] = (),
                 discover_plugins: bool = True, plugin_manager: pluggy.PluginManager | None = None,
                 worker: int | None = None, resolver: Resolver | None = None,
                 role: str = "all"):
        """`plugins` adds (name, plugin) pairs; `discover_plugins=False` uses only those, so a
        test can build an app with exactly the plugins it wants. `worker` is this process's
        index under `serve --workers N` (None: the only process). `resolver` looks up push
        endpoints' hosts, both when a browser subscribes and when a push connects. `role`
        (escalation_timers.own_process): "all" serves and fires escalation steps, "serve"
        only serves, "fire" only fires (no HTTP, no event sources)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        self.settings = settings
        self.role = role
        #: Whether this process answers requests (and runs the event sources), and whether it
        #: fires escalation steps.
        self.serves = role != "fire"
        self.fires = role != "serve"
        redact_tornado_logs()
        manager = plugin_manager or build_plugin_manager(settings, plugins, discover_plugins)
        self.plugins = Plugins(manager)
        try:
            self.policies = build_policies(
                settings.escalations, manager.hook.mojavox_escalation_policies(), self.plugins.types)
        except PolicyError as error:
            raise StartupError(str(error)) from None
        self.verifier = build_verifier(settings)
        self.resolver = resolver or DefaultLoopResolver()
        # Checked here, so a bad key pair stops start-up (and `check`) before anything opens.
        self._vapid = load_vapid_key(settings.push) if settings.push.vapid_private_key else None
        self.push_sender: PushSender | None = None
        self.push_worker: PushWorker | None = None
        self.worker = worker
        self.metrics = Metrics(tenant_label=settings.metrics.tenant_label)
        self.metrics.read_state(self._state_metrics)
        self.supervisor = Supervisor()
        self.hub = Hub(deliver_to_all)
        self.hub.on_fan_out = self.metrics.broadcast_fan_out.observe
        self.hub.on_resync_all = self._resynced_all
        self.heartbeat = Heartbeat(settings.websocket.ping_interval_seconds,
                                   settings.websocket.ping_timeout_seconds)
        # Redis, when configured, carries fan-out, rate limits and presence across instances.
        self.redis = RedisLink(settings.redis) if settings.redis.url else None
        self.broker: Broker = build_broker(self.redis, self.supervisor)
        self.presence = build_presence(
            self.hub, self.redis, self.broker.origin if isinstance(self.broker, RedisBroker) else "",
            self.supervisor)
        tracked = settings.rate_limits.max_tracked_keys
        self.request_limiter = build_rate_limiter(settings.rate_limits.requests_per_minute,
                                                  "requests", self.redis, tracked)
        self.notification_limiter = build_rate_limiter(
            settings.rate_limits.notifications_per_minute, "notifications", self.redis, tracked)
        self.in_flight = InFlight()
        self.auth_failures = RateLimiter(settings.auth.failed_per_minute_per_ip,
                                         "failed authentications", max_keys=tracked)
        self.store: NotificationStore | None = None
        self.storage_health: StorageHealth | None = None
        self.service: NotificationService | None = None
        self.escalations: EscalationService | None = None
        self.escalation_timers: EscalationTimers | None = None
        self.journal: Journal | None = None
        self.topics: Topics | None = None
        self.ingest: EventIngest | None = None
        self.stream_sources: list[StreamSource] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._metrics_http: tornado.httpserver.HTTPServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = False

    @property
    def storage_name(self) -> str:
        return self.store.description if self.store else "not opened"

    @property
    def url(self) -> str:
        host = self.settings.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.port}"

    async def open_storage(self) -> None:
        """Open the storage engine the settings name and build the service on it, which is all
        `cleanup` and `check` need."""
        settings = self.settings
        if settings.storage.url == "embedded":
            folder = legacy_folder(settings)
            if folder is not None:
                raise StartupError(
                    f"{folder} holds notifications of the earlier embedded storage (nx-27017); "
                    "import them once, with the server stopped: "
                    "mojavox-notify import-nx27017 --settings <this settings file>")
        self.store = build_store(settings)
        self.store.on_operation = self.metrics.observe_storage
        try:
            await self.store.open()
        except StorageUnavailableError as error:
            description = self.storage_name
            await self._close_storage()
            raise StartupError(f"storage {description} is not usable: {error.message} "
                               "(storage.url)") from None
        self.journal = Journal(self.store)
        self.escalations = EscalationService(
            self.store, self.broker, self.plugins, self.policies, self.journal, self.metrics,
            online=self.presence.online_many)
        self.service = NotificationService(
            self.store, self.broker, self.plugins, settings,
            online=self.presence.online_many, limiter=self.notification_limiter,
            metrics=self.metrics, resolver=self.resolver, escalations=self.escalations)
        if self._vapid is not None:
            self.escalations.pushes = EscalationPushes(self.store, self.service.push_wanted)
        # Serving workers that fire split the due steps; a process of the timers' own fires all.
        share = (None if self.worker is None or not self.serves
                 else (self.worker, worker_count(settings)))
        self.escalation_timers = EscalationTimers(self.store, self.escalations, self.service,
                                                  self.plugins, settings.escalation_timers, share)
        self.ingest = EventIngest(self.plugins, self.service, self.store, self.metrics,
                                  escalations=self.escalations)
        self.topics = Topics(self.store)

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open storage, start the broker and plugins, listen (on `sockets` if given)."""
        settings = self.settings
        await self.open_storage()
        self.storage_health = StorageHealth(
            self.store, settings.storage.probe_interval_seconds,
            settings.storage.operation_timeout_seconds, settings.storage.exit_after_seconds,
            self.supervisor)
        self.storage_health.start()
        # The timers' own process has no sockets, yet subscribes: a publish that met Redis away
        # is announced to the others when it is back (broker/pubsub.py).
        await self.broker.start(self._received)
        if self.serves:
            await self._load_broadcasts()
            self.heartbeat.start()
        await self.presence.start()
        # Every process sends the pushes it records at once (the timers' process: its steps').
        if self._vapid is not None:
            self.push_sender = PushSender(settings.push, self._vapid,
                                          push_http_client(settings.push, self.resolver))
            self.push_worker = PushWorker(self.store, self.push_sender, settings.push,
                                          supervisor=self.supervisor)
            self.service.on_push_recorded = self.push_worker.wake
            if self.escalations.pushes is not None:
                self.escalations.pushes.wake = self.push_worker.wake
            self.push_worker.start()
        await self.plugins.call_each("mojavox_startup", app=self)
        # Every process that fires watches the stored due steps (each fires once: timers.py);
        # every process writes its sockets' timeline lines.
        if self.fires:
            self._tasks.append(self.supervisor.spawn("escalation_timers",
                                                     self.escalation_timers.run))
        self._tasks.append(self.supervisor.spawn("escalation_journal", self.journal.run))
        if not self.serves:
            if settings.metrics.access == "port":
                self._start_metrics_port()
            return
        self._start_serving(sockets)

    def _start_serving(self, sockets: list[socket.socket] | None) -> None:
        """Listen, and consume the event sources (plugins' own and the configured streams)."""
        settings = self.settings
        self._http = NotifyHTTPServer(
            self.web_application(), max_body_size=drain_limit(settings.server.max_body_bytes),
            body_timeout=settings.server.body_timeout_seconds, xheaders=settings.server.xheaders,
            idle_connection_timeout=IDLE_CONNECTION_SECONDS)
        if sockets is None:
            sockets = listen_sockets(settings.server.port, settings.server.host)
        self._http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        if settings.metrics.access == "port":
            self._start_metrics_port()

        for source in self._event_sources():
            self._tasks.append(asyncio.get_running_loop().create_task(self._run_source(source)))
        # The configured streams (ingest.*): each consumer waits out its server's outages
        # itself; the supervisor restarts one that fails otherwise.
        self.stream_sources = self.build_stream_sources()
        for stream_source in self.stream_sources:
            self._tasks.append(self.supervisor.spawn(f"stream {stream_source.name}",
                                                     stream_source.run))
        if settings.retention.cleanup_interval_minutes and not self.worker:
            self._tasks.append(asyncio.get_running_loop().create_task(self._cleanup_loop()))

    def build_stream_sources(self) -> list[StreamSource]:
        """The sources `ingest` configures, consuming as this process (storage must be open)."""
        return build_sources(
            self.settings, StreamIntake(self.ingest, self.storage_health,
                                        self.settings.server.max_body_bytes),
            consumer_name(self.worker))

    def _received(self, message: Message) -> None:
        self.metrics.received(message)
        self.hub.dispatch(message)

    def _resynced_all(self) -> None:
        """The broker was away: broadcasts published meanwhile reached storage, not us."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._load_broadcasts()))

    async def _load_broadcasts(self) -> None:
        """The active broadcasts from storage onto the hub's board; new ones go to the sockets."""
        try:
            active = await self.service.every_active_broadcast()
        except StorageUnavailableError as error:
            log.warning("could not load the active broadcasts: %s", error.message)
            return
        for audience, payload in reversed(active):
            self.hub.dispatch(BroadcastPosted(payload, audience=audience))

    def _handler_args(self) -> dict[str, Any]:
        """What every BaseHandler is initialized with (base.BaseHandler.initialize)."""
        settings = self.settings
        return {"verifier": self.verifier, "request_limiter": self.request_limiter,
                "auth_failures": self.auth_failures, "in_flight": self.in_flight,
                "max_body_bytes": settings.server.max_body_bytes,
                "cors": Cors(settings.server.allowed_origins, settings.web.cors_max_age_seconds)}

    @property
    def metrics_bind_port(self) -> int:
        """Under `serve --workers N`, worker i answers /metrics on metrics.port + i (the
        escalation timers' own process: + N): one scrape target per process, since each counts
        only its own requests and sockets. 0: any free port."""
        port = self.settings.metrics.port
        return port + (self.worker or 0) if port else 0

    def _start_metrics_port(self) -> None:
        settings = self.settings
        common = self._handler_args()
        application = tornado.web.Application(
            [(r"/metrics", MetricsHandler, {**common, "metrics": self.metrics, "needs_admin": False,
                                             "public": True})],
            default_handler_class=NotFoundHandler, default_handler_args=common,
            log_function=log_request)
        listening = tornado.netutil.bind_sockets(self.metrics_bind_port, settings.metrics.host)
        self._metrics_http = NotifyHTTPServer(application)
        self._metrics_http.add_sockets(listening)
        self.metrics_port = listening[0].getsockname()[1]

    def _state_metrics(self):
        """Figures read from their owners at each scrape (see metrics.py)."""
        yield gauge("mojavox_sockets_open", "Dashboard sockets open on this process", len(self.hub))
        yield gauge("mojavox_users_online", "Users with a socket on this process", self.hub.users)
        yield gauge("mojavox_requests_in_flight", "HTTP requests being handled", len(self.in_flight))
        if self.storage_health is not None:
            yield gauge("mojavox_storage_up", "1 while storage answers, 0 during an outage",
                        1 if self.storage_health.ok else 0)
        yield gauge("mojavox_broker_up", "1 while the broker answers (Redis), 0 while it is away",
                    1 if self.broker.healthy else 0)
        refused = {"requests": self.request_limiter.refused,
                   "failed_authentications": self.auth_failures.refused}
        if self.service is not None:
            refused["notifications"] = self.service.limiter.refused
        yield counter("mojavox_rate_limited", "Refusals by a rate limit, by limit", "limit", refused)
        yield counter("mojavox_background_restarts", "Background tasks started again after an "
                      "unexpected failure, by task", "task", dict(self.supervisor.restarts))
        yield from source_metrics(self.stream_sources)
        if self.push_worker is not None:
            yield counter("mojavox_push_results", "Web push outcomes (sent, retried, removed, "
                          "failed, given_up)", "result", dict(self.push_worker.stats))

    def web_application(self) -> tornado.web.Application:
        settings = self.settings
        common = self._handler_args()
        service = {**common, "service": self.service}
        topics = {**common, "topics": self.topics}
        escalations = {**common, "escalations": self.escalations}
        routes = [
            (r"/api/notifications", NotificationsHandler, service),
            (r"/api/notifications/read-all", MarkAllReadHandler, service),
            (r"/api/notifications/seen", SeenHandler, escalations),
            (r"/api/notifications/settings", SettingsHandler, service),
            (r"/api/notifications/push-subscription", PushSubscriptionHandler, service),
            (r"/api/notifications/unread-count", UnreadCountHandler, service),
            (r"/api/notifications/vapid-public-key", VapidPublicKeyHandler,
             {**common, "vapid_public_key": settings.push.vapid_public_key}),
            (r"/api/notifications/([^/]+)/read", MarkReadHandler, service),
            (r"/api/notifications/([^/]+)/ack", AcknowledgeHandler, escalations),
            (r"/api/notifications/([^/]+)", NotificationHandler, service),
            (r"/api/escalations", EscalationsHandler, escalations),
            (r"/api/escalations/resolve", ResolveHandler, escalations),
            (r"/api/escalations/([^/]+)", EscalationHandler, escalations),
            (r"/api/broadcasts", BroadcastsHandler, service),
            (r"/api/topics", TopicsHandler, topics),
            (r"/api/topics/(?P<key>[^/]+)/members", TopicMembersHandler, topics),
            (r"/api/topics/(?P<key>[^/]+)", TopicKeyHandler, topics),
            (r"/api/events", EventsHandler, {**common, "ingest": self.ingest}),
            (r"/api/plugins", PluginsHandler, {**common, "plugins": self.plugins}),
            *([(r"/metrics", MetricsHandler, {**common, "metrics": self.metrics})]
              if settings.metrics.access == "admin" else []),
            (r"/healthz", HealthHandler, {**common, "checks": self.health}),
            (r"/protocol.json", DocumentHandler, {**common, "document": protocol_document(),
                                                  "media_type": "application/schema+json"}),
        ]
        routes.append((r"/openapi.json", DocumentHandler, {
            **common, "document": openapi_document(
                rest_routes(routes) + [("/openapi.json", ["get"])], self.plugins.types.names,
                sorted(self.plugins.event_types))}))
        routes += [
            (settings.server.ws_path, NotificationSocket, {
                "context": SessionContext(
                    service=self.service, escalations=self.escalations, hub=self.hub,
                    presence=self.presence,
                    types=self.plugins.types, verifier=self.verifier,
                    request_limiter=self.request_limiter, settings=settings.websocket,
                    max_sockets_per_ip=settings.server.max_sockets_per_ip),
                "verifier": self.verifier, "websocket": settings.websocket,
                "allowed_origins": settings.server.allowed_origins,
                "auth_failures": self.auth_failures, "metrics": self.metrics,
                "heartbeat": self.heartbeat}),
        ]
        if settings.web.page:
            routes += page_routes(common, settings.server.ws_path, settings.web.action_base_url)
        return tornado.web.Application(
            routes,
            default_handler_class=NotFoundHandler, default_handler_args=common,
            log_function=log_request,
            websocket_max_message_size=settings.server.max_message_bytes,
        )

    async def emit(self, event: Event) -> list[str]:
        """Feed one domain event through the pipeline, as `POST /api/events` does."""
        return await self.ingest.ingest(event)

    async def health(self) -> dict[str, Any]:
        """From cached state (the watchdog's last probe and every failure since, each stream
        source's last contact): no I/O. A stream source that does not answer degrades it, as
        the broker does: the HTTP path still works."""
        storage = self.storage_health.report() if self.storage_health else {
            "ok": False, "backend": self.storage_name}
        broker = self.broker.report()
        # Without Redis an instance still serves its own sockets and every request: degraded,
        # not unavailable, so a load balancer does not take every instance out at once.
        sources = [await source.health() for source in self.stream_sources]
        answering = broker["ok"] and all(source["ok"] for source in sources)
        status = "unavailable" if not storage["ok"] else "ok" if answering else "degraded"
        report = {"status": status, "storage": storage, "broker": broker,
                  "connections": len(self.hub)}
        if sources:
            report["sources"] = sources
        if self.worker is not None:
            report["worker"] = {"index": self.worker, "pid": os.getpid()}
        return report

    def _event_sources(self) -> list:
        sources = []
        for result in self.plugins.manager.hook.mojavox_event_sources(app=self):
            sources.extend(result or [])
        return sources

    async def _run_source(self, source) -> None:
        name = getattr(source, "__qualname__", repr(source))
        try:
            await source(self.emit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event source %s failed and stopped", name)

    async def _cleanup_loop(self) -> None:
        interval = self.settings.retention.cleanup_interval_minutes * 60
        while True:
            try:
                removed = await self.service.cleanup()
                if removed:
                    log.info("cleanup removed %d expired notifications", removed)
            except Exception:
                log.exception("cleanup failed; will retry")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop accepting, close sockets with 1001 after flushing them, then release the rest.
        Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        if self._http is not None:
            self._http.stop()
        if self._metrics_http is not None:
            self._metrics_http.stop()
            self._metrics_http = None
        self.hub.shutdown_all(CLOSE_GOING_AWAY, "server shutting down")
        await self._wait_for_sockets()
        self.heartbeat.stop()
        if not await self.in_flight.drained(SHUTDOWN_GRACE_SECONDS):
            log.warning("stopping with %d requests still in flight", len(self.in_flight))
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in stuck:  # named, so a task that ignores its cancellation can be found
                log.warning("background task %s did not stop within %g s of its cancellation",
                            task.get_name(), SHUTDOWN_GRACE_SECONDS)
        self._tasks.clear()
        if self.journal is not None:
            try:
                await self.journal.flush()
            except StorageUnavailableError as error:
                log.warning("escalation timeline lines not written at shutdown: %s", error.message)
        if self.service is not None:
            try:
                await self.plugins.call_each("mojavox_shutdown", app=self)
            except Exception:
                log.exception("a plugin's shutdown hook failed")
        if self.push_worker is not None:
            await self.push_worker.stop()
        if self.push_sender is not None:
            self.push_sender.close()
        await self.presence.stop()
        await self.broker.stop()
        if self.redis is not None:
            await self.redis.close()
        if self.storage_health is not None:
            await self.storage_health.stop()
        if self._http is not None:
            await self._http.close_all_connections()
            self._http = None
        self.verifier.close()
        await self._close_storage()

    async def _wait_for_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
        while len(self.hub) and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def _close_storage(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


def rest_routes(routes: list[tuple]) -> list[tuple[str, list[str]]]:
    """(pattern, methods it answers) for every route served by a BaseHandler: what
    /openapi.json describes."""
    return [(pattern, [method.lower() for method in implemented_methods(handler)])
            for pattern, handler, *_ in routes if issubclass(handler, BaseHandler)]
