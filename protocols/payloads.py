"""MQTT topics and payload schemas shared by the agent (producer) and the central side (consumer).

This module is the contract: both sides import it, tests validate every payload against it, and
``docs/schemas/*.json`` is generated from it (``scripts/gen-schemas``; a test keeps the published
files in sync). Pure data plus validation: no I/O.

Topic tree (``<c>`` = concentrator id)::

    meterlink/v1/<c>/readings      batches of readings                 QoS 1
    meterlink/v1/<c>/rounds        one report per plan round           QoS 1
    meterlink/v1/<c>/events        meter offline/online, clock, outbox QoS 1
    meterlink/v1/<c>/archive       the meter archive with its version  QoS 1, retained
    meterlink/v1/<c>/status        online / offline (last will)        QoS 1, retained
    meterlink/v1/<c>/cmd           commands (MQTT v5 request/response) QoS 1

Times are ISO 8601 with an offset. ``data_time`` is the reading's own time: the meter's clock for
frozen data (the freeze stamp), converted with the concentrator's time zone.
"""

from __future__ import annotations

import copy
import re
from enum import StrEnum
from functools import cache
from typing import Any, Final

import msgspec

from protocols.payload_types import (
    CONCENTRATOR_ID,
    DAY_PATTERN,
    NAME_PATTERN,
    TIME_PATTERN,
    CheckedDecoder,
    ReadingsPayload,
    struct_schema,
)
from protocols.topup import DATA_LENGTHS, WRITE_DATA_MAX, StepOp

__all__ = [
    "CONCENTRATOR_ID",
    "KINDS",
    "SCHEMAS",
    "TOPIC_ROOT",
    "DuplicateKey",
    "FailureReason",
    "PayloadInvalid",
    "accepts",
    "decode_readings",
    "kind_of_topic",
    "loads",
    "schema_id",
    "topic",
    "validate",
]

TOPIC_ROOT: Final = "meterlink/v1"
KINDS: Final = (
    "readings", "rounds", "events", "archive", "status", "cmd", "response", "tariff",
)  # fmt: skip
_TOPIC_KINDS: Final = ("readings", "rounds", "events", "archive", "status", "cmd", "tariff")
_CONCENTRATOR_RE = re.compile(CONCENTRATOR_ID)


class FailureReason(StrEnum):
    """Why an attempt to read a meter did not give a value. A closed set: the centre breaks
    failures down by these, and the agent maps every error type onto exactly one."""

    NO_REPLY = "no_reply"  # silence for the whole reply window
    TIMEOUT = "timeout"  # a reply started but did not complete (inter-byte gap, window end)
    CHECKSUM = "checksum"  # a reply with a wrong checksum
    FRAME_ERROR = "frame_error"  # bytes that do not form a frame, or a payload that misfits
    ABNORMAL_REPLY = "abnormal_reply"  # the meter answered with an error word (detail names it)
    ADDRESS_MISMATCH = "address_mismatch"  # a valid reply from another meter
    IMPLAUSIBLE_VALUE = "implausible_value"  # non-BCD digits, impossible dates, energy going back
    BUS_ERROR = "bus_error"  # the line or serial server failed (port gone, connection refused)
    BUS_BUSY = "bus_busy"  # the bus could not be had within the plan window
    ROUTE_FAILURE = "route_failure"  # a carrier module could not reach the meter
    MODULE_BUSY = "module_busy"  # the carrier module refused reads as busy (network forming)
    MODULE_DENY = "module_deny"  # the carrier module denied the request (detail: code, meaning)
    MODULE_TIMEOUT = "module_timeout"  # the carrier module did not answer within its timeout
    METER_OFFLINE = "meter_offline"  # skipped: marked offline and not due for a re-probe yet
    NOT_ATTEMPTED = "not_attempted"  # the plan's deadline came before this meter's turn
    STORAGE_FULL = "storage_full"  # read, but the concentrator's disk had no room to keep it


