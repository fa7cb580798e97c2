"""The generic steps between a resolved mapping and an action: empty-value removal and validation.

They mirror actions-core: ``removeEmptyValues`` on the root payload, then ajv with
``coerceTypes: 'array'`` and ``removeAdditional``. A value that cannot be coerced refuses the
whole event with ajv-human-errors' wording ("Quantity must be an integer but it was a number."),
which is what operators see in the dead-letter table.
"""

from __future__ import annotations

from typing import Any, Mapping

from .coerce import is_date_like, js_number, normalize_number, number_to_string
from .fields import Field

_EXPECTED = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "datetime": "a string or number",
}


class _Invalid(Exception):
    def __init__(self, message: str):
        self.message = message


def describe(value: Any) -> str:
    """ajv-human-errors' name for the type of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def remove_empty_values(payload: Mapping[str, Any], fields: Mapping[str, Field]) -> dict[str, Any]:
    """Root ``''`` always goes; root ``null`` goes unless the field allows it; unknown keys go.

    Inside objects with declared sub-properties only ``null`` goes (``''`` stays); free-form
    objects are left untouched; arrays lose their null items but the items are not cleaned.
    """
    out: dict[str, Any] = {}
    for key, value in payload.items():
        spec = fields.get(key)
        if spec is None or value == "" and isinstance(value, str):
            continue
        if value is None:
            if spec.allow_null:
                out[key] = None
            continue
        if spec.properties is not None and isinstance(value, dict) and not spec.multiple:
            value = {k: v for k, v in value.items() if v is not None}
        elif isinstance(value, list) and spec.multiple:
            value = [v for v in value if v is not None]
        out[key] = value
    return out


def _coerce_scalar(value: Any, spec: Field) -> Any:
    kind = spec.type
    if kind != "object" and isinstance(value, list) and len(value) == 1 and not isinstance(value[0], (list, dict)):
        value = value[0]  # coerceTypes 'array': a one-item array stands for its item
    if kind == "string":
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return number_to_string(value)
    elif kind in ("number", "integer"):
        number: Any = None
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, (int, float)):
            number = value
        elif value is None:
            number = 0
        elif isinstance(value, str) and value.strip() != "":
            parsed = js_number(value)
            if parsed is not None and (kind == "number" or parsed.is_integer()):
                number = parsed
        if number is not None:
            if kind == "integer" and isinstance(number, float) and not number.is_integer():
                raise _Invalid(f"{spec.label} must be an integer but it was a number.")
            return normalize_number(number)
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        if value is None:
            return False
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
    elif kind == "datetime":
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (str, int, float)):
            if isinstance(value, str) and not is_date_like(value):
                raise _Invalid(f"{spec.label} must be a valid date-like string but it was not.")
            return value
    elif kind == "object":
        if isinstance(value, dict):
            if spec.properties:
                value = dict(value)
                for key, sub in spec.properties.items():
                    if key in value:
                        value[key] = _coerce_scalar(value[key], sub)
            return value
    raise _Invalid(f"{spec.label} must be {_EXPECTED[kind]} but it was {describe(value)}.")


def validate(payload: dict[str, Any], fields: Mapping[str, Field]) -> tuple[dict[str, Any], list[str]]:
    """Coerce every field to its declared type; return the payload and ajv's messages."""
    errors = [f"The root value is missing the required field '{key}'." for key, spec in fields.items()
              if spec.required and key not in payload]
    out: dict[str, Any] = {}
    for key, spec in fields.items():
        if key not in payload:
            continue
        value = payload[key]
        try:
            if value is None and spec.allow_null:
                out[key] = None
            elif spec.multiple:
                items = value if isinstance(value, list) else [value]
                out[key] = [_coerce_scalar(item, spec) for item in items]
            else:
                out[key] = _coerce_scalar(value, spec)
        except _Invalid as exc:
            errors.append(exc.message)
    return out, errors
