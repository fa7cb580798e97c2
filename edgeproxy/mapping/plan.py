"""A subscription's mapping compiled together with its action's field table: one pass per event.

Why: the generic steps were resolve the whole mapping into a dict, then ``remove_empty_values``
into a second dict, then ``validate`` into a third, looking every key up in the field table on
the way. Compiled together, the field table becomes a list of (key, step) in the table's order,
each root value sits in a slot of the mapping's ``Scope`` (see ``paths``), and one loop takes
each value from its slot, drops it if it is absent or empty, and coerces it. The result (payload,
key order, errors and their order) is exactly ``validate(remove_empty_values(resolved))``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .directives import (
    MISSING,
    Scope,
    compile_mapping,
    compile_node,
    is_directive,
)
from .fields import Field
from .schema import (
    DROPPED,
    Invalid,
    field_step,
    missing_message,
    remove_empty_values,
    validate,
)

__all__ = ["PayloadPlan"]


class PayloadPlan:
    """``plan(message, device_id)`` -> ``(payload, errors)`` for one subscription.

    Equivalent to resolving ``mapping`` against ``message``, replacing ``device_id`` by the
    given one when it is truthy, then ``validate(remove_empty_values(...), fields)``. Raises
    DirectiveError at construction when the mapping is malformed.
    """

    def __init__(self, mapping: dict[str, Any], fields: Mapping[str, Field], where: str = "mapping"):
        self._fields = fields
        if is_directive(mapping):  # a whole mapping that is one directive: no per-key plan to make
            self._generic: Callable[[Any], Any] | None = compile_mapping(mapping, where)
            return
        self._generic = None
        scope = Scope()
        slot_of: dict[str, int] = {}
        computed: list[tuple[int, Callable[[list], Any]]] = []
        prebuilt: set[str] = set()
        for key, node in mapping.items():
            member = compile_node(node, scope, f"{where}.{key}")
            slot = member.slot
            if key == "device_id":
                slot = None  # its own slot, since a passed-in device id overwrites it: a path's slot is shared
            if slot is None:  # still computed for keys the table drops: an error there stays an error
                slot = scope.new_slot()
                fn = member.fn
                if member.members is not None and _declared_object(fields.get(key)):
                    fn = _object_without_nulls(*member.members)
                    prebuilt.add(key)
                computed.append((slot, fn))
            slot_of[key] = slot
        if "device_id" in fields and "device_id" not in slot_of:
            slot_of["device_id"] = scope.new_slot()  # MISSING unless a device id is passed in
        absent = scope.new_slot()  # a required field the mapping does not set reads MISSING here
        # (key, slot, step, message if required): the loop reads each slot by index, which is
        # cheaper than one itemgetter tuple of all forty values zipped with the entries.
        self._entries = tuple(
            (key, slot_of.get(key, absent), field_step(spec, without_nulls=key in prebuilt),
             missing_message(key) if spec.required else None)
            for key, spec in fields.items() if key in slot_of or spec.required
        )
        self._computed = tuple(computed)
        self._device_slot = slot_of.get("device_id") if "device_id" in fields else None
        self._load = scope.loader()

    def __call__(self, message: Any, device_id: str | None = None) -> tuple[dict[str, Any], list[str]]:
        if self._generic is not None:
            resolved = self._generic(message)
            if device_id:
                resolved["device_id"] = device_id
            return validate(remove_empty_values(resolved, self._fields), self._fields)
        values = self._load(message)
        for slot, fn in self._computed:
            values[slot] = fn(values)
        if device_id and self._device_slot is not None:
            values[self._device_slot] = device_id
        payload: dict[str, Any] = {}
        missing: list[str] = []
        invalid: list[str] = []
        for key, slot, step, if_missing in self._entries:
            value = values[slot]
            if value is not MISSING:
                try:
                    value = step(value)
                except Invalid as exc:
                    invalid.append(exc.message)
                    continue
                if value is not DROPPED:
                    payload[key] = value
                    continue
            if if_missing is not None:
                missing.append(if_missing)
        return payload, missing + invalid


def _declared_object(spec: Field | None) -> bool:
    return spec is not None and spec.type == "object" and bool(spec.properties) and not spec.multiple


def _object_without_nulls(keys: tuple[str, ...], slots: tuple[int, ...]) -> Callable[[list], dict[str, Any]]:
    """An object of paths for a field with declared properties (``setOnce``, ``userAgentData``):
    absent members left out as the directive does, ``null`` members as empty-value removal does,
    in one dict instead of the object and then its cleaned copy.

    A plain loop over (key, slot) pairs: these objects (``setOnce``, ``setAlways``) have mostly
    absent members, and indexing them costs half of building a tuple of all and zipping it."""
    members = tuple(zip(keys, slots))

    def build(values: list) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, slot in members:
            value = values[slot]
            if value is not MISSING and value is not None:
                out[key] = value
        return out

    return build
