"""Modbus register maps as data, and the conversion between register words and measurements.

A map lists, for each measurement of the shared vocabulary, the function code that reads it
(3 = holding, 4 = input registers), the register address (0-based, as on the wire), the data
type with its word order, and a scale: ``value = raw * scale``. Encoding is the inverse, so the
simulator serves exactly what the agent decodes.
"""

from __future__ import annotations

import importlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import LocalProtocolError, ValueFormatError
from protocols.measurements import Measurement, quantity

__all__ = [
    "MAPS",
    "Block",
    "DataType",
    "Register",
    "RegisterMap",
    "decode_block",
    "decode_register",
    "encode_register",
    "encode_values",
    "load_map",
]

#: model name -> module in protocols.modbus.maps
MAPS: dict[str, str] = {
    "chint_dtsu666": "protocols.modbus.maps.chint_dtsu666",
    "eastron_sdm630": "protocols.modbus.maps.eastron_sdm630",
}

#: the Modbus limit on registers per read request (FC 3/4)
MAX_READ = 125


class DataType(StrEnum):
    """Register layouts. ``_be`` = high word first (ABCD), ``_ws`` = word-swapped (CDAB)."""

    FLOAT32_BE = "float32_be"
    FLOAT32_WS = "float32_ws"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32_BE = "uint32_be"
    INT32_BE = "int32_be"

    @property
    def words(self) -> int:
        return 1 if self in (DataType.UINT16, DataType.INT16) else 2


_STRUCT = {
    DataType.FLOAT32_BE: ">f",
    DataType.FLOAT32_WS: ">f",
    DataType.UINT16: ">H",
    DataType.INT16: ">h",
    DataType.UINT32_BE: ">I",
    DataType.INT32_BE: ">i",
}


@dataclass(frozen=True, slots=True)
class Register:
    measurement: str
    function: int
    address: int
    datatype: DataType
    scale: float = 1.0

    @property
    def words(self) -> int:
        return self.datatype.words


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers from `address` with `function`."""

    function: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: str
    manufacturer: str
    phases: int
    registers: tuple[Register, ...]
    source: str
    """where the map comes from (public manual or page)"""

    def register(self, measurement: str) -> Register:
        for reg in self.registers:
            if reg.measurement == measurement:
                return reg
        raise KeyError(f"{self.model} has no register for {measurement!r}")

    @property
    def measurements(self) -> tuple[str, ...]:
        return tuple(r.measurement for r in self.registers)

    def blocks(self, *, max_gap: int = 8, max_count: int = MAX_READ) -> list[Block]:
        """Group the registers into as few reads as possible (gaps of up to `max_gap` words
        are read through)."""
        out: list[Block] = []
        regs = sorted(self.registers, key=lambda r: (r.function, r.address))
        for reg in regs:
            end = reg.address + reg.words
            if out:
                last = out[-1]
                last_end = last.address + last.count
                if (
                    last.function == reg.function
                    and reg.address - last_end <= max_gap
                    and end - last.address <= max_count
                ):
                    out[-1] = Block(last.function, last.address, max(last_end, end) - last.address)
                    continue
            out.append(Block(reg.function, reg.address, reg.words))
        return out


def _validate(regmap: RegisterMap) -> None:
    seen: dict[tuple[int, int], str] = {}
    for reg in regmap.registers:
        quantity(reg.measurement)  # must be in the vocabulary
        if reg.function not in (3, 4):
            raise LocalProtocolError(f"{regmap.model}: function {reg.function} is not 3 or 4")
        for w in range(reg.words):
            key = (reg.function, reg.address + w)
            if key in seen:
                raise LocalProtocolError(
                    f"{regmap.model}: {reg.measurement} overlaps {seen[key]} at {key}"
                )
            seen[key] = reg.measurement


def load_map(model: str) -> RegisterMap:
    """The register map of a model: its key in `MAPS` ("chint_dtsu666") or the model name on
    the nameplate ("DTSU666", any case). Validated against the vocabulary."""
    key = model if model in MAPS else _by_model_name().get(model.upper())
    if key is None:
        known = ", ".join(sorted(MAPS))
        raise LocalProtocolError(f"no Modbus register map for model {model!r} (known: {known})")
    regmap: RegisterMap = importlib.import_module(MAPS[key]).MAP
    _validate(regmap)
    return regmap


def _by_model_name() -> dict[str, str]:
    return {importlib.import_module(mod).MAP.model.upper(): key for key, mod in MAPS.items()}


def decode_register(reg: Register, words: Sequence[int]) -> Measurement:
    """The measurement held in `reg.words` register words."""
    if len(words) != reg.words:
        raise ValueFormatError(f"{reg.measurement}: {len(words)} words, expected {reg.words}")
    if reg.datatype is DataType.FLOAT32_WS:
        words = [words[1], words[0]]
    raw_bytes = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in words)
    raw = struct.unpack(_STRUCT[reg.datatype], raw_bytes)[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueFormatError(f"{reg.measurement}: register holds {raw}")
    value = raw * reg.scale
    digits = max(0, -math.floor(math.log10(reg.scale))) + 3 if reg.scale < 1 else 3
    number: float | int = round(value, digits) if isinstance(value, float) else value
    return Measurement(reg.measurement, number, quantity(reg.measurement).unit)


def encode_register(reg: Register, value: float) -> list[int]:
    """The register words that hold `value` (in the vocabulary's unit)."""
    raw = value / reg.scale
    fmt = _STRUCT[reg.datatype]
    try:
        if reg.datatype in (DataType.FLOAT32_BE, DataType.FLOAT32_WS):
            packed = struct.pack(fmt, raw)
        else:
            packed = struct.pack(fmt, round(raw))
    except struct.error as exc:
        raise LocalProtocolError(f"{reg.measurement}: {value} does not fit: {exc}") from None
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    if reg.datatype is DataType.FLOAT32_WS:
        words.reverse()
    return words


def decode_block(regmap: RegisterMap, block: Block, words: Sequence[int]) -> list[Measurement]:
    """Every mapped measurement inside a block that was read as `words`."""
    if len(words) != block.count:
        raise ValueFormatError(f"block of {block.count} registers came back as {len(words)}")
    out: list[Measurement] = []
    for reg in regmap.registers:
        if reg.function != block.function:
            continue
        start = reg.address - block.address
        if start < 0 or start + reg.words > block.count:
            continue
        out.append(decode_register(reg, words[start : start + reg.words]))
    return out


def encode_values(
    regmap: RegisterMap, values: Mapping[str, float | int | str], function: int
) -> dict[int, int]:
    """Register address -> word for every mapped measurement present in `values` (numbers
    only) and read with `function`."""
    out: dict[int, int] = {}
    regs: Iterable[Register] = (r for r in regmap.registers if r.function == function)
    for reg in regs:
        value = values.get(reg.measurement)
        if value is None or isinstance(value, str):
            continue
        for i, word in enumerate(encode_register(reg, float(value))):
            out[reg.address + i] = word
    return out
