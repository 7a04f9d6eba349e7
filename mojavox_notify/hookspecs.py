"""Every plugin hook of MOJAVOX Notify, in one module.

A plugin is a plain module (or any object) with functions marked `@hookimpl` whose names are
below. Hooks are always called with keyword arguments, so a plugin may accept only the ones it
needs, and new arguments can be added without breaking old plugins. Hooks whose result is
awaitable (`async def`) are awaited by the core.
"""

from __future__ import annotations

import pluggy

PROJECT = "mojavox_notify"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mojavox_register_types():
    """Called once while the application is built.

    Return a list of `NotificationType(name, default_priority, description)` (or dicts with
    those keys) this plugin produces. Each type is also a WebSocket channel. A name registered
    twice with different settings stops start-up.
    """


@hookspec
def mojavox_event_types():
    """Called once while the application is built.

    Return a dict of the domain event types this plugin handles (`{"payment.received":
    "a debtor paid"}`). `POST /api/events` refuses any type no plugin claims.
    """


@hookspec(firstresult=True)
def mojavox_event_to_drafts(event):
    """Called for each domain event, on one plugin only: the one that declared `event.type` in
    its `mojavox_event_types` (an event of a type nobody declared is refused before any plugin
    is asked).

    `event` is an `Event(type, data, id, occurred_at)`. Return None for event types that are not
    yours anyway, so the plugin stays correct on its own. For your own types, validate
    `event.data` (raise `mojavox_notify.errors.ValidationError(field, message)` for a bad
    payload; it becomes a 400 naming the field) and return a list of notification drafts: dicts
    with `userId`, `type`, `title`, `message` and optionally `priority`, `data`, `actionUrl`,
    `expiresAt`, `escalationKey` (the matter an escalating type's notification is about, e.g.
    `call:<callId>`). The list may also hold `ResolveEscalation(key, resolution)` items, which
    resolve the unresolved escalation of that key (an event that only ends a matter returns
    just those). None for a type you declared is an error (500). May be async.
    """


@hookspec
def mojavox_event_sources(app):
    """Called once at start-up, after storage and the broker are ready.

    Return a list of async callables `source(emit)` that the server runs as background tasks
    for as long as it runs, for example a poller of an external system. `emit(event)` takes an
    `Event` and feeds it through the same pipeline as `POST /api/events`. The tasks are
    cancelled at shutdown, so a source must let `asyncio.CancelledError` through.
    """


@hookspec
def mojavox_startup(app):
    """Called once when the server has started and before it accepts connections, in every
    process of `serve` (`app.role` "fire": the escalation timers' own process). May be async."""


@hookspec
def mojavox_shutdown(app):
    """Called once while the server stops, after event sources were cancelled. May be async."""


@hookspec
def mojavox_notification_created(notification, user_id):
    """Called after each notification is stored and published.

    `notification` is the payload clients receive; `user_id` its recipient. Return nothing; an
    exception here is logged and does not undo the notification. May be async.
    """


@hookspec
def mojavox_escalation_policies():
    """Called once while the application is built.

    Return a dict of escalation policies by notification type, each in the shape of the
    settings' `escalations.<type>` (`{"claim": True, "steps": [{"after_seconds": 30, "to":
    {"topic": "supervisors"}}], "repeat": 0}`). The settings' policy for a type wins over a
    plugin's.
    """


@hookspec
def mojavox_escalation_targets(notification, step):
    """Called when a step of an escalation fires, for every step of every policy.

    `notification` is the escalated notification as clients see it (without a recipient, with
    `tenant` and its `escalation`); `step` is `{number, round, afterSeconds, topic, users}`.
    Return a list of user ids of that tenant to tell besides the step's own targets (e.g. who
    is on duty now, from your roster), or None. Those told already are skipped. May be async;
    a failure is logged and the step goes to its own targets.
    """


@hookspec
def mojavox_escalation_changed(escalation):
    """Called after every change of an escalation is stored and published: acknowledged,
    escalated, resolved, unanswered.

    `escalation` is its payload as clients see it (`{id, key, state, step, acknowledgedBy,
    ...}`), e.g. to tell the call service who took the call. Return nothing; a failure is
    logged. May be async.
    """
