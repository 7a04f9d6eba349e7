"""The stored escalation and its state machine, as pure functions: each change is a new
document with the next `version`, which the store sets only over the version it was made from
(compare-and-set), so of two processes changing one escalation at once exactly one wins and
the other reads it again.

    open ──ack──▶ acknowledged ──resolve──▶ resolved
      │                                       ▲
      └─last step passed──▶ unanswered ──ack─┘ (resolve from any unresolved state)

`due` is the next action of its policy and `due_at` when this process or any other must look
at it. A step's change is stored together with its notifications (store.EscalationChange), so
a step is either sent and recorded or neither, whatever process dies when.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import orjson

from .. import tenants
from ..ids import new_object_id
from ..model import Draft
from ..wire.escalation import to_escalation_payload
from .policy import Action, Policy


def new_escalation(draft: Draft, key: str | None, policy: Policy, now_ms: int) -> dict[str, Any]:
    """The document of an escalation a draft opens; its key is the draft's, or its own id."""
    escalation_id = str(new_object_id())
    key = key or tenants.key(tenants.tenant_of(draft.user_id), f"escalation:{escalation_id}")
    first = policy.first()
    document = {
        "_id": escalation_id, "key": key, "live_key": key, "type": draft.type,
        "state": "open", "step": 0, "round": 0, "claim": policy.claim,
        "policy": policy.to_document(),
        "template": {"title": draft.title, "message": draft.message, "priority": draft.priority,
                     "data": draft.data, "action_url": draft.action_url,
                     "expires_at": None if draft.expires_at is None
                     else int(draft.expires_at.timestamp() * 1000)},
        "acknowledged_by": None, "acknowledged_at": None, "acknowledgers": [],
        "resolved_at": None, "resolution": None,
        "created_at": now_ms, "updated_at": now_ms, "version": 1,
        "due": None, "due_at": None,
    }
    return _schedule(document, first)


def policy_of(document: Mapping[str, Any]) -> Policy:
    """The policy the escalation was opened with (parsed once per distinct policy: a burst of
    10,000 steps has a handful)."""
    return _parsed(orjson.dumps(document["policy"]))


@functools.lru_cache(maxsize=256)
def _parsed(policy: bytes) -> Policy:
    return Policy.from_document(orjson.loads(policy))


def notification_part(document: Mapping[str, Any], step: int, round_: int,
                      payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a notification of this escalation stores: which step told its user, and the
    escalation as clients see it (kept current by every change; `payload` when the caller
    has made it already)."""
    return {"id": document["_id"], "step": step, "round": round_,
            "shown": payload or to_escalation_payload(document)}


def _next(document: Mapping[str, Any], now_ms: int, **changes: Any) -> dict[str, Any]:
    return {**document, **changes, "version": document["version"] + 1, "updated_at": now_ms}


def _schedule(document: dict[str, Any], action: Action | None,
              policy: Policy | None = None) -> dict[str, Any]:
    """`due`/`due_at` set to `action` (or cleared). `policy`: the document's, when the caller
    has read it already (10,000 steps at once read it 10,000 times)."""
    if action is None:
        document["due"] = document["due_at"] = None
        return document
    document["due"] = {"round": action.round, "step": action.step,
                       "unanswered": action.unanswered}
    policy = policy or policy_of(document)
    document["due_at"] = document["created_at"] + policy.offset_ms(action)
    return document


def due_action(document: Mapping[str, Any]) -> Action | None:
    due = document.get("due")
    return None if due is None else Action(**due)


def acknowledged(document: Mapping[str, Any], user_id: str, now_ms: int) -> dict[str, Any]:
    """The first acknowledgement: no further step (and no unanswered mark) will come."""
    changed = _next(document, now_ms, state="acknowledged", acknowledged_by=user_id,
                    acknowledged_at=now_ms, acknowledgers=[*document["acknowledgers"], user_id])
    return _schedule(changed, None)


def also_acknowledged(document: Mapping[str, Any], user_id: str, now_ms: int) -> dict[str, Any]:
    """A later acknowledgement of an escalation that does not claim: recorded beside the first."""
    return _next(document, now_ms, acknowledgers=[*document["acknowledgers"], user_id])


def resolved(document: Mapping[str, Any], resolution: str | None, now_ms: int) -> dict[str, Any]:
    changed = _next(document, now_ms, state="resolved", resolved_at=now_ms,
                    resolution=resolution, live_key=None)
    return _schedule(changed, None)


def unanswered(document: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    return _schedule(_next(document, now_ms, state="unanswered"), None)


def step_started(document: Mapping[str, Any], action: Action, now_ms: int) -> dict[str, Any]:
    """Step `action` fires: it is the escalation's step now, and the following action is
    scheduled behind it."""
    changed = _next(document, now_ms, step=action.step, round=action.round)
    policy = policy_of(document)
    return _schedule(changed, policy.after(action), policy)


def settled(document: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """Found due with nothing left to do (its state moved on): due no more."""
    return _schedule(_next(document, now_ms), None)
