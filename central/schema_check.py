"""Fast acceptance of payloads against the schemas in `protocols.payloads`.

`jsonschema` takes ~150 µs per reading here, which caps one consumer near 6k readings/s. This
module compiles the same schema documents (`protocols.payloads.SCHEMAS`, the only source of
truth) into plain Python checks that answer "valid or not" an order of magnitude faster. A
payload it refuses is validated again by `protocols.payloads.validate`, which gives the error
and its path, so the verdict that counts is always the schema module's. Compilation refuses
keywords it does not implement, so a new keyword in the contract cannot be ignored silently
(the kind then falls back to `jsonschema` for every payload).

tests/central/test_schema_check.py compares both verdicts on thousands of mutated payloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from protocols.payloads import SCHEMAS, PayloadInvalid, validate

__all__ = ["PayloadInvalid", "Unsupported", "check", "compile_schema", "is_compiled"]

Check = Callable[[Any], bool]

_IGNORED = {"$schema", "$id", "title", "description"}
_FORMATS = Draft202012Validator.FORMAT_CHECKER


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not implement."""


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}
_KEYWORDS = {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "propertyNames",
    "items",
    "minItems",
    "pattern",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "minimum",
    "maximum",
    "format",
}


def compile_schema(schema: dict[str, Any]) -> Check:
    """A function that returns True exactly when `schema` accepts the value.

    One closure per schema node with every keyword's parameters bound up front; a keyword
    that does not apply to the value's JSON type passes, as JSON Schema says.
    """
    unknown = set(schema) - _IGNORED - _KEYWORDS
    if unknown:
        raise Unsupported(", ".join(sorted(unknown)))
    types: tuple[type, ...] | None = None
    integral_float = False
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if any(n not in _PY_TYPES for n in names):
            raise Unsupported(f"type {names!r}")
        types = tuple(t for n in names for t in _PY_TYPES[n])
        integral_float = "integer" in names and "number" not in names
    enum: frozenset[str] | None = None
    if "enum" in schema:
        if not all(type(o) is str for o in schema["enum"]):
            raise Unsupported("enum of non-strings")
        enum = frozenset(schema["enum"])
    if "const" in schema:
        if type(schema["const"]) is not str:
            raise Unsupported("const of a non-string")
        enum = frozenset([schema["const"]]) if enum is None else enum & {schema["const"]}
    search = re.compile(schema["pattern"]).search if "pattern" in schema else None
    min_len, max_len = schema.get("minLength", 0), schema.get("maxLength")
    fmt = schema.get("format") if schema.get("format") in _FORMATS.checkers else None
    lo, hi = schema.get("minimum"), schema.get("maximum")
    has_array = "items" in schema or "minItems" in schema
    item = compile_schema(schema["items"]) if "items" in schema else None
    min_items = schema.get("minItems", 0)
    obj = (
        _object_check(schema)
        if {"properties", "required", "additionalProperties", "propertyNames"} & set(schema)
        else None
    )

    def node(v: Any) -> bool:
        t = type(v)
        if (
            types is not None
            and t not in types
            and not (integral_float and t is float and v.is_integer())
        ):
            return False
        if enum is not None and (t is not str or v not in enum):
            return False
        if t is str:
            if search is not None and search(v) is None:
                return False
            if len(v) < min_len or (max_len is not None and len(v) > max_len):
                return False
        elif t is int or t is float:
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return False
        elif t is dict:
            if obj is not None and not obj(v):
                return False
        elif t is list and has_array:
            if len(v) < min_items:
                return False
            if item is not None:
                for x in v:
                    if not item(x):
                        return False
        return fmt is None or bool(_FORMATS.conforms(v, fmt))

    return node


def _object_check(schema: dict[str, Any]) -> Check:
    props = {k: compile_schema(s) for k, s in schema.get("properties", {}).items()}
    required = tuple(schema.get("required", ()))
    extra = schema.get("additionalProperties", True)
    extra_check = compile_schema(extra) if isinstance(extra, dict) else None
    names = compile_schema(schema["propertyNames"]) if "propertyNames" in schema else None
    closed = extra is False

    def obj(v: dict[str, Any]) -> bool:
        for key in required:
            if key not in v:
                return False
        for key, value in v.items():
            if names is not None and not names(key):
                return False
            prop = props.get(key)
            if prop is not None:
                if not prop(value):
                    return False
            elif closed or (extra_check is not None and not extra_check(value)):
                return False
        return True

    return obj


def _compile_all() -> dict[str, Check]:
    out: dict[str, Check] = {}
    for kind, schema in SCHEMAS.items():
        try:
            out[kind] = compile_schema(schema)
        except Unsupported:
            continue  # check() falls back to jsonschema for this kind
    return out


_CHECKS = _compile_all()


def check(kind: str, payload: Any) -> None:
    """Raise `PayloadInvalid` unless the schema of `kind` accepts `payload`."""
    fast = _CHECKS.get(kind)
    if fast is not None and fast(payload):
        return
    # refused (or not compiled): the schema module decides, and names the error and its path
    validate(kind, payload)


def is_compiled(kind: str) -> bool:
    return kind in _CHECKS
