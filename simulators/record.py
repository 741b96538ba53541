"""The simulator's own records, kept independently of what agent and centre believe:

* the answer record: per request and meter, what the simulator did (answered, stayed silent,
  corrupted …), so the central side can compute coverage independently of the agent's report;
  a carrier bus adds one `CarrierRecord` per 1376.2 exchange (the CCO's side: SEQ, AFN/Fn, the
  drawn latency, the outcome the concentrator saw), while the meters behind the CCO still write
  their `AnswerRecord`s for every 645 frame they were given;
* the credit log: every credit a meter's wallet booked (03H top-up or account opening, or an
  out-of-band card purchase), so a test can assert that no order was credited twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "CARRIER_OUTCOMES",
    "CREDIT_SOURCES",
    "OUTCOMES",
    "TARIFF_OUTCOMES",
    "AnswerRecord",
    "CarrierRecord",
    "CreditLog",
    "CreditRecord",
    "Record",
    "Recorder",
    "TariffTruth",
]

#: every outcome a record can carry
OUTCOMES = (
    "answered",  # a normal reply went out intact
    "abnormal",  # an abnormal reply (error word) went out intact
    "corrupted",  # a reply went out with a damaged byte (checksum error at the master)
    "slow",  # a reply went out after the 500 ms window
    "collided",  # several meters answered at once; the line carried garbage
    "dead",  # the meter is dead
    "lost",  # the meter missed this attempt (intermittent, or an injected request drop)
    "reply_lost",  # the meter acted on the request, its reply was dropped (injected fault)
    "noise",  # a noise burst destroyed the request
    "silent_broadcast",  # broadcast: the meter acted (or refused) without a reply
    "ignored",  # the meter heard the frame but the function does not answer it
    "no_meter",  # no meter on the bus matched the address
    "bad_frame",  # the line carried bytes that are not a valid frame
)


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    wall_time: str
    """ISO time of the simulation's world clock when the request arrived"""
    bus: str
    meter: str | None
    """archive meter id (nameplate address for DL/T 645, ``<bus>:<unit>`` for Modbus)"""
    function: str
    di: str | None
    outcome: str
    meter_time: str | None
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


#: every outcome a carrier (1376.2) record can carry
CARRIER_OUTCOMES = (
    # the concentrator's requests (dir "down")
    "answered",  # the reply carries the meter's 645 answer (or, for a command, its data / 00F1)
    "no_answer",  # a read answered with length 0: the meter was silent, or the module timed out
    "route_failure",  # the route failed: deny 11 (`deny` = 11) or a length-0 reply (`deny` null)
    "denied",  # refused with 00F2, code in `deny` (109, 110, 111, 9, 12, 7, 2, 3, 4, 5 …)
    "reset",  # accepted, then the module reset before answering: no reply ever came
    "ignored",  # no reply on purpose (rebooting, an addressed AFN10/11, an answer nobody awaits)
    "bad_frame",  # bytes that looked like a frame but could not be answered (not even a deny)
    # the module's own frames (dir "up"); AFN06 reports also say `confirmed` true / false
    "sent",  # a report: AFN03 F10 after a reset, AFN06 F3 / F5
    "read",  # AFN14 F1 answered 02: read this frame (the read itself is the 06F2 record)
    "done",  # AFN14 F1 answered 01: the node is finished
    "failed",  # AFN14 F1 answered 00: reading the node failed
    "unanswered",  # AFN14 F1/F2 never answered: asked `attempts` times, then skipped
)


@dataclass(frozen=True, slots=True)
class CarrierRecord:
    """One 1376.2 exchange of a CCO (see docs/simulator.md, "Carrier record")."""

    wall_time: str
    """ISO time of the world clock when the request arrived"""
    bus: str
    dir: str
    """"down": a request of the concentrator; "up": a frame the module started"""
    seq: int | None
    afn: str
    """two upper-case hex digits, e.g. "F1" """
    fn: int
    outcome: str
    meter: str | None = None
    """archive meter id of the node (None: no node, or a stale node without a meter)"""
    node: str | None = None
    """the node address (A3 of a read), 12 digits"""
    deny: int | None = None
    """the AFN00 F2 code sent, if any"""
    dis: list[str] = field(default_factory=list)
    """the DIs of the 645 frames carried (hex), in order"""
    frames: int = 0
    """645 frames carried by the request"""
    latency_s: float | None = None
    """the drawn latency (unscaled seconds, the field's): request end → reply"""
    applied_s: float | None = None
    """what the module waited (latency × time scale, seconds)"""
    time_scale: float = 1.0
    t_request: float | None = None
    """loop seconds since the module powered up when the request had arrived"""
    t_reply: float | None = None
    """… when the reply (or the report) was written"""
    in_flight: int | None = None
    """exchanges with nodes in flight once this one was accepted (reads only)"""
    hops: int | None = None
    quality: int | None = None
    attempts: int | None = None
    """module frames: how many times it was sent"""
    confirmed: bool | None = None
    """AFN06 reports: whether the concentrator confirmed it (00F1 with its SEQ)"""
    request_bytes: int = 0
    reply_bytes: int = 0
    detail: str = ""
    layer: str = "1376.2"

    def as_json(self) -> dict[str, object]:
        return asdict(self)


