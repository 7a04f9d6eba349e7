"""`/openapi.json`: the REST API as OpenAPI 3.1, built from the running app.

Bodies and answers are the schemas the handlers validate with (each shape's module in wire/), with
the app's registered notification and event types filled in; the operations below say which
schema goes where. A test checks that every route the app serves is described here and nothing
else, and schemathesis runs the described API against a live server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .wire import broadcast, escalation, event, notification, preferences, push_subscription, topic
from .wire.broadcast import BROADCAST_PAYLOAD
from .wire.notification import MAX_OFFSET, MAX_PAGE, NOTIFICATION
from .wire.schema import ERROR, OBJECT_ID, SUCCESS, TENANT


@dataclass(frozen=True)
class Query:
    """A query parameter of one operation's own (the shared ones are named in QUERY)."""

    name: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    who: str  # "anyone", "user", "service", "admin"
    answers: dict[int, Any]  # status → schema (or a callable of the app's type lists)
    body: Any = None
    query: tuple[str | Query, ...] = ()
    headers: tuple[str, ...] = ()
    media_type: str = "application/json"
    extra_errors: tuple[int, ...] = field(default=())


QUERY = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    "unreadOnly": {"type": "boolean", "default": False},
}
# The parameters in paths: `/api/notifications/{id}`, `/api/topics/{key}`.
PATH_PARAMETERS = {"id": OBJECT_ID, "key": topic.TOPIC_KEY}
TENANT_QUERY = Query("tenant", TENANT)
HEADERS = {
    "Idempotency-Key": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$",
                        "description": "A retry with the same key returns the first answer"},
}
ERRORS_BY_CALLER = {"anyone": (), "user": (400, 401, 413, 429, 503),
                    "service": (400, 401, 403, 413, 429, 503), "admin": (401, 403, 429, 503)}
HEALTH = {"type": "object", "required": ["status", "storage", "broker", "connections"],
          "properties": {"status": {"enum": ["ok", "unavailable"]}}}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/api/notifications", "get"): Operation(
        "The caller's notifications, newest first", "user", {200: notification.PAGE},
        query=("limit", "offset", "unreadOnly")),
    ("/api/notifications", "post"): Operation(
        "Create one notification (202 when its recipient turned the type off)", "service",
        {201: NOTIFICATION, 202: notification.MUTED_OR_SENT_TO_TOPIC},
        body=lambda types, events: notification.draft_schema(types), headers=("Idempotency-Key",),
        extra_errors=(404,)),
    ("/api/notifications/read-all", "post"): Operation(
        "Mark every notification of the caller read", "user", {200: SUCCESS}),
    ("/api/notifications/settings", "get"): Operation(
        "The caller's channel settings for every type", "user",
        {200: lambda types, events: preferences.preferences_schema(types)}),
    ("/api/notifications/settings", "put"): Operation(
        "Change some channel settings; answers all of them", "user",
        {200: lambda types, events: preferences.preferences_schema(types)},
        body=lambda types, events: preferences.preferences_update_schema(types)),
    ("/api/notifications/push-subscription", "post"): Operation(
        "Register a browser's push subscription (409 push_subscription_taken when its endpoint "
        "is another user's: unsubscribe the browser and subscribe again)", "user",
        {200: SUCCESS}, body=push_subscription.PUSH_SUBSCRIPTION, extra_errors=(409,)),
    ("/api/notifications/push-subscription", "delete"): Operation(
        "Forget a push subscription", "user", {200: SUCCESS}, body=push_subscription.ENDPOINT,
        extra_errors=(404,)),
    ("/api/notifications/unread-count", "get"): Operation(
        "The caller's unread counts", "user", {200: notification.UNREAD_COUNT}),
    ("/api/notifications/vapid-public-key", "get"): Operation(
        "The VAPID public key for pushManager.subscribe (404 without web push)", "anyone",
        {200: push_subscription.VAPID_KEY, 404: ERROR}),
    ("/api/notifications/{id}/read", "post"): Operation(
        "Mark one of the caller's notifications read", "user", {200: SUCCESS},
        extra_errors=(404,)),
    ("/api/notifications/{id}", "get"): Operation(
        "One of the caller's notifications (the service worker reads it for a minimal push)",
        "user", {200: NOTIFICATION}, extra_errors=(404,)),
    ("/api/notifications/{id}", "delete"): Operation(
        "Delete one of the caller's notifications", "user", {200: SUCCESS},
        extra_errors=(404,)),
    ("/api/notifications/{id}/ack", "post"): Operation(
        "Acknowledge (take) the escalation of one of the caller's notifications (409 "
        "already_acknowledged naming who took it, or escalation_resolved; 404 for anyone who is "
        "not a recipient)", "user", {200: escalation.ESCALATION_ANSWER}, extra_errors=(404, 409)),
    ("/api/notifications/seen", "post"): Operation(
        "Report notifications on screen: recorded in their escalations' timelines, read state "
        "unchanged", "user", {200: escalation.SEEN_ANSWER}, body=escalation.SEEN),
    ("/api/escalations", "get"): Operation(
        "The escalations the caller received in one state (open by default; unresolved for "
        "all but the resolved ones), newest first (at most 100)", "user",
        {200: escalation.ESCALATION_LIST},
        query=(Query("state", {"enum": [*escalation.STATES, "unresolved"], "default": "open"}),)),
    ("/api/escalations/resolve", "post"): Operation(
        "Resolve the unresolved escalation of a key (its pending steps stop; every recipient "
        "is told)", "service", {200: escalation.ESCALATION_ANSWER}, body=escalation.RESOLVE,
        extra_errors=(404,)),
    ("/api/escalations/{id}", "get"): Operation(
        "One escalation with its recipients and timeline (recipients; services and admins of "
        "its tenant)", "user", {200: escalation.ESCALATION_DETAIL}, extra_errors=(404,)),
    ("/api/broadcasts", "get"): Operation(
        "The broadcasts still active for the caller's tenant, newest first (at most 20); a "
        "platform service may name the tenant", "user",
        {200: broadcast.BROADCASTS}, query=(TENANT_QUERY,), extra_errors=(403,)),
    ("/api/broadcasts", "post"): Operation(
        "Announce to every dashboard user: stored once, sent to every socket now and to "
        "sockets that connect while it lasts", "service", {201: BROADCAST_PAYLOAD},
        body=broadcast.BROADCAST),
    ("/api/events", "post"): Operation(
        "Post one domain event; a repeated id returns the first answer", "service",
        {202: event.EVENT_ANSWER}, body=lambda types, events: event.event_schema(events)),
    ("/api/topics", "get"): Operation(
        "The keys of the topics a user is a member of", "service", {200: topic.TOPICS},
        query=(Query("userId", topic.MEMBER, required=True), TENANT_QUERY)),
    ("/api/topics/{key}/members", "put"): Operation(
        f"Add and remove members (at most {topic.MAX_CHANGES} of each per call); answers the "
        "count after (409 topic_full when the topic would pass its limit: nothing changed)",
        "service", {200: topic.TOPIC_UPDATED}, body=topic.TOPIC_UPDATE, extra_errors=(409,)),
    ("/api/topics/{key}/members", "get"): Operation(
        "A page of a topic's members in ascending order; `next` is the `after` of the next page "
        "(an unknown topic has none)", "service", {200: topic.TOPIC_MEMBERS},
        query=(Query("limit", topic.MEMBERS_LIMIT), Query("after", topic.MEMBER), TENANT_QUERY)),
    ("/api/topics/{key}", "delete"): Operation(
        "Remove every member of a topic (an unknown one too)", "service", {200: SUCCESS},
        query=(TENANT_QUERY,)),
    ("/api/plugins", "get"): Operation(
        "The loaded plugins, their hooks and types", "admin", {200: {"type": "object"}}),
    ("/healthz", "get"): Operation(
        "Health from cached state: 200 when storage answers", "anyone",
        {200: HEALTH, 503: HEALTH}),
    ("/protocol.json", "get"): Operation(
        "The dashboard socket's frames as JSON Schema", "anyone", {200: {"type": "object"}},
        media_type="application/schema+json"),
    ("/openapi.json", "get"): Operation(
        "This document", "anyone", {200: {"type": "object"}}),
    ("/metrics", "get"): Operation(
        "Prometheus metrics (metrics.access: admin)", "admin", {200: {"type": "string"}},
        media_type="text/plain"),
}


