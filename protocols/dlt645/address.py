"""Meter communication addresses: nameplate order <-> wire order, broadcast and wildcards.

The nameplate shows 12 digits most significant first ("123456789012"); the wire carries six BCD
bytes lowest pair first (12 90 78 56 34 12). ``99…99`` is broadcast, ``AA`` bytes are wildcards:
all-AA reaches whatever meter is on the line; a shortened address gives the low bytes and fills
the high bytes with AA (缩位寻址).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from protocols.errors import AddressError, LocalProtocolError

__all__ = ["BROADCAST", "WILDCARD", "Address"]

_WIRE_LEN = 6


#: every byte an address may hold: two BCD digits, or the AAH wildcard
_VALID_BYTES = bytes(b for b in range(256) if b == 0xAA or ((b >> 4) <= 9 and (b & 0x0F) <= 9))


@dataclass(frozen=True, slots=True)
class Address:
    """A DL/T 645 address. `wire` is the 6 bytes as transmitted (A0 first)."""

    wire: bytes

    def __post_init__(self) -> None:
        if len(self.wire) != _WIRE_LEN:
            raise LocalProtocolError(f"an address is 6 bytes, got {len(self.wire)}")
        invalid = bytes(self.wire).translate(None, _VALID_BYTES)
        if invalid:
            raise AddressError(f"address byte {invalid[0]:02X} is neither BCD nor AA", self.wire)

    @classmethod
    def parse(cls, text: str) -> Address:
        """From nameplate digits: "123456789012", short "161" (zero-padded), "AAAAAAAAAAAA".

        Wildcards must come in whole bytes from the high end (``AAAA56789012``).
        """
        digits = text.strip().upper().replace(" ", "")
        if not digits or len(digits) > 2 * _WIRE_LEN:
            raise LocalProtocolError(f"address {text!r}: expected 1 to 12 digits")
        if not all(c.isdigit() or c == "A" for c in digits):
            raise LocalProtocolError(f"address {text!r}: only digits 0-9 and wildcard A allowed")
        digits = digits.rjust(2 * _WIRE_LEN, "0")
        pairs = [digits[i : i + 2] for i in range(0, 2 * _WIRE_LEN, 2)]
        for pair in pairs:
            if "A" in pair and pair != "AA":
                raise LocalProtocolError(f"address {text!r}: wildcards cover whole bytes (AA)")
        wild = [p == "AA" for p in pairs]
        if wild != sorted(wild, reverse=True):
            raise LocalProtocolError(f"address {text!r}: wildcards (AA) fill the high bytes only")
        return cls(bytes(int(p, 16) for p in reversed(pairs)))

    @classmethod
    def from_wire(cls, wire: bytes) -> Address:
        return _from_wire(bytes(wire)) if cls is Address else cls(bytes(wire))

    @property
    def digits(self) -> str:
        """Nameplate order, 12 characters; wildcard bytes show as ``AA``."""
        return self.wire[::-1].hex().upper()

    def __str__(self) -> str:
        return self.digits

    @property
    def is_broadcast(self) -> bool:
        return self.wire == BROADCAST.wire

    @property
    def is_wildcard(self) -> bool:
        """True for all-AA (reaches any single meter; required by 13H/15H)."""
        return self.wire == WILDCARD.wire

    @property
    def is_shortened(self) -> bool:
        """Some but not all high bytes are AA (缩位寻址)."""
        return 0xAA in self.wire and not self.is_wildcard

    @property
    def is_specific(self) -> bool:
        return 0xAA not in self.wire and not self.is_broadcast

    def reaches(self, meter: Address) -> bool:
        """Whether a request sent to this address is meant for the meter at `meter`.

        Broadcast and all-AA reach every meter. Otherwise bytes are compared from A0 up;
        from the first byte that differs on, every higher byte must be AA (缩位), as meters
        implement it. Whether the meter then *replies* depends on the function (never to
        broadcast).
        """
        if self.is_broadcast or self.is_wildcard:
            return True
        for i, (ours, theirs) in enumerate(zip(self.wire, meter.wire, strict=True)):
            if ours != theirs:
                return all(b == 0xAA for b in self.wire[i:])
        return True


@lru_cache(maxsize=1024)
def _from_wire(wire: bytes) -> Address:
    # a bus has few meters: decoding their replies reuses the validated, immutable address
    return Address(wire)


BROADCAST = Address(b"\x99" * _WIRE_LEN)
WILDCARD = Address(b"\xaa" * _WIRE_LEN)