Record = AnswerRecord | CarrierRecord


#: every outcome code of the tariff-execution check (topup-tariff.md §C.4, a closed set)
TARIFF_OUTCOMES = (
    "OK",
    "CLOCK_DRIFT",
    "PARAM_MISMATCH",
    "SWITCH_PENDING",
    "SWITCH_MISSED",
    "ENERGY_MISALLOCATED",
    "PRICE_MISMATCH",
    "PROGRAMMED_OUTSIDE_PLAN",
    "UNSUPPORTED_DI",
    "NOT_READ",
)


@dataclass(frozen=True, slots=True)
class TariffTruth:
    """What the simulator did to one meter's tariff set-up, and the verdict the central check
    must reach for it on a day (`simulators.fleet.Fleet.tariff_truth`)."""

    meter: str
    plan: str
    """the plan the archive says the meter follows"""
    defect: str | None
    """None: programmed as planned; else one of `simulators.tariff.DEFECTS`, or "dead" (never
    answers) or "old_firmware" (denies tariff items)"""
    detail: str
    since: str | None
    """meter time (ISO) from which the defect shows; None: from the start"""
    outcome: str
    """the expected outcome code on the day the truth was taken for"""
    day: str
    """that day (ISO date, meter calendar)"""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class Recorder:
    """Keeps the last `keep` records in memory and, optionally, every record as JSONL."""

    def __init__(self, path: Path | None = None, *, keep: int = 200_000) -> None:
        self._records: deque[Record] = deque(maxlen=keep)
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def add(self, record: Record) -> None:
        self._records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")
            self._file.flush()

    @property
    def records(self) -> list[Record]:
        return list(self._records)

    @property
    def carrier(self) -> list[CarrierRecord]:
        """Only the 1376.2 records."""
        return [r for r in self._records if isinstance(r, CarrierRecord)]

    @property
    def meters(self) -> list[AnswerRecord]:
        """Only the meters' own records (645 / Modbus)."""
        return [r for r in self._records if isinstance(r, AnswerRecord)]

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


#: where a credit came from
CREDIT_SOURCES = (
    "remote",  # 03H 07 01 02 FF 充值
    "open",  # 03H 07 01 01 FF 开户 (the first purchase)
    "card",  # out of band: an IC card, a handheld terminal, another system (补卡 …)
)


@dataclass(frozen=True, slots=True)
class CreditRecord:
    """One credit booked by a meter's wallet."""

    meter: str
    purchase_count: int
    """the meter's purchase count after this credit"""
    amount_fen: int
    source: str
    meter_time: dt.datetime
    world_time: dt.datetime
    remaining_after_fen: int

    def as_json(self) -> dict[str, object]:
        return {
            "meter": self.meter,
            "purchase_count": self.purchase_count,
            "amount_fen": self.amount_fen,
            "source": self.source,
            "meter_time": self.meter_time.replace(microsecond=0).isoformat(),
            "world_time": self.world_time.replace(microsecond=0).isoformat(),
            "remaining_after_fen": self.remaining_after_fen,
        }


class CreditLog:
    """Every credit of a fleet in the order booked; optionally also appended to a JSONL file
    (`meterlink sim serve --credits FILE`), flushed line by line so another process can read it.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._records: list[CreditRecord] = []
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def add(self, record: CreditRecord) -> None:
        self._records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")
            self._file.flush()

    def records(self, meter: str | None = None) -> list[CreditRecord]:
        return [r for r in self._records if meter is None or r.meter == meter]

    def repeated_counts(self) -> list[tuple[str, int]]:
        """(meter, purchase count) booked more than once — what a meter's purchase-count rule
        makes impossible; the invariant check of the chaos tests (empty = no double credit)."""
        seen: set[tuple[str, int]] = set()
        twice: list[tuple[str, int]] = []
        for r in self._records:
            key = (r.meter, r.purchase_count)
            if key in seen:
                twice.append(key)
            seen.add(key)
        return twice

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
