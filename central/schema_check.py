"""Fast acceptance of payloads against the schemas in `protocols.payloads`.

`jsonschema` takes ~150 µs per reading here, which caps one consumer near 6k readings/s. This
module compiles the same schema documents (`protocols.payloads.SCHEMAS`, the only source of
truth) into generated Python functions (every keyword an inlined ``if``, no library, no
recursion) that answer "valid or not" more than ten times faster. A
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


def _memo_search(pattern: str) -> Callable[[str], bool | None]:
    """`re.search` that remembers recent verdicts: value names, items, units and the stamps of
    one batch repeat thousands of times. Returns None for "no match", like `re.search`."""
    search = re.compile(pattern).search
    seen: dict[str, bool | None] = {}

    def cached(text: str) -> bool | None:
        verdict = seen.get(text, 0)
        if verdict == 0:
            verdict = True if search(text) is not None else None
            if len(seen) >= 4096:
                seen.clear()
            seen[text] = verdict
        return verdict  # type: ignore[return-value]

    return cached


class _Compiler:
    """Writes one Python function per schema, every keyword inlined as an ``if``: a refused
    value returns False where it is found, an accepted one falls through to ``return True``.
    A keyword that does not apply to the value's JSON type passes, as JSON Schema says."""

    def __init__(self) -> None:
        self.consts: dict[str, object] = {"FORMATS": _FORMATS}
        self.lines: list[str] = []
        self.depth = 0

    def const(self, value: object) -> str:
        name = f"C{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def node(self, schema: dict[str, Any], var: str, ind: int) -> None:
        unknown = set(schema) - _IGNORED - _KEYWORDS
        if unknown:
            raise Unsupported(", ".join(sorted(unknown)))
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if any(n not in _PY_TYPES for n in names):
                raise Unsupported(f"type {names!r}")
            types = self.const(tuple(t for n in names for t in _PY_TYPES[n]))
            test = f"type({var}) not in {types}"
            if "integer" in names and "number" not in names:
                test += f" and not (type({var}) is float and {var}.is_integer())"
            self.emit(ind, f"if {test}: return False")
        if "enum" in schema or "const" in schema:
            options = list(schema.get("enum", [schema.get("const")]))
            if "const" in schema:
                options = [o for o in options if o == schema["const"]]
            if not all(type(o) is str for o in options):
                raise Unsupported("enum or const of non-strings")
            allowed = self.const(frozenset(options))
            self.emit(ind, f"if type({var}) is not str or {var} not in {allowed}: return False")
        self.strings(schema, var, ind)
        for key, op in (("minimum", "<"), ("maximum", ">")):
            if key in schema:
                self.emit(ind, f"if type({var}) in (int, float) and {var} {op} {schema[key]!r}:")
                self.emit(ind + 1, "return False")
        if "items" in schema or "minItems" in schema:
            self.emit(ind, f"if type({var}) is list:")
            if schema.get("minItems", 0):
                self.emit(ind + 1, f"if len({var}) < {schema['minItems']}: return False")
            if "items" in schema:
                item = self.fresh("x")
                self.emit(ind + 1, f"for {item} in {var}:")
                self.node(schema["items"], item, ind + 2)
            self.emit(ind + 1, "pass")
        if {"properties", "required", "additionalProperties", "propertyNames"} & set(schema):
            self.obj(schema, var, ind)
        if schema.get("format") in _FORMATS.checkers:
            self.emit(ind, f"if not FORMATS.conforms({var}, {schema['format']!r}): return False")

    def strings(self, schema: dict[str, Any], var: str, ind: int) -> None:
        tests = []
        if "pattern" in schema:
            tests.append(f"{self.const(_memo_search(schema['pattern']))}({var}) is None")
        if schema.get("minLength", 0):
            tests.append(f"len({var}) < {schema['minLength']}")
        if "maxLength" in schema:
            tests.append(f"len({var}) > {schema['maxLength']}")
        if tests:
            self.emit(ind, f"if type({var}) is str and ({' or '.join(tests)}): return False")

    def fresh(self, prefix: str) -> str:
        self.depth += 1
        return f"{prefix}{self.depth}"

    def obj(self, schema: dict[str, Any], var: str, ind: int) -> None:
        self.emit(ind, f"if type({var}) is dict:")
        ind += 1
        required = schema.get("required", [])
        if required:
            missing = " or ".join(f"{k!r} not in {var}" for k in required)
            self.emit(ind, f"if {missing}: return False")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        if not props and extra is True and names is None:
            self.emit(ind, "pass")
            return
        key, value = self.fresh("k"), self.fresh("v")
        self.emit(ind, f"for {key}, {value} in {var}.items():")
        ind += 1
        if names is not None:
            self.node(names, key, ind)
        keyword = "if"
        for name, sub in props.items():
            self.emit(ind, f"{keyword} {key} == {name!r}:")
            self.node(sub, value, ind + 1)
            self.emit(ind + 1, "pass")
            keyword = "elif"
        if extra is False:
            self.emit(ind, "else: return False" if props else "return False")
        elif isinstance(extra, dict):
            if props:
                self.emit(ind, "else:")
                self.node(extra, value, ind + 1)
                self.emit(ind + 1, "pass")
            else:
                self.node(extra, value, ind)
        self.emit(ind, "pass")


def compile_schema(schema: dict[str, Any]) -> Check:
    """A function that returns True exactly when `schema` accepts the value."""
    compiler = _Compiler()
    compiler.node(schema, "value", 1)
    source = "\n".join(["def accepts(value):", *compiler.lines, "    return True"])
    namespace: dict[str, Any] = dict(compiler.consts)
    exec(compile(source, f"<schema {schema.get('$id', '')}>", "exec"), namespace)  # noqa: S102
    accepts: Check = namespace["accepts"]
    return accepts


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
