"""A multi-drop DL/T 645 line: the meters on it, the faults of line and meters, collisions.

`Bus.exchange(frame)` is what happens on the wire after a master sent `frame`: every meter
the address reaches decides what to say (`behaviour.respond`), faults are drawn from seeded
generators, replies that overlap collide (an RS-485 line is wired-AND: overlapping bytes mix),
and each meter's fate is written to the answer record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from protocols.dlt645 import Address, Frame, format_di
from protocols.errors import FrameError
from simulators.behaviour import abnormal_instead, respond, target_of
from simulators.clock import WorldClock
from simulators.faults import REPLY_DELAY_S, SLOW_DELAY_S, BusFaults, FaultBook, rng_for
from simulators.meter import Meter
from simulators.record import AnswerRecord, Recorder

if TYPE_CHECKING:
    from simulators.carrier.config import CarrierConfig
    from simulators.carrier.network import Network

__all__ = ["Bus", "Transmission"]


@dataclass(frozen=True, slots=True)
class Transmission:
    """Bytes a meter puts on the line `delay` seconds after the request's last byte."""

    delay: float
    data: bytes


@dataclass
class Bus:
    name: str
    world: WorldClock
    meters: list[Meter]
    seed: int | str = 0
    district: str = ""
    protocol: str = "dlt645"
    """"dlt645", "modbus" (a Modbus line is served by pymodbus, see simulators.modbus) or
    "carrier" (a CCO and its network, see simulators.carrier)"""
    baud: int = 2400
    faults: BusFaults = field(default_factory=BusFaults)
    recorder: Recorder = field(default_factory=Recorder)
    injected: FaultBook = field(default_factory=FaultBook)
    """the fleet's injected faults (chaos tests)"""
    carrier: CarrierConfig | None = None
    """a carrier bus: its CCO"""
    network: Network | None = None
    """a carrier bus: the nodes behind the CCO (drawn with the fleet)"""
    _rng: random.Random = field(init=False)
    _meter_rngs: dict[int, random.Random] = field(init=False, default_factory=dict)
    _addresses: list[Address] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = rng_for(self.seed, "bus", self.name)
        self.reindex()

    def reindex(self) -> None:
        """Call after changing the meter list or a meter's address."""
        self._addresses = [Address.parse(m.identity.address) for m in self.meters]
        self._meter_rngs = {
            id(m): rng_for(self.seed, "meter", self.name, i, m.identity.address)
            for i, m in enumerate(self.meters)
        }

    def rng_for(self, meter: Meter) -> random.Random:
        """The seeded generator of one meter's faults on this bus."""
        return self._meter_rngs[id(meter)]

    def meter(self, address: str) -> Meter:
        for m in self.meters:
            if m.identity.address == address:
                return m
        raise KeyError(f"no meter {address} on bus {self.name}")

    def _record(
        self, frame: Frame | None, meter: Meter | None, outcome: str, detail: str = ""
    ) -> None:
        di = None
        function = "garbage"
        if frame is not None:
            function = frame.function.name
            raw_di = frame.di
            if raw_di is not None:
                di = format_di(raw_di, frame.edition)
        self.recorder.add(
            AnswerRecord(
                wall_time=self.world.now().replace(microsecond=0).isoformat(),
                bus=self.name,
                meter=meter.identity.meter_id if meter else None,
                function=function,
                di=di,
                outcome=outcome,
                meter_time=meter.now().replace(microsecond=0).isoformat() if meter else None,
                detail=detail,
            )
        )

    def bad_bytes(self, error: FrameError) -> None:
        """The line carried bytes that are no frame: nobody answers; it goes on the record."""
        self._record(None, None, "bad_frame", f"{type(error).__name__}: {error}")

    def answer(
        self,
        meter: Meter,
        frame: Frame,
        *,
        broadcast: bool = False,
        wildcard: bool = False,
        hit: bool = False,
        request_garbled: bool = False,
    ) -> tuple[float, bytes, str, str] | None:
        """What one meter the frame reached puts on its line — (delay, bytes, outcome, detail)
        — with its faults drawn; None when it stays silent (that outcome is recorded here, a
        reply's outcome is recorded by the caller). `hit` / `request_garbled`: a noise burst
        on the line during this exchange. A carrier station asks its meter through this."""
        rng = self._meter_rngs[id(meter)]
        faults = meter.faults
        if faults.dead:
            self._record(frame, meter, "dead")
            return None
        if request_garbled:
            self._record(frame, meter, "noise", "a noise burst garbled the request")
            return None
        if rng.random() < faults.loss or self._rng.random() < self.faults.loss:
            self._record(frame, meter, "lost", "the meter missed this attempt")
            return None
        rule = (
            self.injected.take(meter.identity.meter_id, target_of(frame))
            if self.injected.rules and not broadcast
            else None
        )
        action = rule.action if rule is not None else None
        if rule is not None and action == "drop_request":
            self._record(frame, meter, "lost", f"injected fault #{rule.id}: request dropped")
            return None
        reply = respond(
            meter,
            frame,
            broadcast=broadcast,
            wildcard=wildcard,
            late_s=rule.late_s if rule is not None and action == "late" else 0.0,
            relay_moves=action != "relay_stuck",
        )
        if rule is not None:
            what = f"injected fault #{rule.id} ({action})"
            if action == "drop_reply":
                done = reply.detail or reply.outcome
                self._record(frame, meter, "reply_lost", f"{what}: {done}; reply dropped")
                return None
            if action == "error_after" and reply.frames and reply.outcome == "answered":
                reply = abnormal_instead(
                    meter, frame, rule.serr, rule.err, f"{what}: {reply.detail or 'acted'}"
                )
            elif action == "late":
                reply = replace(reply, detail=f"{what} +{rule.late_s:g} s: {reply.detail}")
        if not reply.frames:
            self._record(frame, meter, reply.outcome, reply.detail)
            return None
        wakeup = rng.randint(*faults.wakeup)
        raw = b"".join(f.to_bytes(wakeup=wakeup) for f in reply.frames)
        outcome, detail = reply.outcome, reply.detail
        delay = rng.uniform(*REPLY_DELAY_S)
        if rng.random() < faults.slow:
            delay = rng.uniform(*SLOW_DELAY_S)
            outcome, detail = "slow", f"answered after {delay * 1000:.0f} ms"
        if (
            (hit and not request_garbled)
            or rng.random() < faults.corrupt
            or (self._rng.random() < self.faults.corrupt)
        ):
            raw = _flip_byte(raw, wakeup, rng)
            outcome, detail = "corrupted", "one reply byte damaged"
        if rng.random() < faults.garbage:
            raw = _garbage(rng, 1, 6) + raw + _garbage(rng, 1, 3)
            detail = (detail + "; " if detail else "") + "line garbage around the reply"
        return delay, raw, outcome, detail

    def record(
        self, frame: Frame | None, meter: Meter | None, outcome: str, detail: str = ""
    ) -> None:
        """Write one meter record (what a caller of `answer` does for a reply)."""
        self._record(frame, meter, outcome, detail)

    def exchange(self, frame: Frame) -> list[Transmission]:
        """Everything the meters send back after `frame` (an empty list is silence)."""
        if frame.control.reply:
            self._record(frame, None, "ignored", "a reply on the line: meters do not answer it")
            return []
        address = frame.address
        broadcast, wildcard = address.is_broadcast, address.is_wildcard
        targets = [
            m
            for m, a in zip(self.meters, self._addresses, strict=True)
            if m.identity.edition is not None
            and (m.identity.edition is frame.edition or frame.control.code == 0x08)
            and address.reaches(a)
        ]
        if not targets:
            self._record(frame, None, "no_meter", f"no meter answers to {address.digits}")
            return []
        noise = self.faults.noise_rate(self.world.now().hour)
        hit = self._rng.random() < noise
        request_garbled = hit and self._rng.random() < 0.5
        replies: list[tuple[Meter, float, bytes, str, str]] = []
        for meter in targets:
            answer = self.answer(
                meter,
                frame,
                broadcast=broadcast,
                wildcard=wildcard,
                hit=hit,
                request_garbled=request_garbled,
            )
            if answer is not None:
                replies.append((meter, *answer))
        if len(replies) > 1:
            mixed = _collide([raw for _, _, raw, _, _ in replies], self._rng)
            for meter, _d, _raw, _o, _det in replies:
                self._record(frame, meter, "collided", f"{len(replies)} meters answered at once")
            return [Transmission(min(d for _, d, _, _, _ in replies), mixed)]
        out = []
        for meter, delay, raw, outcome, detail in replies:
            self._record(frame, meter, outcome, detail)
            out.append(Transmission(delay, raw))
        return out


def _flip_byte(raw: bytes, wakeup: int, rng: random.Random) -> bytes:
    """Damage one byte of the frame body (not the wake-up bytes): the checksum fails."""
    pos = rng.randrange(wakeup + 1, len(raw) - 2)
    damaged = bytearray(raw)
    damaged[pos] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def _garbage(rng: random.Random, low: int, high: int) -> bytes:
    return bytes(
        rng.choice([b for b in range(256) if b not in (0x68, 0xFE)])
        for _ in range(rng.randint(low, high))
    )


def _collide(raws: list[bytes], rng: random.Random) -> bytes:
    """Meters that heard the same request answer within a byte time or two of each other; on
    a wired-AND line the overlapping bytes mix (0 wins), so the master sees garbage."""
    offsets = [0] + [rng.randint(0, 2) for _ in raws[1:]]
    length = max(o + len(raw) for o, raw in zip(offsets, raws, strict=True))
    line = bytearray([0xFF] * length)
    for offset, raw in zip(offsets, raws, strict=True):
        for i, b in enumerate(raw):
            line[offset + i] &= b
    return bytes(line)
