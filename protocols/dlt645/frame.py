"""DL/T 645 link-layer frames (both editions), one complete frame at a time.

    [FE…]  68  A0..A5  68  C  L  DATA(+33H)  CS  16

`Frame.data` is the data field *after* the 33H removal; encoding adds it back. For a stream of
bytes as they arrive from a line use `stream.FrameDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from protocols.dlt645 import _wire
from protocols.dlt645.address import Address
from protocols.dlt645.functions import (
    Control,
    Edition,
    Function,
    di_length,
    function_for,
    infer_edition,
)
from protocols.errors import (
    AddressError,
    ChecksumError,
    FramingError,
    LocalProtocolError,
    TruncatedFrame,
)

__all__ = ["MAX_DATA_LEN", "Frame", "checksum", "decode_frame", "encode_frame"]

#: the L field is one byte; the standard caps reads at 200 and writes at 50 (checked per message)
MAX_DATA_LEN = 255
DEFAULT_WAKEUP = 4


def checksum(frame_bytes: bytes) -> int:
    """Sum mod 256 of every byte from the first 68H through the last data byte."""
    return sum(frame_bytes) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    address: Address
    control: Control
    data: bytes = b""
    """the data field with the +33H removed (DI first, as on the wire: DI0 DI1 …)"""
    edition: Edition = field(default=Edition.V2007, compare=True)

    def __post_init__(self) -> None:
        if len(self.data) > MAX_DATA_LEN:
            raise LocalProtocolError(f"data field of {len(self.data)} bytes exceeds L=255")

    @property
    def function(self) -> Function:
        return function_for(self.edition, self.control.code)

    @property
    def di(self) -> int | None:
        """The data identifier (DI3..DI0 as an int), when the function carries one.

        Abnormal replies carry an error word instead, read-address replies an address.
        """
        n = di_length(self.edition)
        if not self.function.has_di or self.control.abnormal or len(self.data) < n:
            return None
        return int.from_bytes(self.data[:n], "little")

    def to_bytes(self, wakeup: int = DEFAULT_WAKEUP) -> bytes:
        return encode_frame(self, wakeup=wakeup)


def encode_frame(frame: Frame, *, wakeup: int = DEFAULT_WAKEUP) -> bytes:
    """The frame as sent: `wakeup` FE bytes, header, scrambled data, checksum, end byte."""
    if wakeup < 0:
        raise LocalProtocolError("wake-up byte count cannot be negative")
    body = _wire.build_header(frame.address.wire, frame.control.byte, len(frame.data))
    body += frame.data.translate(_wire.SCRAMBLE)
    return b"\xfe" * wakeup + body + bytes((checksum(body), _wire.END))


def decode_frame(raw: bytes, *, edition: Edition | None = None) -> Frame:
    """Decode exactly one frame (leading FE bytes allowed, nothing after the end byte).

    `edition` forces the edition; by default it is inferred from the function code.
    Raises a `FrameError` subclass naming what is wrong.
    """
    start = 0
    while start < len(raw) and raw[start] == _wire.WAKEUP:
        start += 1
    frame_bytes = bytes(raw[start:])
    if len(frame_bytes) < _wire.MIN_FRAME:
        raise TruncatedFrame(
            f"frame of {len(frame_bytes)} bytes is shorter than the minimum 12", frame_bytes
        )
    if frame_bytes[0] != _wire.START:
        raise FramingError(f"frame starts with {frame_bytes[0]:02X}, expected 68", frame_bytes)
    if frame_bytes[7] != _wire.START:
        raise FramingError(
            f"second start byte is {frame_bytes[7]:02X}, expected 68 at offset 7", frame_bytes
        )
    length = frame_bytes[9]
    total = _wire.MIN_FRAME + length
    if len(frame_bytes) < total:
        raise TruncatedFrame(f"L={length} needs {total} bytes, got {len(frame_bytes)}", frame_bytes)
    if len(frame_bytes) > total:
        raise FramingError(
            f"{len(frame_bytes) - total} bytes after the end of a frame with L={length}",
            frame_bytes,
        )
    return parse_validated(frame_bytes, edition)


@lru_cache(maxsize=4096)
def _header(header: bytes) -> tuple[Address, Control]:
    # the replies on one bus repeat a few headers (meter, function, length): parse each once
    wire, control, _ = _wire.parse_header(header)
    return Address(wire), Control.from_byte(control)


def parse_validated(frame_bytes: bytes, edition: Edition | None) -> Frame:
    """Check end byte and checksum of a delimited frame and build the `Frame`.

    Shared by `decode_frame` and the stream decoder so both report errors identically.
    """
    length = frame_bytes[9]
    end_at = _wire.HEADER_LEN + length + 1
    if frame_bytes[end_at] != _wire.END:
        raise FramingError(
            f"end byte is {frame_bytes[end_at]:02X}, expected 16 (L={length})", frame_bytes
        )
    computed = sum(frame_bytes[: end_at - 1]) & 0xFF
    found = frame_bytes[end_at - 1]
    if found != computed:
        raise ChecksumError(found, computed, frame_bytes)
    try:
        address, control = _header(frame_bytes[: _wire.HEADER_LEN])
    except AddressError as exc:  # report the whole frame, as the other frame errors do
        raise AddressError(str(exc), frame_bytes) from None
    data = frame_bytes[_wire.HEADER_LEN : end_at - 1].translate(_wire.UNSCRAMBLE)
    if edition is None:
        edition = infer_edition(control, data)
    return Frame(address, control, data, edition)
