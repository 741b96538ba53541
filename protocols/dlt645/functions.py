"""Control byte and the function tables of both editions.

Edition differences live in these tables, not in `if` chains elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import LocalProtocolError

__all__ = [
    "FUNCTIONS",
    "Control",
    "Edition",
    "Function",
    "format_di",
    "function_for",
]


class Edition(StrEnum):
    V2007 = "2007"
    V1997 = "1997"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Function:
    edition: Edition
    code: int
    name: str
    """stable snake_case name (JSON output, logs, metrics)"""
    has_di: bool
    """the request and normal reply start with a data identifier"""
    replies: bool = True
    """a unicast request gets an answer (13H/15H only to all-AA; 08H never to broadcast)"""


def _table(edition: Edition, rows: list[tuple[int, str, bool]]) -> dict[int, Function]:
    return {code: Function(edition, code, name, has_di) for code, name, has_di in rows}


FUNCTIONS: dict[Edition, dict[int, Function]] = {
    Edition.V2007: _table(
        Edition.V2007,
        [
            (0x03, "security", True),
            (0x08, "broadcast_time", False),
            (0x11, "read", True),
            (0x12, "read_follow_up", True),
            (0x13, "read_address", False),
            (0x14, "write", True),
            (0x15, "write_address", False),
            (0x16, "freeze", False),
            (0x17, "change_baud", False),
            (0x18, "change_password", True),
            (0x19, "clear_demand", False),
            (0x1A, "clear_meter", False),
            (0x1B, "clear_events", False),
            (0x1C, "remote_control", False),
            (0x1D, "terminal_output", False),
        ],
    ),
    Edition.V1997: _table(
        Edition.V1997,
        [
            (0x01, "read", True),
            (0x02, "read_follow_up", True),
            (0x03, "reread", False),
            (0x04, "write", True),
            (0x08, "broadcast_time", False),
            (0x0A, "write_address", False),
            (0x0C, "change_baud", False),
            (0x0F, "change_password", False),
            (0x10, "clear_demand", False),
        ],
    ),
}

_DI_LEN = {Edition.V2007: 4, Edition.V1997: 2}


def di_length(edition: Edition) -> int:
    return _DI_LEN[edition]


def format_di(di: int, edition: Edition) -> str:
    """DI3..DI0 as 8 hex digits (2007), DI1 DI0 as 4 (1997)."""
    return f"{di:0{2 * di_length(edition)}X}"


def function_for(edition: Edition, code: int) -> Function:
    """The function of a code; unknown codes get a stable name ``unknown_XX``."""
    try:
        return FUNCTIONS[edition][code]
    except KeyError:
        return Function(edition, code, f"unknown_{code:02x}", has_di=False)


@dataclass(frozen=True, slots=True)
class Control:
    """The control byte C: D7 direction, D6 abnormal, D5 follow-up, D4..D0 function code."""

    code: int
    reply: bool = False
    abnormal: bool = False
    follow_up: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0x1F:
            raise LocalProtocolError(f"function code {self.code:#x} does not fit 5 bits")

    @classmethod
    def from_byte(cls, c: int) -> Control:
        return _CONTROLS[c]

    @property
    def byte(self) -> int:
        return self.code | (self.reply << 7) | (self.abnormal << 6) | (self.follow_up << 5)

    @property
    def direction(self) -> str:
        return "reply" if self.reply else "request"


_CONTROLS = tuple(
    Control(c & 0x1F, bool(c & 0x80), bool(c & 0x40), bool(c & 0x20)) for c in range(256)
)


def infer_edition(control: Control, data: bytes) -> Edition:
    """Guess the edition of a frame from its function code and data.

    Codes 11H-1DH exist only in 2007, 01/02/04/0A/0C/0F/10H only in 1997; 08H has the same
    layout in both (2007 is reported). 03H is 2007 security or 1997 re-read: a request with
    data is security (a re-read request has none); a normal reply is security when it starts
    with a DI ``07xxxxFF`` (every 03H DI in use); an abnormal reply is security when it holds
    the 2-byte SERR word (1997 abnormal replies carry one ERR byte). Pass the edition
    explicitly (`decode_frame(..., edition=)`, `FrameDecoder(edition=)`) when it is known.
    """
    code = control.code
    if code >= 0x11:
        return Edition.V2007
    if code == 0x03:
        if control.abnormal:
            return Edition.V2007 if len(data) == 2 else Edition.V1997
        if not control.reply:
            return Edition.V2007 if data else Edition.V1997
        if len(data) >= 4 and data[0] == 0xFF and data[3] == 0x07:
            return Edition.V2007
        return Edition.V1997
    if code in FUNCTIONS[Edition.V1997] and code != 0x08:
        return Edition.V1997
    return Edition.V2007