def topic(concentrator: str, kind: str) -> str:
    if not _CONCENTRATOR_RE.match(concentrator):
        raise ValueError(f"concentrator id {concentrator!r} does not match {CONCENTRATOR_ID}")
    if kind not in _TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{TOPIC_ROOT}/{concentrator}/{kind}"


def kind_of_topic(name: str) -> tuple[str, str] | None:
    """(concentrator, kind) of a meterlink topic, or None for anything else."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] not in _TOPIC_KINDS:
        return None
    return parts[2], parts[3]


def schema_id(kind: str) -> str:
    return f"https://meterlink.dev/schemas/{kind}/1"


# --- building blocks -------------------------------------------------------------------------
#: ISO 8601 with seconds and an explicit offset (a pattern, so every validator agrees on it)
_TIME = {"type": "string", "pattern": TIME_PATTERN}
_DAY = {"type": "string", "pattern": DAY_PATTERN}
_ADDRESS = {"type": "string", "pattern": r"^[0-9A]{12}$"}
_METER_ID = {"type": "string", "minLength": 1, "maxLength": 64}
_REASON = {"enum": [r.value for r in FailureReason]}
_NAME = {"type": "string", "pattern": NAME_PATTERN}
_DI = {"type": "string", "pattern": r"^[0-9A-F]{8}$"}
_OPT_INT = {"type": ["integer", "null"], "minimum": 0}
_OPT_LOCAL = {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$"}
_OPT_DEC = {"type": ["string", "null"], "pattern": r"^-?\d+(\.\d+)?$"}
_TRIPLE = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 255},
    "minItems": 3,
    "maxItems": 3,
}
_SET_PAIR = {
    "type": "object",
    "required": ["current", "backup"],
    "properties": {
        "current": {"type": ["array", "null"]},
        "backup": {"type": ["array", "null"]},
    },
    "additionalProperties": False,
}
TARIFF_SETUP: Final[dict[str, Any]] = {
    "description": (
        "protocols.tariff.TariffSetup.to_payload(): meter times are the meter's wall clock"
        " (no offset), decimals are strings; TariffSetup.from_payload reads it strictly"
    ),
    "type": "object",
    "required": [
        "version",
        "read_at",
        "meter_time",
        "counts",
        "sets",
        "status_word3",
        "active",
        "switch",
        "weekend",
        "holidays",
        "prices",
        "ladders",
        "ladder_zones",
        "now",
        "event_counters",
        "unsupported",
    ],
    "properties": {
        "version": {"const": 1},
        "read_at": _TIME,
        "meter_time": _OPT_LOCAL,
        "counts": {
            "type": "object",
            "required": ["zones", "tables", "periods", "tariffs", "holidays", "ladders"],
            "additionalProperties": _OPT_INT,
        },
        "sets": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "items": {
                "type": "object",
                "required": ["zones", "tables"],
                "properties": {
                    "zones": {"type": "array", "items": _TRIPLE},
                    "tables": {
                        "type": "object",
                        "propertyNames": {"pattern": r"^[1-9][0-9]{0,2}$"},
                        "additionalProperties": {"type": "array", "items": _TRIPLE},
                    },
                },
                "additionalProperties": False,
            },
        },
        "status_word3": _OPT_INT,
        "active": {
            "type": "object",
            "required": ["zones", "tables"],
            "properties": {"zones": {"enum": [1, 2]}, "tables": {"enum": [1, 2]}},
            "additionalProperties": False,
        },
        "switch": {
            "type": "object",
            "required": ["zones", "tables", "prices", "ladders", "ladder_zones"],
            "additionalProperties": _OPT_LOCAL,
        },
        "weekend": {
            "type": "object",
            "required": ["workdays", "table"],
            "properties": {"workdays": _OPT_INT, "table": _OPT_INT},
            "additionalProperties": False,
        },
        "holidays": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [_DAY, {"type": "integer", "minimum": 0, "maximum": 255}],
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "prices": _SET_PAIR,
        "ladders": _SET_PAIR,
        "ladder_zones": _SET_PAIR,
        "now": {
            "type": "object",
            "required": ["ladder_price", "price", "tariff_price"],
            "additionalProperties": _OPT_DEC,
        },
        "event_counters": {
            "type": "object",
            "propertyNames": _DI,
            "additionalProperties": {"type": "integer", "minimum": 0},
        },
        "unsupported": {"type": "array", "items": _DI},
    },
    "additionalProperties": False,
}
_HEADER = {
    "schema": {"type": "string"},
    "concentrator": {"type": "string", "pattern": CONCENTRATOR_ID},
}


def _hex(size: int | None = None) -> dict[str, Any]:
    if size is None:
        return {"type": "string", "pattern": r"^([0-9A-Fa-f]{2})+$"}
    return {"type": "string", "pattern": f"^[0-9A-Fa-f]{{{2 * size}}}$"}


#: one step of the ``security`` command (the per-step rules, e.g. which op needs ``data`` of
#: which length, are checked by the agent with a message naming the step; docs/mqtt.md)
SECURITY_STEP: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["op"],
    "properties": {
        "op": {"enum": [op.value for op in StepOp]},
        "data": {
            **_hex(),
            "maxLength": 2 * max(*DATA_LENGTHS.values(), WRITE_DATA_MAX),
            "description": "the request's data after DI and operator code (write: after DI,"
            " password and operator code), relayed verbatim",
        },
        "di": {**_hex(4), "description": "write: the data identifier written (DI3..DI0)"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "items": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        "session_minutes": {"type": "integer", "minimum": 1, "maximum": 9999},
        "password": _hex(4),
    },
    "additionalProperties": False,
}
SECURITY_ARGS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["steps"],
    "properties": {
        "steps": {"type": "array", "minItems": 1, "maxItems": 16, "items": SECURITY_STEP},
        "session": {
            **_hex(4),
            "description": "random-2 of the identity authentication the session steps belong to",
        },
        "not_after": _TIME,
        "operator": _hex(4),
    },
    "additionalProperties": False,
}


def _doc(kind: str, title: str, required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id(kind),
        "title": title,
        "type": "object",
        "required": ["schema", "concentrator", *required],
        "properties": {**_HEADER, **props, "schema": {"const": f"meterlink.{kind}/1"}},
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    # the struct the consumer decodes readings into is this schema's source
    "readings": struct_schema(ReadingsPayload, schema_id("readings")),
    "rounds": _doc(
        "rounds",
        "The report of one round of a reading plan: every expected meter is read or explained.",
        ["plan", "round_id", "started_at", "ended_at", "expected", "read", "failed"],
        {
            "plan": {"type": "string"},
            "round_id": {"type": "string"},
            "data_day": _DAY,
            "final": {"type": "boolean"},
            "started_at": _TIME,
            "ended_at": _TIME,
            "duration_s": {"type": "number", "minimum": 0},
            "expected": {"type": "integer", "minimum": 0},
            "read": {"type": "integer", "minimum": 0},
            "failed_by_reason": {
                "type": "object",
                "propertyNames": _REASON,
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["meter", "reason"],
                    "properties": {
                        "meter": _METER_ID,
                        "reason": _REASON,
                        "detail": {"type": "string"},
                        "attempts": {"type": "integer", "minimum": 0},
                        "last_attempt_at": _TIME,
                    },
                    "additionalProperties": False,
                },
            },
            "bus_busy_s": {"type": "object", "additionalProperties": {"type": "number"}},
            "part": {
                "description": (
                    "Present when the report was too large for one message: the report is sent"
                    " as `of` messages with the same round_id and fields, `failed` cut into"
                    " consecutive pieces; `failed_total` is the length of the whole list."
                ),
                "type": "object",
                "required": ["index", "of", "failed_total"],
                "properties": {
                    "index": {"type": "integer", "minimum": 1},
                    "of": {"type": "integer", "minimum": 1},
                    "failed_total": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
        },
    ),
    "events": _doc(
        "events",
        "Something an operator may want to know, as it happens.",
        ["at", "event"],
        {
            "at": _TIME,
            "event": _NAME,
            "meter": _METER_ID,
            "bus": {"type": "string"},
            "detail": {"type": "object"},
        },
    ),
    "archive": _doc(
        "archive",
        "The concentrator's meter archive (档案), retained, versioned.",
        ["version", "updated_at", "meters"],
        {
            "version": {"type": "integer", "minimum": 1},
            "updated_at": _TIME,
            "meters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["meter", "protocol", "bus"],
                    "properties": {
                        "meter": _METER_ID,
                        "address": _ADDRESS,
                        "unit": {"type": "integer", "minimum": 1, "maximum": 247},
                        "protocol": {"enum": ["dlt645-2007", "dlt645-1997", "modbus"]},
                        "model": {"type": "string"},
                        "bus": {"type": "string"},
                        "district": {"type": "string"},
                        "manufacturer": {"type": "string"},
                        "prepaid": {"type": "boolean"},
                        "tariff_plan": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
        },
    ),
    "status": _doc(
        "status",
        "Whether the agent is online (retained; the last will says offline).",
        ["state", "at"],
        {
            "state": {"enum": ["online", "offline"]},
            "at": _TIME,
            "version": {"type": "string"},
            "archive_version": {"type": "integer"},
            "outbox_depth": {"type": "integer", "minimum": 0},
        },
    ),
    "cmd": {
        **_doc(
            "cmd",
            "A command to the agent (MQTT v5: response topic + correlation data).",
            ["command", "issued_at", "nonce", "signature"],
            {
                "command": {
                    "enum": [
                        "read",
                        "time_sync",
                        "relay",
                        "raw",
                        "archive_update",
                        "security",
                        "tariff",
                    ]
                },
                "issued_at": _TIME,
                "nonce": {"type": "string", "minLength": 8, "maxLength": 64},
                "signature": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
                "meter": _METER_ID,
                "args": {"type": "object"},
            },
        ),
        "allOf": [
            {
                "if": {"properties": {"command": {"const": "security"}}},
                "then": {"required": ["meter", "args"], "properties": {"args": SECURITY_ARGS}},
            }
        ],
    },
    "tariff": _doc(
        "tariff",
        "One meter's tariff set-up (电价/时段 parameters) as read: decoded and raw per DI.",
        ["meter", "read_at", "reason", "setup", "raw"],
        {
            "meter": _METER_ID,
            "bus": {"type": "string"},
            "reason": {
                "description": (
                    "why it was read: first (never before), weekly, counter_change (a"
                    " programming-event counter moved in the daily read), after_switch (the day"
                    " after a switch time the meter held), reprobe (denied items asked again),"
                    " command (the centre's tariff command)"
                ),
                "enum": ["first", "weekly", "counter_change", "after_switch", "reprobe", "command"],
            },
            "read_at": _TIME,
            "clock_offset_s": {"type": "number"},
            "changed_counters": {"type": "array", "items": _DI},
            "setup": TARIFF_SETUP,
            "raw": {
                "description": "value bytes (after the DI, follow-ups joined) of every item read",
                "type": "object",
                "propertyNames": _DI,
                "additionalProperties": _hex(),
            },
            "decode_errors": {
                "description": "items whose bytes did not decode (kept out of setup, raw kept)",
                "type": "object",
                "propertyNames": _DI,
                "additionalProperties": {"type": "string"},
            },
        },
    ),
    "response": _doc(
        "response",
        "The agent's answer to a command, on the command's response topic.",
        ["ok", "command"],
        {
            "ok": {"type": "boolean"},
            "command": {"type": "string"},
            "meter": _METER_ID,
            "result": {"type": "object"},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
            "frames": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["dir", "hex"],
                    "properties": {
                        "dir": {"enum": ["tx", "rx"]},
                        "hex": {"type": "string", "pattern": r"^([0-9A-F]{2}( [0-9A-F]{2})*)?$"},
                    },
                    "additionalProperties": False,
                },
            },
        },
    ),
}


class PayloadInvalid(ValueError):
    """A payload that does not match its schema; `path` locates the first problem."""

    def __init__(self, kind: str, message: str, path: str) -> None:
        super().__init__(f"{kind} payload invalid at {_clip(path) or '/'}: {_clip(message)}")
        self.kind = kind
        self.path = path


class DuplicateKey(ValueError):
    """A JSON object names a key twice: parsers differ on which value wins, so neither does."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"duplicate key {_clip(repr(key))} in a JSON object")
            seen.add(key)
    return out


