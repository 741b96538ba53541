"""What the Q/GDW 1376.2 layer costs a reading: a meter reading through a carrier frame against
the same DL/T 645 reading on its own (the baseline), in one run.

    .venv/bin/python bench/q13762.py [--repeat 5] [--seconds 0.3]

decode: the module's AFN F1 F1 reply (FE FE FE FE + the meter's 645 energy reply inside) through
q13762.FrameDecoder -> from_frame -> inner_frames (the 645 decoder) -> dlt645.from_frame ->
catalogue decode, against dlt645.FrameDecoder -> from_frame -> catalogue decode of the bare 645
reply. encode: the F1 F1 request (645 to_frame + ConcurrentRead.of_645 + q13762 to_frame +
to_bytes) against the bare 645 request. The ratio is carrier / bare: what wrapping costs.

hunting: the mixed 645/1376.2 decoder fed one byte at a time (a serial line at its worst) with
streams of false starts — every third byte a 68H promising 2048 bytes, or nothing but 68H —
against random bytes (the baseline) in the same run: the cost of the worst line noise.

The process is pinned to one CPU when the OS allows it; numbers are the best of `--repeat` runs.
This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

from codec import rates  # bench/codec.py: the interleaved best-of timing

from protocols import dlt645
from protocols import q13762 as q
from protocols.q13762.mixed import MixedFrameDecoder

METER = dlt645.Address.parse("000000003304")
MAIN = q.NodeAddress.parse("049999888888")
ENERGY = 0x00010000


def _reply_645() -> bytes:
    return dlt645.encode_frame(
        dlt645.to_frame(METER, dlt645.ReadReply(ENERGY, bytes.fromhex("56 34 12 00"))), wakeup=4
    )


def _reply_1376() -> bytes:
    reply = q.to_frame(q.ConcurrentReply(2, _reply_645()), q.UpInfo(seq=7), src=METER, dst=MAIN)
    return reply.to_bytes()


def decode_645(decoder: dlt645.FrameDecoder, raw: bytes) -> float:
    (frame,) = decoder.feed(raw)
    assert isinstance(frame, dlt645.Frame)
    message = dlt645.from_frame(frame)
    assert isinstance(message, dlt645.ReadReply)
    item = dlt645.lookup(message.di, frame.edition)
    assert item is not None
    return float(item.decode(message.value)[0].value)


def decode_1376(decoder: q.FrameDecoder, inner: dlt645.FrameDecoder, raw: bytes) -> float:
    (frame,) = decoder.feed(raw)
    assert isinstance(frame, q.Frame)
    message = q.from_frame(frame)
    assert isinstance(message, q.ConcurrentReply)
    (meter_frame,) = q.inner_frames(message)
    assert isinstance(meter_frame, dlt645.Frame)
    reply = dlt645.from_frame(meter_frame)
    assert isinstance(reply, dlt645.ReadReply)
    item = dlt645.lookup(reply.di, meter_frame.edition)
    assert item is not None
    return float(item.decode(reply.value)[0].value)


def encode_645() -> bytes:
    return dlt645.encode_frame(dlt645.to_frame(METER, dlt645.ReadRequest(ENERGY)))


def encode_1376(seq: int = 7) -> bytes:
    read = dlt645.to_frame(METER, dlt645.ReadRequest(ENERGY))
    request = q.to_frame(q.ConcurrentRead.of_645([read]), q.DownInfo(seq=seq), src=MAIN, dst=METER)
    return request.to_bytes(max_length=2048)


def hunting_us_per_byte(data: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        decoder = MixedFrameDecoder()
        start = time.perf_counter()
        for b in data:
            decoder.feed(bytes((b,)))
        decoder.flush()
        best = min(best, (time.perf_counter() - start) / len(data) * 1e6)
    return best


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
    raw645, raw1376 = _reply_645(), _reply_1376()
    d645, d1376, inner = dlt645.FrameDecoder(), q.FrameDecoder(), dlt645.FrameDecoder()
    assert decode_645(d645, raw645) == decode_1376(d1376, inner, raw1376) == 1234.56
    assert q.decode_frame(encode_1376()).data.endswith(encode_645()[4:])
    print(
        f"Q/GDW 1376.2 layer: a reading through a carrier frame vs the bare DL/T 645 frame — "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}{pinned}; best of {args.repeat} runs"
    )
    header = f"{'workload':<44}{'carrier/s':>12}{'bare 645/s':>12}{'carrier µs':>12}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for label, carrier, bare in (
        (
            "decode energy reply (F1F1 up / 645 91H)",
            lambda: decode_1376(d1376, inner, raw1376),
            lambda: decode_645(d645, raw645),
        ),
        ("encode energy read (F1F1 down / 645 11H)", encode_1376, encode_645),
    ):
        ours, base = rates(carrier, bare, args.seconds, args.repeat)
        print(f"{label:<44}{ours:>12,.0f}{base:>12,.0f}{1e6 / ours:>12.1f}{base / ours:>7.2f}x")
    print("ratio = time per carrier reading / time per bare 645 reading")
    print()
    noise = random.Random(7).randbytes(6000)
    base = hunting_us_per_byte(noise, args.repeat)
    header = f"{'hunting, one byte per feed (6000 bytes)':<44}{'µs/byte':>12}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    print(f"{'random bytes (baseline)':<44}{base:>12.1f}{1:>7.2f}x")
    for label, pattern in (
        ("68 00 08 repeated (false starts, L=2048)", b"\x68\x00\x08"),
        ("68 repeated", b"\x68"),
    ):
        us = hunting_us_per_byte(pattern * (6000 // len(pattern)), args.repeat)
        print(f"{label:<44}{us:>12.1f}{us / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
