"""Escalation policies: per notification type, who is told next and when, as settings say
(`escalations.<type>`) or a plugin's `mojavox_escalation_policies` hook returns.

A policy is copied into every escalation it opens, so a running escalation keeps its chain
when the settings change. Its schedule, from the escalation's creation: step k of round r is
due at `r × L + after_k` seconds, L being the last step's `after_seconds` (one round), and
after the last step of the last round the escalation becomes unanswered once its grace has
passed (`unanswered_after_seconds`, by default the last step's own wait).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .. import tenants
from ..model import NotificationTypes
from ..settings import EscalationPolicySettings, EscalationStepSettings, EscalationTargetSettings
from ..wire.input import check_recipient
from ..wire.topic import TOPIC_KEY_PATTERN, TOPIC_KEY_RULE

MAX_REPEAT = 5


class PolicyError(ValueError):
    """A policy that cannot run; the message names the type and the key."""


@dataclass(frozen=True)
class Step:
    after_seconds: float
    topic: str | None = None  # a topic's name, in the escalation's tenant
    users: tuple[str, ...] = ()  # user ids, in the escalation's tenant


@dataclass(frozen=True)
class Action:
    """What is due next: step `step` (1-based) of round `round`, or, when `unanswered`, the
    end of the chain."""

    round: int
    step: int
    unanswered: bool = False


@dataclass(frozen=True)
class Policy:
    claim: bool = True
    steps: tuple[Step, ...] = ()
    repeat: int = 0
    unanswered_after_seconds: float | None = None

    @property
    def grace_seconds(self) -> float | None:
        """How long after the last step the escalation waits before it is unanswered."""
        if self.unanswered_after_seconds is not None:
            return self.unanswered_after_seconds
        if not self.steps:
            return None
        if len(self.steps) == 1:
            return self.steps[0].after_seconds
        return self.steps[-1].after_seconds - self.steps[-2].after_seconds

    def first(self) -> Action | None:
        if self.steps:
            return Action(0, 1)
        return Action(0, 0, unanswered=True) if self.grace_seconds is not None else None

    def after(self, action: Action) -> Action | None:
        """The action that follows `action` (None after the end of the chain)."""
        if action.unanswered:
            return None
        if action.step < len(self.steps):
            return Action(action.round, action.step + 1)
        if action.round < self.repeat:
            return Action(action.round + 1, 1)
        return Action(action.round, action.step, unanswered=True)

    def offset_ms(self, action: Action) -> int:
        """When `action` is due, in milliseconds after the escalation's creation."""
        round_seconds = self.steps[-1].after_seconds if self.steps else 0.0
        if action.unanswered:
            seconds = (self.repeat + 1) * round_seconds + (self.grace_seconds or 0.0)
        else:
            seconds = action.round * round_seconds + self.steps[action.step - 1].after_seconds
        return int(seconds * 1000)

    def to_document(self) -> dict[str, Any]:
        return {"claim": self.claim, "repeat": self.repeat,
                "unanswered_after_seconds": self.unanswered_after_seconds,
                "steps": [{"after_seconds": step.after_seconds, "topic": step.topic,
                           "users": list(step.users)} for step in self.steps]}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "Policy":
        return cls(claim=document["claim"], repeat=document["repeat"],
                   unanswered_after_seconds=document.get("unanswered_after_seconds"),
                   steps=tuple(Step(step["after_seconds"], step.get("topic"),
                                    tuple(step.get("users", ()))) for step in document["steps"]))


def build_policies(configured: Mapping[str, EscalationPolicySettings],
                   from_plugins: Iterable[Mapping[str, Any]],
                   types: NotificationTypes) -> dict[str, Policy]:
    """Every type's policy: the plugins' first, the settings' over them (an operator's word
    is the last). A policy for a type nobody registered, or one that cannot run, stops
    start-up with a PolicyError naming it."""
    policies: dict[str, Policy] = {}
    for offered in from_plugins:
        if not isinstance(offered, Mapping):
            raise PolicyError("mojavox_escalation_policies must return a mapping of "
                              "notification types to policies")
        for type_name, raw in offered.items():
            policies[type_name] = _checked(type_name, _from_mapping(type_name, raw), types,
                                           "a plugin's mojavox_escalation_policies")
    for type_name, settings in configured.items():
        policies[type_name] = _checked(type_name, _from_settings(settings), types,
                                       f"settings: escalations.{type_name}")
    return policies


def _from_settings(settings: EscalationPolicySettings) -> Policy:
    return Policy(claim=settings.claim, repeat=settings.repeat,
                  unanswered_after_seconds=settings.unanswered_after_seconds,
                  steps=tuple(Step(step.after_seconds, step.to.topic, step.to.users)
                              for step in settings.steps))


def _from_mapping(type_name: str, raw: Any) -> Policy:
    """A plugin's policy, in the shape the settings take."""
    if isinstance(raw, Policy):
        return raw
    if not isinstance(raw, Mapping):
        raise PolicyError(f"escalation policy for {type_name} must be a mapping")
    try:
        steps = tuple(EscalationStepSettings(
            after_seconds=float(step["after_seconds"]),
            to=EscalationTargetSettings(topic=(step.get("to") or {}).get("topic"),
                                        users=tuple((step.get("to") or {}).get("users", ()))))
            for step in raw.get("steps", ()))
        return _from_settings(EscalationPolicySettings(
            claim=bool(raw.get("claim", True)), steps=steps, repeat=int(raw.get("repeat", 0)),
            unanswered_after_seconds=raw.get("unanswered_after_seconds")))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PolicyError(f"escalation policy for {type_name}: {error}") from None


def _checked(type_name: str, policy: Policy, types: NotificationTypes, source: str) -> Policy:
    if type_name not in types:
        raise PolicyError(f"{source}: {type_name} is not a notification type; known: "
                          f"{', '.join(types.names)}")
    if not 0 <= policy.repeat <= MAX_REPEAT:
        raise PolicyError(f"{source}.repeat: must be between 0 and {MAX_REPEAT}")
    previous = 0.0
    for index, step in enumerate(policy.steps):
        where = f"{source}.steps.{index}"
        if not 0.1 <= step.after_seconds <= 86400:
            raise PolicyError(f"{where}.after_seconds: must be between 0.1 and 86400")
        if step.after_seconds <= previous:
            raise PolicyError(f"{where}.after_seconds: must be later than the step before "
                              f"({previous:g} s): every wait counts from the creation")
        previous = step.after_seconds
        if step.topic is not None and not TOPIC_KEY_PATTERN.fullmatch(step.topic):
            raise PolicyError(f"{where}.to.topic: {TOPIC_KEY_RULE}")
        for user in step.users:
            try:
                check_recipient(user)
            except Exception:
                raise PolicyError(f"{where}.to.users: {user!r} is not a user id") from None
    return policy


def step_targets(step: Step, tenant: str) -> tuple[str | None, list[str]]:
    """The step's topic key and user keys in `tenant`."""
    topic = tenants.key(tenant, step.topic) if step.topic else None
    return topic, [tenants.key(tenant, user) for user in step.users]
