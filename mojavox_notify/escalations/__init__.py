"""Critical escalations that are answered: a notification of a type with a policy opens an
escalation that one recipient acknowledges (claims), that climbs a chain of timed steps while
nobody does, and that is resolved when its matter ends (the call). Its timeline says who was
told what, when, and how.

- policy.py: the policies (settings `escalations.<type>`, the plugins' hook) and their schedule
- record.py: the stored document and its transitions, pure
- service.py: open, acknowledge, resolve, seen, the reads; every change published
- timers.py: the durable timers every process polls, firing each step once
- journal.py: timeline lines from the socket path, written in batches
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ResolveEscalation:
    """What an event plugin returns (among its drafts, or alone) to resolve the unresolved
    escalation of `key` in the event's tenant, e.g. `ResolveEscalation(f"call:{call_id}",
    "call ended")` for `call.ended`. Nothing happens when no escalation has that key."""

    key: str
    resolution: str | None = None
