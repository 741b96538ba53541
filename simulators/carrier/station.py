"""A carrier station (STA): the module at the meter, which hands the carried DL/T 645 frames to
its meter on the meter's own RS-485 port, one after the other, and passes back what it said.

The meter is the fleet's meter, unchanged: it answers through `Bus.answer` (its behaviour,
faults and wallet; its own answer records). The station is transparent: the meter's bytes
(wake-up FEs, a damaged checksum, line garbage) go back as they came — a carrier reply with a
good outer and a bad inner checksum is real.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.dlt645 import Address, Edition, Frame, format_di
from protocols.errors import FrameError
from protocols.q13762 import split_645
from simulators.bus import Bus
from simulators.carrier.network import Node
from simulators.faults import REPLY_DELAY_S
from simulators.line import wire_time

__all__ = ["METER_BAUD", "STA_FRAME_GAP_S", "STA_METER_TIMEOUT_S", "Visit", "visit"]

#: the meter's RS-485 port behind a station
METER_BAUD = 2400
#: pause between two 645 frames at the station (HiSilicon CCO defaults: 50 ms)
STA_FRAME_GAP_S = 0.050
#: how long a station waits for its meter (HiSilicon defaults: 1800 ms)
STA_METER_TIMEOUT_S = 1.8


@dataclass
class Visit:
    """What a station brought back from its meter for one carried request."""

    reply: bytes = b""
    extra_s: float = 0.0
    """time beyond the fitted per-exchange latency (which covers one quick 645 exchange):
    every further frame's exchange, a silent meter's timeout, a slow reply"""
    dis: list[str] = field(default_factory=list)
    frames: int = 0
    answered: int = 0
    details: list[str] = field(default_factory=list)


def carried_frames(payload: bytes, edition: Edition | None) -> list[Frame | FrameError]:
    """The 645 frames (and unreadable pieces) a request carries, as the 645 decoder splits them."""
    return list(split_645(payload, edition))


def dis_of(events: list[Frame | FrameError]) -> list[str]:
    return [
        format_di(event.di, event.edition)
        for event in events
        if isinstance(event, Frame) and event.di is not None
    ]


def visit(bus: Bus, node: Node, events: list[Frame | FrameError]) -> Visit:
    """Give the meter behind `node` each carried frame in turn; collect its answers."""
    result = Visit(frames=len(events), dis=dis_of(events))
    meter = node.meter
    if meter is None:
        return result
    own = Address.parse(meter.identity.address)
    for index, event in enumerate(events):
        later = index > 0
        if isinstance(event, FrameError):
            bus.bad_bytes(event)  # the meter cannot read it: it stays silent
            result.extra_s += STA_METER_TIMEOUT_S
            result.details.append(f"frame {index + 1}: unreadable ({type(event).__name__})")
            continue
        edition_ok = meter.identity.edition is event.edition or event.control.code == 0x08
        if event.control.reply or not edition_ok or not event.address.reaches(own):
            bus.record(event, meter, "ignored", "the station's meter is not addressed by it")
            result.extra_s += STA_METER_TIMEOUT_S
            result.details.append(f"frame {index + 1}: not for this meter")
            continue
        answer = bus.answer(
            meter, event, broadcast=event.address.is_broadcast, wildcard=event.address.is_wildcard
        )
        if answer is None:
            if not event.address.is_broadcast:
                result.extra_s += STA_METER_TIMEOUT_S
            continue
        delay, raw, outcome, detail = answer
        bus.record(event, meter, outcome, detail)
        result.reply += raw
        result.answered += 1
        if detail:
            result.details.append(f"frame {index + 1}: {detail}")
        if later:
            wire = wire_time(len(event.to_bytes()) + len(raw), METER_BAUD)
            result.extra_s += wire + delay + STA_FRAME_GAP_S
        else:
            result.extra_s += max(0.0, delay - REPLY_DELAY_S[1])  # only a slow meter's excess
    return result
