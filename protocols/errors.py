"""The one error tree for every wire protocol meterlink speaks.

It says whose fault a failure is and whether trying again can help, so retry and
success-rate logic branch on types, never on message strings:

    ProtocolError
    ├── LocalProtocolError        we were asked to build something the standard forbids
    └── RemoteProtocolError       the peer sent bytes or answers we cannot accept
        ├── FrameError            bad bytes on the line (noise, truncation): retry helps
        │   ├── ChecksumError
        │   ├── FramingError      missing 68H / 16H, impossible length
        │   ├── TruncatedFrame    the line went quiet (or the buffer ended) mid-frame
        │   └── AddressError      address bytes that are neither BCD nor AAH
        ├── PayloadError          a well-formed frame whose data field does not fit its function
        ├── ValueFormatError      a value that is not valid BCD / not a date (a meter that lies)
        ├── AddressMismatch       a valid reply, but from another meter than the one asked
        └── MeterRejection        an abnormal reply: the meter understood us and said no
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "AddressMismatch",
    "ChecksumError",
    "FrameError",
    "FramingError",
    "LocalProtocolError",
    "MeterRejection",
    "PayloadError",
    "ProtocolError",
    "RemoteProtocolError",
    "TruncatedFrame",
    "ValueFormatError",
]


class ProtocolError(Exception):
    """Base of every codec error. `retryable` says whether sending again may help."""

    retryable: bool = False


class LocalProtocolError(ProtocolError, ValueError):
    """We tried to build a request the standard does not allow (our bug or bad user input)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot accept."""


class FrameError(RemoteProtocolError):
    """Bytes on the line do not form a valid frame. Line noise: a retry usually helps.

    `raw` holds the offending bytes (as far as they could be delimited) for traces.
    """

    retryable = True

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = bytes(raw)


class ChecksumError(FrameError):
    def __init__(self, found: int, computed: int, raw: bytes = b"") -> None:
        super().__init__(f"checksum found {found:02X}, computed {computed:02X}", raw)
        self.found = found
        self.computed = computed


class FramingError(FrameError):
    """A start, second start or end byte is missing, or the length is impossible."""


class TruncatedFrame(FrameError):
    """The frame ended before the length field said it would."""


class AddressError(FrameError):
    """The address field holds bytes that are neither BCD digits nor AAH wildcards."""


class PayloadError(RemoteProtocolError):
    """A valid frame whose data field does not match the layout of its function."""


class ValueFormatError(RemoteProtocolError):
    """A value field that is not what its data identifier promises (e.g. non-BCD digits)."""


class AddressMismatch(RemoteProtocolError):
    """A well-formed reply from a different address than the request's (a late reply, a
    duplicated address, or a meter answering a wildcard it should not have)."""

    retryable = True


class MeterRejection(RemoteProtocolError):
    """An abnormal reply: the meter refused the request and said why.

    `flags` is the decoded error word (an IntFlag); `code` its integer value. Whether a retry can
    help depends on the flags (see `retryable`), e.g. "no such data" never will.
    """

    def __init__(self, message: str, code: int, flag_names: tuple[str, ...]) -> None:
        super().__init__(message)
        self.code = code
        self.flag_names = flag_names
