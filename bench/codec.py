"""DL/T 645 codec throughput: meterlink against PyPI `dlt645` 3.2.0, side by side in one run.

    .venv/bin/python bench/codec.py [--repeat 5] [--seconds 0.3]

Both libraries get the same bytes; each does the work it offers for them (LEGEND below).

The process is pinned to one CPU when the OS allows it. Numbers are the best of `--repeat` runs
of about `--seconds` each. This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

from dlt645.common.transform import float_to_bcd
from dlt645.protocol.protocol import DLT645Protocol
from dlt645.service.clientsvc.client_service import MeterClientService

from protocols.dlt645 import (
    Address,
    Frame,
    FrameDecoder,
    ReadReply,
    encode_frame,
    from_frame,
    lookup,
    to_frame,
)
from protocols.measurements import Measurement

V14 = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 59 B3 55 44 DC 16")
V07 = bytes.fromhex("68 11 11 00 00 00 00 68 91 06 33 36 34 35 33 55 E3 16")
V04 = bytes.fromhex("FE FE FE FE 68 18 20 12 22 20 65 68 91 0A 33 32 34 35 33 33 33 33 C7 56 13 16")
ENERGY, VOLTAGE_C, VOLTAGE_BLOCK = 0x00010000, 0x02010300, 0x0201FF00


# --- meterlink ---------------------------------------------------------------------------------
def ours_decode(decoder: FrameDecoder) -> Callable[[bytes], list[Measurement]]:
    def decode(raw: bytes) -> list[Measurement]:
        (frame,) = decoder.feed(raw)
        assert isinstance(frame, Frame)
        message = from_frame(frame)
        assert isinstance(message, ReadReply)
        item = lookup(message.di, frame.edition)
        assert item is not None
        return item.decode(message.value)

    return decode


def ours_frame(decoder: FrameDecoder) -> Callable[[bytes], object]:
    def frame_only(raw: bytes) -> object:
        return decoder.feed(raw)[0]

    return frame_only


def ours_encode_bytes(address: Address, di: int, value: bytes) -> bytes:
    return encode_frame(to_frame(address, ReadReply(di, value)), wakeup=0)


def ours_encode_values(address: Address, di: int, values: dict[str, float]) -> bytes:
    item = lookup(di)
    assert item is not None
    return encode_frame(to_frame(address, ReadReply(di, item.encode(values))), wakeup=0)


# --- dlt645 3.2.0 --------------------------------------------------------------------------------
def theirs_decode(service: MeterClientService) -> Callable[[bytes], object]:
    def decode(raw: bytes) -> object:
        frame = DLT645Protocol.deserialize(raw)
        service.address = frame.addr  # its address check, satisfied
        return service.handle_response(frame)

    return decode


def theirs_encode_bytes(address: bytes, data: bytes) -> bytes:
    return bytes(DLT645Protocol.build_frame(address, 0x91, data, preamble_count=0))


def theirs_encode_values(address: bytes, di: int, values: list[tuple[float, str]]) -> bytes:
    data = di.to_bytes(4, "little")
    for value, layout in values:
        data += bytes(float_to_bcd(value, layout, "little"))
    return bytes(DLT645Protocol.build_frame(address, 0x91, data, preamble_count=0))


# --- timing --------------------------------------------------------------------------------------
def calls_per_run(fn: Callable[[], object], seconds: float) -> int:
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took > 0.05:
            return max(1, int(n * seconds / took))
        n *= 2


def rates(
    ours: Callable[[], object], theirs: Callable[[], object], seconds: float, repeat: int
) -> tuple[float, float]:
    """Calls per second of each: best of `repeat` runs, the two sides' runs interleaved so that
    load from other processes hits both alike."""
    sizes = calls_per_run(ours, seconds), calls_per_run(theirs, seconds)
    best = [0.0, 0.0]
    for _ in range(repeat):
        for side, (fn, n) in enumerate(zip((ours, theirs), sizes, strict=True)):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[side] = max(best[side], n / (time.perf_counter() - start))
    return best[0], best[1]


@dataclass
class Row:
    label: str
    ours: Callable[[], object]
    theirs: Callable[[], object]
    note: str = ""


def rows() -> list[Row]:
    service = MeterClientService(None)  # no transport: only its response handling is used
    decoder = FrameDecoder()
    decode, frame_only = ours_decode(decoder), ours_frame(decoder)
    their_decode = theirs_decode(service)
    meter1, meter_c = Address.parse("000000000001"), Address.parse("652022122018")

    # the two sides agree before they are timed
    assert [m.value for m in decode(V14)] == [112280.26]
    assert their_decode(V14).value == 112280.26  # type: ignore[attr-defined]
    assert [m.value for m in decode(V07)] == [220.0]
    assert their_decode(V07).value == 220.0  # type: ignore[attr-defined]
    assert [m.value for m in decode(V04)] == [0.0, 0.0, 239.4]
    block_theirs = their_decode(V04)
    assert ours_encode_bytes(meter1, ENERGY, V14[14:18].translate(_UNSCRAMBLE)) == V14
    assert theirs_encode_bytes(meter1.wire, bytes.fromhex("00 00 01 00 26 80 22 11")) == V14
    energy = {"energy_import_total_kwh": 112280.26}
    assert ours_encode_values(meter1, ENERGY, energy) == V14
    assert theirs_encode_values(meter1.wire, ENERGY, [(112280.26, "XXXXXX.XX")]) == V14
    volts = {"voltage_a_v": 0.0, "voltage_b_v": 0.0, "voltage_c_v": 239.4}
    assert ours_encode_values(meter_c, VOLTAGE_BLOCK, volts) == V04[4:]
    volts_theirs = [(v, "XXX.X") for v in volts.values()]
    assert theirs_encode_values(meter_c.wire, VOLTAGE_BLOCK, volts_theirs) == V04[4:]

    # V14 from 8192 different meters, cycled: more distinct headers and addresses than the
    # codec memoises (4096 / 1024), so every frame takes the cold path
    many = [
        ours_encode_bytes(Address.parse(f"{n:012d}"), ENERGY, bytes.fromhex("26 80 22 11"))
        for n in range(1, 8193)
    ]
    cycle_ours, cycle_theirs = itertools.cycle(many), itertools.cycle(many)
    assert their_decode(many[5]).value == 112280.26  # type: ignore[attr-defined]

    v14_data = bytes.fromhex("00 00 01 00 26 80 22 11")
    block_note = "" if block_theirs is not None else "dlt645 has no block layout: returns None"
    return [
        Row("decode V14 energy reply, 1 value", lambda: decode(V14), lambda: their_decode(V14)),
        Row(
            "decode V14 from 8192 meters, cycled",
            lambda: decode(next(cycle_ours)),
            lambda: their_decode(next(cycle_theirs)),
        ),
        Row("decode V07 voltage reply, 1 value", lambda: decode(V07), lambda: their_decode(V07)),
        Row(
            "decode V04 voltage block, 3 values",
            lambda: decode(V04),
            lambda: their_decode(V04),
            block_note,
        ),
        Row(
            "frame only V14",
            lambda: frame_only(V14),
            lambda: DLT645Protocol.deserialize(V14),
        ),
        Row(
            "encode (bytes) V14",
            lambda: ours_encode_bytes(meter1, ENERGY, v14_data[4:]),
            lambda: theirs_encode_bytes(meter1.wire, v14_data),
        ),
        Row(
            "encode (value) V14",
            lambda: ours_encode_values(meter1, ENERGY, energy),
            lambda: theirs_encode_values(meter1.wire, ENERGY, [(112280.26, "XXXXXX.XX")]),
        ),
        Row(
            "encode (value) V04 block, 3 values",
            lambda: ours_encode_values(meter_c, VOLTAGE_BLOCK, volts),
            lambda: theirs_encode_values(meter_c.wire, VOLTAGE_BLOCK, volts_theirs),
        ),
    ]


_UNSCRAMBLE = bytes((b - 0x33) & 0xFF for b in range(256))
LEGEND = """\
decode, meterlink  FrameDecoder.feed (hunts the stream, checks CS and 16H, removes 33H, infers
                   the edition) -> from_frame (typed message) -> catalogue lookup ->
                   DataItem.decode (every value of the item, as Measurements with units)
