"""Value formats of DL/T 645 data items: packed BCD numbers, digit strings, clock fields, words.

Every multi-byte value is sent low byte first. A layout such as ``XXXXXX.XX`` gives the digits
most significant first; the decimal point is implied. Signed formats keep the sign in the MSB of
the highest byte (0 +, 1 −). Decoding rejects non-BCD digits with `ValueFormatError` (a meter
that lies is reported, not believed); encoding rejects values that do not fit with
`LocalProtocolError`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from protocols.errors import LocalProtocolError, ValueFormatError

__all__ = ["Bcd", "ClockField", "Digits", "ValueFormat", "Word"]

# byte -> its two BCD digits as a number, or -1 when a nibble is over 9
_BCD = tuple(
    ((b >> 4) * 10 + (b & 0x0F)) if (b >> 4) <= 9 and (b & 0x0F) <= 9 else -1 for b in range(256)
)


def bcd_to_int(data: bytes, *, what: str = "value") -> int:
    """Little-endian packed BCD to an int."""
    text = data[::-1].hex()  # a nibble over 9 shows as a letter
    if text.isdigit():
        return int(text)
    if not data:
        return 0
    bad = next(b for b in data if _BCD[b] < 0)
    raise ValueFormatError(f"{what}: byte {bad:02X} is not BCD ({data.hex(' ').upper()})")


def int_to_bcd(n: int, size: int, *, what: str = "value") -> bytes:
    if n < 0 or n >= 100**size:
        raise LocalProtocolError(f"{what}: {n} does not fit {2 * size} BCD digits")
    out = bytearray(size)
    for i in range(size):
        n, r = divmod(n, 100)
        out[i] = ((r // 10) << 4) | (r % 10)
    return bytes(out)


class ValueFormat:
    """Base of the formats. `size` is the byte count on the wire."""

    size: int
    layout: str

    def decode(self, data: bytes) -> float | int | str:
        raise NotImplementedError

    def encode(self, value: float | int | str) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Bcd(ValueFormat):
    """A BCD number such as ``XXXXXX.XX`` (4 bytes, 2 decimals); `signed` uses the MSB."""

    layout: str
    signed: bool = False
    # derived from the layout once (decoding is on every reading's hot path)
    size: int = field(init=False, repr=False, compare=False)
    decimals: int = field(init=False, repr=False, compare=False)
    _scale: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        integer, _, fraction = self.layout.partition(".")
        if not integer or set(integer + fraction) != {"X"}:
            raise LocalProtocolError(f"BCD layout {self.layout!r} is not like XXX.XX")
        object.__setattr__(self, "size", (len(integer) + len(fraction) + 1) // 2)
        object.__setattr__(self, "decimals", len(fraction))
        object.__setattr__(self, "_scale", 10 ** len(fraction))

    def decode(self, data: bytes) -> float | int:
        if len(data) != self.size:
            raise ValueFormatError(f"{self.layout}: expected {self.size} bytes, got {len(data)}")
        negative = self.signed and data[-1] & 0x80
        if negative:
            data = data[:-1] + bytes((data[-1] & 0x7F,))
        text = data[::-1].hex()
        if not text.isdigit():
            bcd_to_int(data, what=self.layout)  # raises, naming the byte
        n = -int(text) if negative else int(text)
        if not self.decimals:
            return n
        # the correctly rounded quotient is already the nearest float to the decimal value
        return n / self._scale

    def encode(self, value: float | int | str) -> bytes:
        if isinstance(value, str):
            raise LocalProtocolError(f"{self.layout}: expected a number, got {value!r}")
        try:
            scaled = round(float(value) * self._scale)
        except (OverflowError, ValueError):  # inf, nan, an int too large for a float
            raise LocalProtocolError(f"{self.layout}: {value!r} is not a finite number") from None
        negative = scaled < 0
        if negative and not self.signed:
            raise LocalProtocolError(f"{self.layout}: {value} is negative but the format is not")
        raw = bytearray(int_to_bcd(abs(scaled), self.size, what=self.layout))
        if self.signed:
            if raw[-1] & 0x80:
                raise LocalProtocolError(f"{self.layout}: {value} leaves no room for the sign")
            if negative:
                raw[-1] |= 0x80
        return bytes(raw)


@dataclass(frozen=True, slots=True)
class Digits(ValueFormat):
    """A fixed-length digit string (addresses, meter and customer numbers), nameplate order."""

    size: int

    @property
    def layout(self) -> str:  # type: ignore[override]
        return "N" * (2 * self.size)

    def decode(self, data: bytes) -> str:
        if len(data) != self.size:
            raise ValueFormatError(f"digit string: expected {self.size} bytes, got {len(data)}")
        text = data[::-1].hex()
        if not text.isdigit():
            bcd_to_int(data, what="digit string")  # raises, naming the byte
        return text

    def encode(self, value: float | int | str) -> bytes:
        text = str(value).rjust(2 * self.size, "0")
        if len(text) != 2 * self.size or not (text.isascii() and text.isdigit()):
            raise LocalProtocolError(f"expected up to {2 * self.size} digits, got {value!r}")
        return bytes.fromhex(text)[::-1]


_CLOCK_KEYS = frozenset({"YY", "MM", "DD", "WW", "hh", "mm", "ss"})


@dataclass(frozen=True, slots=True)
class ClockField(ValueFormat):
    """Calendar and clock fields, e.g. ``YYMMDDhhmm`` (sent mm hh DD MM YY).

    Decodes to ISO text: a date, a time ``hh:mm:ss`` or a naive date-time (meter clock).
    The weekday ``WW`` (0 = Sunday … 6 = Saturday) is computed from the date when encoding;
    decoding only range-checks it (0..6) and drops it, because meters whose weekday was never
    set are common. Fields the layout lacks are dropped when encoding (seconds of
    ``YYMMDDhhmm``) and decode as 0.
    """

    layout: str
    size: int = field(init=False, repr=False, compare=False)
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = [self.layout[i : i + 2] for i in range(0, len(self.layout), 2)]
        object.__setattr__(self, "_keys", tuple(keys))
        object.__setattr__(self, "size", len(keys))
        if (
            len(self.layout) % 2
            or not set(keys) <= _CLOCK_KEYS
            or len(set(keys)) != len(keys)
            or ("DD" in keys and not {"YY", "MM"} <= set(keys))
            or ("hh" in keys and "mm" not in keys)
            or not {"DD", "hh"} & set(keys)
        ):
            raise LocalProtocolError(f"clock layout {self.layout!r} is not supported")

    def decode(self, data: bytes) -> str:
        keys = self._keys
        if len(data) != len(keys):
            raise ValueFormatError(f"{self.layout}: expected {len(keys)} bytes, got {len(data)}")
        parts = {
            k: bcd_to_int(bytes((b,)), what=self.layout)
            for k, b in zip(keys, data[::-1], strict=True)
        }
        try:
            if "WW" in parts and parts["WW"] > 6:
                raise ValueError(f"weekday {parts['WW']}")
            has_date = "DD" in parts
            has_time = "hh" in parts
            date = dt.date(2000 + parts["YY"], parts["MM"], parts["DD"]) if has_date else None
            time = dt.time(parts["hh"], parts["mm"], parts.get("ss", 0)) if has_time else None
        except ValueError as exc:
            raise ValueFormatError(
                f"{self.layout}: {data[::-1].hex(' ').upper()} is not a valid time ({exc})"
            ) from None
        if date and time:
            return dt.datetime.combine(date, time).isoformat()
        if date:
            return date.isoformat()
        assert time is not None
        return time.isoformat()

    def encode(self, value: float | int | str) -> bytes:
        if not isinstance(value, str):
            raise LocalProtocolError(f"{self.layout}: expected ISO text, got {value!r}")
        keys = self._keys
        try:
            if "DD" in keys and "hh" in keys:
                moment = dt.datetime.fromisoformat(value)
            elif "DD" in keys:
                moment = dt.datetime.combine(dt.date.fromisoformat(value), dt.time())
            else:
                moment = dt.datetime.combine(dt.date(2000, 1, 1), dt.time.fromisoformat(value))
        except ValueError as exc:
            raise LocalProtocolError(f"{self.layout}: {exc}") from None
        if not 2000 <= moment.year <= 2099:
            raise LocalProtocolError(f"{self.layout}: year {moment.year} outside 2000-2099")
        fields = {
            "YY": moment.year - 2000,
            "MM": moment.month,
            "DD": moment.day,
            "WW": (moment.weekday() + 1) % 7,
            "hh": moment.hour,
            "mm": moment.minute,
            "ss": moment.second,
        }
        return b"".join(int_to_bcd(fields[k], 1) for k in reversed(keys))


@dataclass(frozen=True, slots=True)
class Word(ValueFormat):
    """A 16-bit word sent low byte first (status words); bits named in `bits`."""

    bits: tuple[tuple[int, str], ...] = ()
    size: int = 2
    layout: str = "XXXX"

    def decode(self, data: bytes) -> int:
        if len(data) != self.size:
            raise ValueFormatError(f"word: expected {self.size} bytes, got {len(data)}")
        return int.from_bytes(data, "little")

    def encode(self, value: float | int | str) -> bytes:
        if not isinstance(value, int) or not 0 <= value < 1 << (8 * self.size):
            raise LocalProtocolError(f"word: {value!r} is not a {8 * self.size}-bit integer")
        return value.to_bytes(self.size, "little")

    def flags(self, value: int) -> tuple[str, ...]:
        return tuple(name for bit, name in self.bits if value >> bit & 1)
