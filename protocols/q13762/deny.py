"""AFN00 F2 deny codes: what each means and what the agent should do about it.

`DENY_CODES[code]` gives the meaning and the `ModuleRejection` subclass the code is raised as
(`deny_error(code)`); the class says what to do and `retryable` whether the same request can
pass later. Codes 0–8 are in the 2009 edition, 9–12 in the 2013/2019 texts, 109–111 come with
the HPLC concurrent-reading extension. 13H, 1CH, 1DH and 21H were seen from real CCOs but are in
no table (vendor codes, meaning UNCONFIRMED); every other code is raised as `ModuleRejection`
itself with its number kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import (
    ConcurrencyExceeded,
    DuplicateNode,
    MeterInFlight,
    ModuleBusy,
    ModuleRejection,
    NodeNoAnswer,
    NodeNotFound,
    NotSupported,
    RequestCorrupted,
    RequestRejected,
    TooManyMeterFrames,
)

__all__ = ["DENY_CODES", "DenyCode", "deny_error", "deny_info"]


@dataclass(frozen=True, slots=True)
class DenyCode:
    code: int
    name: str
    """stable snake_case name of the code itself (finer than the error class's `kind`)"""
    meaning: str
    error: type[ModuleRejection]

    @property
    def kind(self) -> str:
        return self.error.kind

    @property
    def retryable(self) -> bool:
        return self.error.retryable


def _table(rows: list[tuple[int, str, str, type[ModuleRejection]]]) -> dict[int, DenyCode]:
    return {code: DenyCode(code, name, meaning, error) for code, name, meaning, error in rows}


DENY_CODES: dict[int, DenyCode] = _table(
    [
        (0, "timeout", "communication timeout", NodeNoAnswer),
        (1, "invalid_data_unit", "invalid data unit", RequestRejected),
        (2, "length_error", "length error", RequestCorrupted),
        (3, "checksum_error", "checksum error", RequestCorrupted),
        (4, "no_such_information_class", "information class does not exist", NotSupported),
        (5, "format_error", "format error", RequestRejected),
        (6, "meter_duplicated", "meter number duplicated", DuplicateNode),
        (7, "meter_not_found", "meter number does not exist", NodeNotFound),
        (8, "meter_no_answer", "meter application layer no answer", NodeNoAnswer),
        (
            9,
            "main_node_busy",
            "main node busy (network forming or route optimisation), reading refused",
            ModuleBusy,
        ),
        (10, "not_supported", "main node does not support this command", NotSupported),
        (11, "slave_no_answer", "slave node does not answer", NodeNoAnswer),
        (12, "slave_not_in_network", "slave node not in the network", NodeNotFound),
        (
            109,
            "concurrency_exceeded",
            "more concurrent frames than the main node allows",
            ConcurrencyExceeded,
        ),
        (
            110,
            "too_many_meter_frames",
            "more meter frames in one 1376.2 frame than allowed",
            TooManyMeterFrames,
        ),
        (
            111,
            "meter_in_flight",
            "that meter is already being read (a frame to it is outstanding)",
            MeterInFlight,
        ),
        (0x13, "vendor_13h", "vendor code 13H (seen after F0F29/05F16/05F1)", ModuleRejection),
        (0x1C, "vendor_1ch", "vendor code 1CH (seen after 10F2)", ModuleRejection),
        (0x1D, "vendor_1dh", "vendor code 1DH (seen after 10F21/03F16)", ModuleRejection),
        (0x21, "vendor_21h", "vendor code 21H (seen after 11F2)", ModuleRejection),
    ]
)


def deny_info(code: int) -> DenyCode:
    """The table row of a code; codes outside the table get a generic vendor row."""
    known = DENY_CODES.get(code)
    if known is not None:
        return known
    return DenyCode(
        code, f"vendor_{code:02x}h", f"code {code} ({code:02X}H) not in any table", ModuleRejection
    )


def deny_error(code: int) -> ModuleRejection:
    """The typed error for a deny code (raise it, or branch on its class / `retryable`)."""
    row = deny_info(code)
    return row.error(code, row.meaning)
