"""A user's channel settings: the update they send and the settings they read back."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..errors import ValidationError
from ..model import ChannelPreference, NotificationTypes
from .schema import Checker, object_schema


def preferences_update_schema(type_names: Iterable[str]) -> dict[str, Any]:
    names = sorted(type_names)
    choice = object_schema({}, {"enabled": {"type": "boolean", "x-error": "must be true or false"},
                          "push": {"type": "boolean", "x-error": "must be true or false"}})
    choice["x-error"] = "must be an object with enabled and/or push"
    return {
        "type": "object", "additionalProperties": False, "required": ["channels"],
        "properties": {"channels": {
            "type": "object", "x-error": "must be an object of type → {enabled, push}",
            "propertyNames": {"enum": names, "x-error": f"unknown type; allowed: {', '.join(names)}"},
            "additionalProperties": choice}},
    }


def preferences_schema(type_names: Iterable[str]) -> dict[str, Any]:
    choice = object_schema({"enabled": {"type": "boolean"}, "push": {"type": "boolean"}})
    return object_schema({"channels": object_schema({name: choice for name in sorted(type_names)})})


class PreferencesCheck:
    """`PUT /api/notifications/preferences` bodies: `{"channels": {type: {enabled?, push?}}}`
    through the schema, then the fields to change, per type."""

    def __init__(self, types: NotificationTypes):
        self._types = types
        self._schema = Checker(preferences_update_schema(types.names))

    def check(self, raw: Any) -> dict[str, dict[str, bool]]:
        self._schema.check(raw)
        return _changes(raw, self._types)


def _changes(raw: Any, types: NotificationTypes) -> dict[str, dict[str, bool]]:
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(raw) - {"channels"})
    if unknown:
        raise ValidationError(unknown[0], "unknown field; allowed: channels")
    channels = raw.get("channels")
    if not isinstance(channels, Mapping):
        raise ValidationError("channels", "must be an object of type → {enabled, push}")
    changes: dict[str, dict[str, bool]] = {}
    for name, preference in channels.items():
        if name not in types:
            raise ValidationError(f"channels.{name}", f"unknown type; allowed: {', '.join(types.names)}")
        if not isinstance(preference, Mapping):
            raise ValidationError(f"channels.{name}", "must be an object with enabled and/or push")
        change = {}
        for key, value in preference.items():
            if key not in ("enabled", "push"):
                raise ValidationError(f"channels.{name}.{key}", "unknown field; allowed: enabled, push")
            if not isinstance(value, bool):
                raise ValidationError(f"channels.{name}.{key}", "must be true or false")
            change[key] = value
        changes[name] = change
    return changes


def preferences_payload(preferences: Mapping[str, ChannelPreference]) -> dict[str, Any]:
    return {"channels": {name: {"enabled": p.enabled, "push": p.push}
                         for name, p in sorted(preferences.items())}}
