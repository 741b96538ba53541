"""Node addresses of the 1376.2 address field and data units (A1, A2, A3, archive entries).

Six bytes sent low byte first, exactly like a DL/T 645 meter address, and printed the same way
(12 characters, most significant first: wire ``04 33 00 00 00 00`` is ``000000003304``). Unlike a
645 address, any byte value is accepted: real main-node addresses such as ``BBBBBBBBBBBB`` or
``BEBEBEBEBE01`` (real CCO captures) are not BCD, and a decoder must not drop such frames.
`NodeAddress.of()` takes a 645 `Address`, and `.meter` gives one back (raising `AddressError`
when the bytes are not a meter address).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

from protocols.dlt645.address import Address
from protocols.errors import LocalProtocolError

__all__ = ["NodeAddress"]

_WIRE_LEN = 6
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A 6-byte node address. `wire` is the bytes as transmitted (low byte first)."""

    wire: bytes

    def __post_init__(self) -> None:
        if len(self.wire) != _WIRE_LEN:
            raise LocalProtocolError(f"a node address is 6 bytes, got {len(self.wire)}")

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """From the printed form: 12 hex digits (``BEBEBEBEBE01``), or anything
        `protocols.dlt645.Address.parse` takes (a short meter number ``3304`` is zero-padded)."""
        digits = text.strip().replace(" ", "")
        if len(digits) == 2 * _WIRE_LEN and _HEX.issuperset(digits):
            return cls(bytes.fromhex(digits)[::-1])
        return cls(Address.parse(digits).wire)

    @classmethod
    def of(cls, value: NodeAddress | Address | str) -> NodeAddress:
        """A node address from a 645 meter `Address`, a `NodeAddress` or printed text."""
        if isinstance(value, NodeAddress):
            return value
        if isinstance(value, Address):
            return _from_wire(value.wire)
        return cls.parse(value)

    @classmethod
    def from_wire(cls, wire: bytes) -> NodeAddress:
        return _from_wire(bytes(wire))

    @property
    def digits(self) -> str:
        """Printed like a DL/T 645 meter address: the wire bytes reversed, upper-case hex."""
        return self.wire[::-1].hex().upper()

    @property
    def meter(self) -> Address:
        """The DL/T 645 meter address with these bytes; `AddressError` if they are not BCD/AA."""
        return Address.from_wire(self.wire)

    def __str__(self) -> str:
        return self.digits


@lru_cache(maxsize=4096)
def _from_wire(wire: bytes) -> NodeAddress:
    # a module's network has a bounded set of nodes: reuse the immutable objects
    return NodeAddress(wire)
