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
        ├── MeterRejection        an abnormal reply: the meter understood us and said no
        └── ModuleRejection       a carrier module (Q/GDW 1376.2) denied a request (AFN00 F2)
            ├── ModuleBusy            9: network forming / route optimisation, wait and retry
            ├── ConcurrencyExceeded   109: more frames in flight than the module allows
            ├── TooManyMeterFrames    110: more meter frames in one request than allowed
            ├── MeterInFlight         111: that meter already has a frame in flight
            ├── NodeNotFound          7, 12: the meter is not in the module's archive / network
            ├── NodeNoAnswer          0, 8, 11: the module tried, the meter did not answer
            ├── NotSupported          4, 10: the module does not implement the request
            ├── RequestRejected       1, 5: our request is malformed (a bug on our side)
            ├── RequestCorrupted      2, 3: the module received a damaged frame (line noise)
            └── DuplicateNode         6: the meter number is already in the archive
            (vendor codes outside the table raise ModuleRejection itself, code kept)
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "AddressMismatch",
    "ChecksumError",
    "ConcurrencyExceeded",
    "DuplicateNode",
    "FrameError",
    "FramingError",
    "LocalProtocolError",
    "MeterInFlight",
    "MeterRejection",
    "ModuleBusy",
    "ModuleRejection",
    "NodeNoAnswer",
    "NodeNotFound",
    "NotSupported",
    "PayloadError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestCorrupted",
    "RequestRejected",
    "TooManyMeterFrames",
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


class ModuleRejection(RemoteProtocolError):
    """A Q/GDW 1376.2 local communication module (a carrier CCO) denied a request: AFN00 F2.

    `code` is the deny code as sent (0..255, vendor codes included), `meaning` its text from the
    code table, `kind` a stable snake_case name per class (metrics, logs, failure reasons).
    The subclass says what to do; `retryable` says whether sending the same request again
    (after the wait the subclass implies) can succeed. A code outside the table is raised as
    `ModuleRejection` itself, kind ``"vendor"``, not retryable: nobody knows what it means, so
    no retry loop should spin on it.
    """

    kind: str = "vendor"

    def __init__(self, code: int, meaning: str) -> None:
        super().__init__(f"module denied the request: code {code} ({meaning})")
        self.code = code
        self.meaning = meaning


class ModuleBusy(ModuleRejection):
    """9: the main node is busy (network forming, route optimisation): back off and retry.
    An HPLC network forms in seconds to minutes after power-up or an archive change."""

    kind = "module_busy"
    retryable = True


class ConcurrencyExceeded(ModuleRejection):
    """109 (6DH): more concurrent frames than the module accepts. Shrink the window of frames
    in flight; the request itself is fine and can be sent again when a slot is free."""

    kind = "concurrency_exceeded"
    retryable = True


class TooManyMeterFrames(ModuleRejection):
    """110 (6EH): more meter frames in one 1376.2 frame than the module accepts. Sending the
    same request again cannot pass: split it."""

    kind = "too_many_meter_frames"


class MeterInFlight(ModuleRejection):
    """111 (6FH): a second frame to a meter whose first has not been answered (a bug on our
    side: one frame per meter at a time). Retry after the outstanding reply."""

    kind = "meter_in_flight"
    retryable = True


class NodeNotFound(ModuleRejection):
    """7 (meter number does not exist) or 12 (slave node not in the network): the module does
    not know the meter. A plain retry does not help; re-sync the module's archive first."""

    kind = "node_not_found"


class NodeNoAnswer(ModuleRejection):
    """0 (communication timeout), 8 (meter application layer no answer), 11 (slave node does not
    answer): the module is fine and tried, the meter behind it did not answer. A retry may pass
    (carrier links come and go)."""

    kind = "node_no_answer"
    retryable = True


class NotSupported(ModuleRejection):
    """4 (information class does not exist) or 10 (main node does not support the command)."""

    kind = "not_supported"


class RequestRejected(ModuleRejection):
    """1 (invalid data unit) or 5 (format error): the module parsed our frame and found its data
    unit wrong. Our bug or a module that reads the layout differently; a retry cannot pass."""

    kind = "request_rejected"


class RequestCorrupted(ModuleRejection):
    """2 (length error) or 3 (checksum error): the frame the module received was damaged on the
    line. Sending it again usually passes."""

    kind = "request_corrupted"
    retryable = True


class DuplicateNode(ModuleRejection):
    """6: the meter number is already in the module's archive (adding it again)."""

    kind = "duplicate_node"
