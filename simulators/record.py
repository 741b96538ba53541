"""The answer record: per request and meter, what the simulator did (answered, stayed silent,
corrupted …), so the central side can compute coverage independently of the agent's report."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

__all__ = ["OUTCOMES", "AnswerRecord", "Recorder"]

#: every outcome a record can carry
OUTCOMES = (
    "answered",  # a normal reply went out intact
    "abnormal",  # an abnormal reply (error word) went out intact
    "corrupted",  # a reply went out with a damaged byte (checksum error at the master)
    "slow",  # a reply went out after the 500 ms window
    "collided",  # several meters answered at once; the line carried garbage
    "dead",  # the meter is dead
    "lost",  # the meter missed this attempt (intermittent)
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


class Recorder:
    """Keeps the last `keep` records in memory and, optionally, every record as JSONL."""

    def __init__(self, path: Path | None = None, *, keep: int = 200_000) -> None:
        self._records: deque[AnswerRecord] = deque(maxlen=keep)
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def add(self, record: AnswerRecord) -> None:
        self._records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")
            self._file.flush()

    @property
    def records(self) -> list[AnswerRecord]:
        return list(self._records)

    def __iter__(self) -> Iterator[AnswerRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
