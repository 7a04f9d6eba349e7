"""JSON Schema building blocks (draft 2020-12) and the `Checker` that validates with them.

One definition serves twice: a shape's `check_…` validates a body against its schema first, and
openapi.py and /protocol.json publish the same objects. Each property's `x-error` is the message
a client gets when that property is wrong, after the field's name; `x-code` its error code.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import fastjsonschema
import jsonschema

from ..errors import ValidationError
from ..tenants import TENANT_RULE
from .input import MAX_USER_ID

OBJECT_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
TIMESTAMP = {"type": "string", "format": "date-time",
             "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"}
COUNT = {"type": "integer", "minimum": 0}


def object_schema(required: dict[str, Any], optional: dict[str, Any] | None = None,
            description: str = "") -> dict[str, Any]:
    properties = {**required, **(optional or {})}
    schema = {"type": "object", "properties": properties, "required": sorted(required),
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


# No control characters: a user id is written into log lines, and tenants.SEPARATOR is one.
USER_ID = {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID,
           "pattern": r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",
           "x-error": f"must be a user id of 1 to {MAX_USER_ID} characters without surrounding "
                      "spaces or control characters"}
TENANT = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
          "x-error": TENANT_RULE}
TIME = {"type": "string", "format": "date-time",
        "x-error": "must be an ISO 8601 time such as 2026-01-27T20:30:00Z"}


def text_schema(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit,
            "x-error": f"must be a string of at most {limit} characters (markup is removed)"}


def one_of(values: Iterable[str], what: str = "") -> dict[str, Any]:
    values = sorted(values) if not isinstance(values, tuple) else list(values)
    return {"enum": values, "x-error": f"must be one of {', '.join(values)}{what}"}


ERROR = object_schema({"error": object_schema({"code": {"type": "string"}, "message": {"type": "string"}})},
                description="Every error answer")
SUCCESS = object_schema({"success": {"const": True}})


RANKED_ERRORS = 50


class Checker:
    """One schema, compiled once. Valid input is checked by generated code (fastjsonschema: a
    1,000-user alert's drafts in a few milliseconds); only invalid input pays for jsonschema's
    report, from which the first problem is named: an unknown field first, then fields in the
    schema's order. The report is read up to RANKED_ERRORS problems: a body can hold thousands
    (an unknown channel per key: 7,700 in 64 KB, 0.4 s to list them all on the event loop)."""

    def __init__(self, schema: dict[str, Any]):
        self.schema = schema
        self._fast = fastjsonschema.compile(schema, use_formats=False)
        self._full = jsonschema.Draft202012Validator(schema)
        self._order = list(schema.get("properties", {}))

    def check(self, raw: Any, name: str = "body") -> None:
        if not isinstance(raw, dict) and self.schema.get("type") == "object":
            raise ValidationError(name, "must be a JSON object")
        try:
            self._fast(raw)
            return
        except fastjsonschema.JsonSchemaException:
            pass
        errors = list(itertools.islice(self._full.iter_errors(raw), RANKED_ERRORS))
        if errors:
            first = min(errors, key=lambda error: _rank(error, self._order))
            raise _as_validation_error(first, raw, self.schema, name)


def _rank(error: jsonschema.ValidationError, order: list[str]) -> tuple:
    if error.validator == "additionalProperties" and not error.path:
        return (0, 0, "")
    field = error.path[0] if error.path else (_missing(error) or "")
    position = order.index(field) if field in order else len(order)
    return (1, position, str(list(error.path)))


def _missing(error: jsonschema.ValidationError) -> str | None:
    if error.validator == "required":
        return error.message.split("'")[1]
    return None


def _as_validation_error(error: jsonschema.ValidationError, raw: Any, schema: dict,
                         name: str) -> ValidationError:
    if error.validator == "additionalProperties":
        container = _at(raw, error.path)
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(container) - set(allowed))[0]
        return ValidationError(_path(list(error.path) + [unknown]),
                               f"unknown field; allowed: {', '.join(allowed)}")
    if error.validator == "required":
        missing = _missing(error)
        field_schema = error.schema.get("properties", {}).get(missing, {})
        return ValidationError(_path(list(error.path) + [missing]),
                               field_schema.get("x-error", "is required"))
    if "propertyNames" in error.schema_path:  # reported at the object, about one of its keys
        key = _bad_key(_at(raw, error.path), error.schema)
        return ValidationError(_path(list(error.path) + [key]), error.schema["x-error"])
    path = list(error.path)
    field_schema = error.schema if "x-error" in error.schema else _schema_at(schema, path)
    message = field_schema.get("x-error", error.message)
    return ValidationError(_path(path) or name, message, code=field_schema.get("x-code"))


def _at(value: Any, path: Iterable) -> Any:
    for step in path:
        value = value[step]
    return value


def _schema_at(schema: dict, path: list) -> dict:
    for step in path:
        properties = schema.get("properties", {})
        schema = properties.get(step) or schema.get("additionalProperties") or {}
        if not isinstance(schema, dict):
            return {}
    return schema


def _bad_key(container: dict, names: dict) -> str:
    return sorted(key for key in container if key not in names["enum"])[0]


def _path(path: list) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text