def loads(raw: str | bytes | bytearray) -> Any:
    """JSON as a payload boundary takes it: UTF-8 only (UnicodeDecodeError), no key twice
    (`DuplicateKey`); too deep a nesting raises RecursionError, like json.loads."""
    import json  # (here: the rest of the module has no use for it)

    text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    return json.loads(text, object_pairs_hook=_unique_keys)


MAX_DETAIL = 240
"""characters of a schema message or path kept in an error: a 4 MB value is named, not quoted"""


def _clip(text: str) -> str:
    """One line, at most about `MAX_DETAIL` characters: both ends kept, the middle counted."""
    text = text.replace("\n", " ").replace("\r", " ")
    if len(text) <= MAX_DETAIL:
        return text
    half = MAX_DETAIL // 2
    return f"{text[:half]}…({len(text) - 2 * half} characters)…{text[-half:]}"


@cache
def _detailed(kind: str) -> Any:
    import jsonschema

    schema = SCHEMAS[kind]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@cache
def _fast(kind: str) -> Any:
    """The schema compiled to Python by `fastjsonschema` (the consumer checks every reading:
    `jsonschema` alone takes ~150 µs per reading). The keywords used are draft-07's too."""
    import fastjsonschema

    # a copy: compiling a schema with "$ref"s changes the dictionaries it is given
    schema = {**copy.deepcopy(SCHEMAS[kind]), "$schema": "http://json-schema.org/draft-07/schema#"}
    return fastjsonschema.compile(schema, use_default=False)