decode, dlt645     DLT645Protocol.deserialize (finds the frame, checks CS and 16H, removes 33H)
                   -> MeterClientService.handle_response (its DI map, decodes the value)
frame only         the frame layer alone: FrameDecoder.feed vs DLT645Protocol.deserialize
encode (bytes)     meterlink to_frame(ReadReply) + encode_frame; dlt645 build_frame; both from
                   the DI and the value bytes
encode (value)     the same from the numbers: meterlink DataItem.encode, dlt645 float_to_bcd
meterlink parses and builds the 10-byte header with construct once per distinct header (4096
memoised); the "8192 meters" row defeats that memo and shows the cold path."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    pinned = ""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f", pinned to CPU {cpu}"
    print(
        f"DL/T 645 codec: meterlink vs dlt645 {version('dlt645')} — "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}{pinned}; best of {args.repeat} runs, frames per second"
    )
    print(LEGEND)
    print()
    header = f"{'workload':<38}{'meterlink/s':>13}{'dlt645/s':>13}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    notes = []
    for row in rows():
        ours, theirs = rates(row.ours, row.theirs, args.seconds, args.repeat)
        mark = ""
        if row.note:
            notes.append(row.note)
            mark = f" [{len(notes)}]"
        print(f"{row.label:<38}{ours:>13,.0f}{theirs:>13,.0f}{ours / theirs:>7.2f}x{mark}")
    for i, note in enumerate(notes, start=1):
        print(f"[{i}] {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