def route_path(pattern: str) -> str:
    """`/api/notifications/([^/]+)/read` → `/api/notifications/{id}/read`,
    `/api/topics/(?P<key>[^/]+)` → `/api/topics/{key}`."""
    pattern = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern)
    return re.sub(r"\(\[\^/\]\+\)", "{id}", pattern).rstrip("$")


def openapi_document(routes: list[tuple[str, list[str]]], type_names: list[str],
                     event_types: list[str], server_url: str | None = None) -> dict[str, Any]:
    """`routes`: (tornado pattern, methods served) for every REST route of the app."""
    paths: dict[str, dict[str, Any]] = {}
    for pattern, methods in routes:
        path = route_path(pattern)
        for method in methods:
            operation = OPERATIONS[(path, method)]
            paths.setdefault(path, {})[method] = _operation(
                operation, path, lambda value: value(type_names, event_types) if callable(value) else value)
    document = {
        "openapi": "3.1.0",
        "info": {"title": "MOJAVOX Notify", "version": __version__,
                 "description": "Notifications for dashboards. The socket is described at "
                                "/protocol.json."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "bearerFormat": "JWT"}},
                       "schemas": {"Error": ERROR, "Notification": NOTIFICATION}},
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _operation(operation: Operation, path: str, resolve: Callable[[Any], Any]) -> dict[str, Any]:
    described: dict[str, Any] = {"summary": operation.summary, "responses": {}}
    if operation.who != "anyone":
        described["security"] = [{"bearer": []}]
        described["description"] = f"Needs a token{'' if operation.who == 'user' else f' with the {operation.who} role'}."
    queries = [item if isinstance(item, Query) else Query(item, QUERY[item]) for item in operation.query]
    parameters = [{"name": query.name, "in": "query", "required": query.required,
                   "schema": _public(query.schema)} for query in queries]
    parameters += [{"name": name, "in": "header", "required": False, "schema": HEADERS[name]}
                   for name in operation.headers]
    parameters += [{"name": name, "in": "path", "required": True, "schema": _public(PATH_PARAMETERS[name])}
                   for name in re.findall(r"\{(\w+)\}", path)]
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _public(resolve(operation.body))}}}
    for status, schema in operation.answers.items():
        described["responses"][str(status)] = {
            "description": "success" if status < 400 else "error",
            "content": {operation.media_type if status < 400 else "application/json":
                        {"schema": _public(resolve(schema))}}}
    for status in (*ERRORS_BY_CALLER[operation.who], *operation.extra_errors):
        described["responses"].setdefault(str(status), {
            "description": "error", "content": {"application/json": {"schema": ERROR}}})
    return described


def _public(schema: Any) -> Any:
    """Without the `x-error`/`x-code` messages, which are for the server's own answers."""
    if isinstance(schema, dict):
        return {key: _public(value) for key, value in schema.items() if key not in ("x-error", "x-code")}
    if isinstance(schema, list):
        return [_public(item) for item in schema]
    return schema