def accepts(kind: str, payload: Any) -> bool:
    """Fast yes/no; `validate` says what is wrong."""
    import fastjsonschema

    try:
        _fast(kind)(payload)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


_READINGS = CheckedDecoder(ReadingsPayload)


def decode_readings(body: bytes) -> ReadingsPayload:
    """Parse and check a readings payload in one pass (the central consumer's hot path).
    Raises `PayloadInvalid` naming the first problem and where it is (``$.readings[3].meter``).
    Accepts what the schema accepts, and also refuses what no database could store: a number
    beyond a float's range, a lone UTF-16 surrogate."""
    try:
        return _READINGS.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at ")
        if not message:
            message, where = str(exc), ""
        raise PayloadInvalid("readings", message, where.strip("`")) from None
    except msgspec.DecodeError as exc:
        try:  # only on the refusal path: say so when the cause is bytes that are no UTF-8
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise PayloadInvalid(
                "readings", f"not UTF-8: byte {bad.start} ({body[bad.start]:#04x})", ""
            ) from None
        raise PayloadInvalid("readings", f"not JSON: {exc}", "") from None


def validate(kind: str, payload: Any) -> None:
    """Raise `PayloadInvalid` unless `payload` (parsed JSON) matches the schema of `kind`.

    The compiled check decides; a refused payload is validated again by `jsonschema`, which
    names the first problem and where it is.
    """
    if kind not in SCHEMAS:
        raise KeyError(f"no schema for {kind!r}")
    if accepts(kind, payload):
        return
    error = next(iter(_detailed(kind).iter_errors(payload)), None)
    if error is None:
        raise PayloadInvalid(kind, "refused by the compiled schema check", "")
    path = "/" + "/".join(str(p) for p in error.absolute_path)
    raise PayloadInvalid(kind, error.message, path)
