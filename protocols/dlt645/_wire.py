"""Private `construct` layouts of DL/T 645 frames and payload fields.

Only this module knows construct; the public API is the dataclasses in `frame` and `messages`.
The fixed frame header is a compiled construct Struct, parsed and built once per distinct header
(memoised here and in `frame`: a bus repeats a few headers). The checksum and the +33H
scrambling run on `bytes` (sum / translate), which keeps decoding of a read reply in the
microseconds.
"""

from __future__ import annotations

from functools import lru_cache

import construct as cs

HEADER_LEN = 10  # 68 A0..A5 68 C L
TRAILER_LEN = 2  # CS 16
MIN_FRAME = HEADER_LEN + TRAILER_LEN
START = 0x68
END = 0x16
WAKEUP = 0xFE

_header_spec = cs.Struct(
    "start" / cs.Const(b"\x68"),
    "address" / cs.Bytes(6),
    "start2" / cs.Const(b"\x68"),
    "control" / cs.Int8ub,
    "length" / cs.Int8ub,
)
HEADER = _header_spec.compile()

SCRAMBLE = bytes((b + 0x33) & 0xFF for b in range(256))
UNSCRAMBLE = bytes((b - 0x33) & 0xFF for b in range(256))


def parse_header(header: bytes) -> tuple[bytes, int, int]:
    """(address wire bytes, control byte, length) of the 10 header bytes."""
    parsed = HEADER.parse(header)
    return bytes(parsed.address), parsed.control, parsed.length


@lru_cache(maxsize=4096)
def build_header(address: bytes, control: int, length: int) -> bytes:
    # a bus repeats the same few headers (meter, function, length): build each once
    return bytes(HEADER.build({"address": address, "control": control, "length": length}))


# --- payload field types shared by the message layouts -------------------------------------

#: operator code and MACs, kept as raw bytes
OPERATOR = cs.Bytes(4)
MAC = cs.Bytes(4)
#: amounts and counts inside 03H security payloads: binary, low byte first, amounts in fen
U32 = cs.Int32ul
