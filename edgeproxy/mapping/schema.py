"""The generic steps between a resolved mapping and an action: empty-value removal and validation.

They mirror actions-core: ``removeEmptyValues`` on the root payload, then ajv with
``coerceTypes: 'array'`` and ``removeAdditional``. A value that cannot be coerced refuses the
whole event with ajv-human-errors' wording ("Quantity must be an integer but it was a number."),
which is what operators see in the dead-letter table.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

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


class Invalid(Exception):
    """A value that cannot be coerced to its field's type; ``message`` is ajv-human-errors' wording."""

    def __init__(self, message: str):
        self.message = message



class _Dropped:
    def __repr__(self) -> str:
        return "DROPPED"


DROPPED: Any = _Dropped()  # what ``field_step`` returns for a value that empty-value removal takes out


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
        if spec is None:
            continue
        value = _without_empty(value, spec)
        if value is not DROPPED:
            out[key] = value
    return out


def _without_empty(value: Any, spec: Field) -> Any:
    """``remove_empty_values`` for the value of one known field: the cleaned value or DROPPED."""
    if value == "" and isinstance(value, str):
        return DROPPED
    if value is None:
        return None if spec.allow_null else DROPPED
    if spec.properties is not None and isinstance(value, dict) and not spec.multiple:
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, list) and spec.multiple:
        return [v for v in value if v is not None]
    return value


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
                raise Invalid(f"{spec.label} must be an integer but it was a number.")
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
                raise Invalid(f"{spec.label} must be a valid date-like string but it was not.")
            return value
    elif kind == "object":
        if isinstance(value, dict):
            if spec.properties:
                value = dict(value)
                for key, sub in spec.properties.items():
                    if key in value:
                        value[key] = _coerce_scalar(value[key], sub)
            return value
    # ajv-human-errors names both types of a nullable field ("a string or null").
    raise Invalid(f"{spec.label} must be {_EXPECTED[kind]}{' or null' if spec.allow_null else ''} "
                  f"but it was {describe(value)}.")


def _coerce(value: Any, spec: Field) -> Any:
    """``validate`` for the value of one present field: the coerced value, or raise Invalid."""
    if value is None and spec.allow_null:
        return None
    if spec.multiple:
        items = value if isinstance(value, list) else [value]  # coerceTypes 'array': a value is a one-item list
        out = []
        for index, item in enumerate(items):
            try:
                out.append(_coerce_scalar(item, spec))
            except Invalid as exc:  # ajv names an item by its JSON pointer: "The value at /products/0 ..."
                raise Invalid(exc.message.replace(spec.label, f"The value at {spec.item_path}/{index}", 1)
                              if spec.item_path else exc.message) from None
        return out
    return _coerce_scalar(value, spec)


def validate(payload: dict[str, Any], fields: Mapping[str, Field]) -> tuple[dict[str, Any], list[str]]:
    """Coerce every field to its declared type; return the payload and ajv's messages."""
    errors = [missing_message(key) for key, spec in fields.items() if spec.required and key not in payload]
    out: dict[str, Any] = {}
    for key, spec in fields.items():
        if key not in payload:
            continue
        try:
            out[key] = _coerce(payload[key], spec)
        except Invalid as exc:
            errors.append(exc.message)
    return out, errors


def missing_message(key: str) -> str:
    """ajv's message for a required field that is absent once empty values are removed."""
    return f"The root value is missing the required field '{key}'."


def field_step(spec: Field, *, without_nulls: bool = False) -> Callable[[Any], Any]:
    """Empty-value removal then coercion of one field's value, as one function chosen per field.

    Returns the coerced value or DROPPED, or raises Invalid: exactly ``remove_empty_values``
    followed by ``validate`` for that one key. Why per field: most mapped values are already of
    their field's type (a ``str`` for a string field, a ``dict`` for a free-form object), and the
    type test that proves it is picked once here instead of walking the general rules per event.

    ``without_nulls`` (objects with declared properties only): the caller promises a fresh dict
    that holds no ``None``, i.e. removal is already done and coercion may write into it.
    """
    if without_nulls and not (spec.type == "object" and spec.properties and not spec.multiple):
        raise ValueError(f"without_nulls is for objects with declared properties, not {spec}")

    def general(value: Any) -> Any:
        value = _without_empty(value, spec)
        return value if value is DROPPED else _coerce(value, spec)

    if spec.multiple:
        return general
    if spec.type == "string":
        def string(value: Any) -> Any:
            if type(value) is str:
                return value if value else DROPPED
            return general(value)
        return string
    if spec.type == "object" and spec.properties is None:
        def free_object(value: Any) -> Any:
            return value if type(value) is dict else general(value)
        return free_object
    if spec.type in ("number", "integer"):
        integer = spec.type == "integer"

        def number(value: Any) -> Any:
            kind = type(value)
            if kind is int:  # normalize_number keeps an int as it is
                return value
            if kind is float and (not integer or value.is_integer()):
                return normalize_number(value)
            return general(value)  # strings, booleans, arrays, a fraction for an integer (Invalid)
        return number
    if spec.type == "boolean":
        def boolean(value: Any) -> Any:
            return value if type(value) is bool else general(value)
        return boolean
    if spec.type == "datetime":
        message = f"{spec.label} must be a valid date-like string but it was not."

        def datetime_like(value: Any) -> Any:
            kind = type(value)
            if kind is int or kind is float:
                return value
            if kind is str and value:
                if not is_date_like(value):
                    raise Invalid(message)
                return value
            return general(value)
        return datetime_like
    if spec.type == "object" and spec.properties:
        declared = tuple((key, _scalar_step(sub)) for key, sub in spec.properties.items())
        only_strings = all(sub.type == "string" for sub in spec.properties.values())

        def declared_object(value: Any) -> Any:
            if type(value) is not dict:
                return general(value)
            out = value if without_nulls else {k: v for k, v in value.items() if v is not None}
            if only_strings:  # the usual case, every value already a string: nothing to coerce
                for v in out.values():
                    if type(v) is not str:
                        break
                else:
                    return out
            for key, coerce in declared:
                if key in out:
                    out[key] = coerce(out[key])
            return out
        return declared_object
    return general


def _scalar_step(spec: Field) -> Callable[[Any], Any]:
    """``_coerce_scalar`` for one declared sub-property, with the already-a-string case first."""
    if spec.type == "string":
        return lambda value: value if type(value) is str else _coerce_scalar(value, spec)
    return lambda value: _coerce_scalar(value, spec)
