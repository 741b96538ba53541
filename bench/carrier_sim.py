"""CCO simulator benchmark: what the carrier layer costs the simulator, and how close a perfect
concentrator can get to the ideal time the record computes.

1. Cost per read: one master reading one meter at a time over TCP, the latency scaled to
   nothing (time scale 1e-6), as AFN F1 F1 through the CCO and — the baseline, in the same run
   — as a bare DL/T 645 read of the same meters on an RS-485 bus. Printed: µs per read each,
   and the ratio.
2. A round behind the CCO of `simulators/fleets/hplc-1024.toml` (forming skipped) by a perfect
   concentrator: the codec only, always C reads in flight to distinct meters, replies paired by
   SEQ. Printed per C and time scale: measured wall time against both ideals of
   `simulators.carrier.ideal_time` from the simulator's own record (no line timing: no wire
   time) — the bound Σ applied latency / C, and the schedule (the same reads replayed in order
   with C slots). Above the schedule is the simulator's own cost per read (and the client's);
   above the bound also the round's last stragglers, which no client avoids.

    .venv/bin/python bench/carrier_sim.py [--reads 400] [--scales 0.01,0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols import dlt645
from protocols import q13762 as q
from simulators import Fleet, load_fleet, parse_fleet, serve_fleet
from simulators.carrier import ideal_time

HPLC_1024 = Path(__file__).resolve().parent.parent / "simulators" / "fleets" / "hplc-1024.toml"
MAIN = q.NodeAddress.parse("049999888888")
ENERGY = 0x00010000
FLEET = """
seed = 1
start = "2026-03-10T10:00:00"
frozen = true
[[district]]
[[district.bus]]
name = "b"
protocol = "{protocol}"
{carrier}
[[district.bus.meters]]
first_address = "000000000001"
count = 32
models = {{ DDZY666 = 1 }}
wakeup = [4, 4]
"""
READY = "[district.bus.carrier]\nforming_s = 0\nboot_report = false\nboot_report_s = 0"


class Line:
    """A concentrator on TCP: frames out, decoded 1376.2 frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = q.FrameDecoder()
        self.frames: asyncio.Queue[q.Frame] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while chunk := await self.reader.read(65536):
            for event in self.decoder.feed(chunk):
                if isinstance(event, q.Frame):
                    self.frames.put_nowait(event)

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def cost_per_read(reads: int) -> None:
    results = {}
    for protocol in ("dlt645", "carrier"):
        fleet = parse_fleet(
            FLEET.format(protocol=protocol, carrier=READY if protocol == "carrier" else "")
        )
        async with serve_fleet(fleet, transport="tcp", time_scale=1e-6) as serving:
            host, port = serving.endpoint("b").address  # type: ignore[misc]
            reader, writer = await asyncio.open_connection(host, port)
            if protocol == "carrier":
                await serving.module("b").wait_formed()
            started = time.perf_counter()
            for i in range(reads):
                meter = dlt645.Address.parse(f"{i % 32 + 1:012d}")
                request = dlt645.to_frame(meter, dlt645.ReadRequest(ENERGY))
                if protocol == "dlt645":
                    writer.write(request.to_bytes())
                    decoder = dlt645.FrameDecoder()
                    while not decoder.feed(await reader.read(4096)):
                        pass
                else:
                    frame = q.to_frame(q.ConcurrentRead.of_645([request]), q.DownInfo(seq=i & 0xFF),
                                       src=MAIN, dst=meter)  # fmt: skip
                    writer.write(frame.to_bytes())
                    decoder13 = q.FrameDecoder()
                    while not decoder13.feed(await reader.read(4096)):
                        pass
            results[protocol] = (time.perf_counter() - started) / reads
            writer.close()
    bare, carrier = results["dlt645"], results["carrier"]
    print(f"cost per read over TCP, one at a time ({reads} reads, latency scaled to nothing):")
    print(f"  RS-485 bus, bare 645 read (baseline)   {bare * 1e6:8.0f} us")
    print(
        f"  CCO, AFN F1 F1 carrying the same read  {carrier * 1e6:8.0f} us   ratio {carrier / bare:.2f}"
    )


def _fleet(scale: float) -> Fleet:
    fleet = load_fleet(HPLC_1024)
    bus = fleet.bus("plc-1")
    assert bus.carrier is not None
    bus.carrier = dataclasses.replace(
        bus.carrier, forming_s=0.0, boot_report=False, boot_report_s=(0.0, 0.0), time_scale=scale
    )
    return fleet


async def round_against_ideal(
    window: int, reads: int, scale: float
) -> tuple[float, float, float, int]:
    fleet = _fleet(scale)
    network = fleet.bus("plc-1").network
    assert network is not None
    targets = []
    for entry in network.initial:
        meter = network.nodes[entry.addr].meter
        if meter is None or len(targets) == reads:
            continue
        edition = meter.identity.edition or dlt645.Edition.V2007
        di = ENERGY if edition is dlt645.Edition.V2007 else 0x9010
        targets.append(
            (entry.addr, dlt645.to_frame(entry.addr.meter, dlt645.ReadRequest(di), edition))
        )
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("plc-1").address  # type: ignore[misc]
        await serving.module("plc-1").wait_formed()
        line = Line(*await asyncio.open_connection(host, port))
        in_flight: dict[int, q.Frame] = {}
        pending = list(targets)
        seq = 0
        started = time.perf_counter()

        def send_one() -> None:
            nonlocal seq
            address, request = pending.pop(0)
            frame = q.to_frame(q.ConcurrentRead.of_645([request]), q.DownInfo(seq=seq),
                               src=MAIN, dst=address)  # fmt: skip
            in_flight[seq] = frame
            seq = (seq + 1) & 0xFF
            line.writer.write(frame.to_bytes())

        while pending and len(in_flight) < window:
            send_one()
        while in_flight:
            reply = await line.frames.get()
            request = in_flight.get(reply.seq)
            if request is None or not q.is_answer(reply, request):
                continue
            del in_flight[reply.seq]
            if pending:
                send_one()
        measured = time.perf_counter() - started
        await line.close()
    ideal = ideal_time(fleet.recorder.carrier, window)
    return measured, ideal.bound_s, ideal.schedule_s, ideal.reads


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=400, help="reads for the cost per read")
    parser.add_argument("--scales", default="0.01,0.05", help="time scales of the round")
    args = parser.parse_args()
    await cost_per_read(args.reads)
    print()
    print("a round behind the hplc-1024 CCO by a perfect concentrator (C reads always in flight):")
    print(
        "  bound = sum of applied latencies / C; schedule = the same reads replayed in order, C slots"
    )
    head = f"  {'scale':>6} {'C':>3} {'reads':>6} {'measured s':>11} {'bound s':>8} {'ratio':>6}"
    print(head + f" {'schedule s':>11} {'ratio':>6}")
    for scale in (float(s) for s in args.scales.split(",")):
        for window, reads in ((1, 128), (5, 512), (16, 1024)):
            measured, bound, schedule, count = await round_against_ideal(window, reads, scale)
            print(
                f"  {scale:>6} {window:>3} {count:>6} {measured:>11.2f} {bound:>8.2f}"
                f" {measured / bound:>6.3f} {schedule:>11.2f} {measured / schedule:>6.3f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
