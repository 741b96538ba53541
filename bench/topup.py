"""Remote top-up orders: latency on a slow line beside its physical minimum, and how many
orders per second the order service sustains.

1. Latency on a 2400-baud timed line: the simulator's fleet on a pty with bytes paced at
   11 bits per byte and every reply delayed by the meter's drawn turnaround; the agent's real
   `security` command executor on it; the order executor with the simulator's encryption
   machine (in-process: no MQTT hop, no HTTP to the machine — both add loopback round trips of
   well under a millisecond); one order at a time (one bus). Per order: acceptance to
   confirmation, beside the wire-time minimum of the exchanges it needed, from what actually
   crossed the line during it (request wire time + the meter's drawn reply delay + reply wire
   time, for every frame). Printed: p50 / p95 of both and of their ratio.
1b. The same through a carrier bus: an HPLC CCO (simulated, one read at a time, time scale
   0.05: the field's drawn latencies × 0.05) with the agent's carrier transport; beside the
   sum of the latencies the module applied to the exchanges of the order (the carrier
   network's floor; the serial hop to the module is included in the measurement only).
   Multiply by 20 for field seconds.
2. Throughput: 10,000 orders over 1,000 meters (10 each, serialised per meter) through the
   order book and executor on the central store (SQLite, synchronous=FULL as in production),
   against an in-process fake agent and machine that answer at once; beside a baseline
   measured in the same run: the same store doing only the order's state-machine writes
   (insert + the same number of one-row commits), without the executor. Printed: orders/s of
   both and the ratio.

    .venv/bin/python bench/topup.py [--orders 10000] [--meters 1000] [--line-orders 12]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import statistics
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.archive import ArchiveStore  # noqa: E402
from agent.commands import CommandExecutor  # noqa: E402
from agent.config import load_config  # noqa: E402
from central.store import open_store  # noqa: E402
from central.topup.config import TopupConfig  # noqa: E402
from central.topup.executor import Executor  # noqa: E402
from central.topup.hsm import IdentityAuth, PurseMacs, SecurityModule  # noqa: E402
from central.topup.orders import OrderBook, load_archive  # noqa: E402
from simulators import Fleet  # noqa: E402
from simulators.record import CarrierRecord  # noqa: E402
from tests.agent.simenv import sim_agent  # noqa: E402
from tests.topup.helpers import LocalHsm  # noqa: E402
from tests.topup.service_stack import topup_archive  # noqa: E402

BITS = 11
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
LINE_FLEET = """
seed = 8
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
  baud = 2400
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 1 }}
    balance_yuan = 80
    offset_s = 0
    drift_ppm = 0
    wakeup = [0, 0]
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class LineLog:
    """What crossed the line: (request bytes, the meter's reply delay, reply bytes)."""

    def __init__(self, fleet: Fleet) -> None:
        self.exchanges: list[tuple[int, float, int]] = []
        bus = fleet.bus("b1")
        original = bus.exchange

        def exchange(frame: Any) -> Any:
            out = list(original(frame))
            request = len(frame.to_bytes(wakeup=4))
            for tx in out:
                self.exchanges.append((request, tx.delay, len(tx.data)))
            return out

        bus.exchange = exchange  # type: ignore[method-assign]


class AgentChannel:
    def __init__(self, run: CommandExecutor) -> None:
        self.run = run

    async def security(
        self, concentrator: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        return await self.run({"command": "security", "meter": meter, "args": dict(args)})


async def line_latency(n: int, tmp: Path) -> tuple[list[tuple[float, float]], float]:
    opts = "baud=2400&reply_timeout_ms=1000&byte_gap_ms=500"
    async with sim_agent(
        LINE_FLEET.format(count=n), tmp, transport="pty", url_options=opts, timing=True
    ) as sa:
        fleet = sa.fleet
        log = LineLog(fleet)
        meters = "".join(
            f'[[archive.meters]]\naddress = "{m.identity.meter_id}"\nbus = "b1"\n'
            f'protocol = "{m.identity.protocol}"\n'
            for m in fleet.meters()
        )
        path = tmp / "agent.toml"
        path.write_text(
            f'[agent]\nconcentrator = "c-bench"\nstate_dir = "{tmp}"\n'
            '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:1"\n' + meters
        )

        async def on_change() -> None:
            return None

        run = CommandExecutor(sa.ctx, ArchiveStore(load_config(path)), on_change)
        store = open_store(tmp / "line.sqlite3")
        book = OrderBook(store, TZ)
        book.migrate()
        book.set_archive(load_archive(topup_archive(fleet, "c-bench")))
        cfg = TopupConfig(concurrency=1, poll_s=0.01, command_timeout_s=60)
        executor = Executor(book, cfg, LocalHsm(fleet), AgentChannel(run))
        out = []
        for i, m in enumerate(fleet.meters()):
            wallet = m.wallet
            assert wallet is not None
            before = len(log.exchanges)
            now = time.time()
            body = {"order_id": f"line-{i}", "meter": m.identity.meter_id,
                    "customer": wallet.customer_number, "amount_fen": 1000}  # fmt: skip
            book.accept("topup", body, now=now, deadline=now + 600)
            started = time.perf_counter()
            while book.active_count():
                executor.tick()
                for task in list(executor.running.values()):
                    await task
                await asyncio.sleep(0.001)  # a waiting order's next_at
            elapsed = time.perf_counter() - started
            order = book.get(f"line-{i}")
            assert order is not None
            assert order.state.value == "confirmed", order
            per_byte = BITS / 2400
            minimum = sum(
                req * per_byte + delay + rep * per_byte
                for req, delay, rep in log.exchanges[before:]
            )
            out.append((elapsed, minimum))
        store.close()
        return out, len(log.exchanges) / n


CARRIER_FLEET = """
seed = 8
[[district]]
name = "d"
  [[district.bus]]
  name = "plc-1"
  protocol = "carrier"
    [district.bus.carrier]
    profile = "hplc"
    concurrency = 1
    forming_s = 0
    reforming_s = 0
    boot_report_s = [0, 0]
    [[district.bus.meters]]
    count = {count}
    first_address = "000000000001"
    models = {{ DDZY666 = 1 }}
    balance_yuan = 80
    offset_s = 0
    drift_ppm = 0
"""
CARRIER_SCALE = 0.05


async def carrier_latency(n: int, tmp: Path) -> tuple[list[tuple[float, float]], float]:
    async with sim_agent(
        CARRIER_FLEET.format(count=n), tmp, time_scale=CARRIER_SCALE,
        carrier_options="in_flight=16&read_timeout_ms=0",
    ) as sa:  # fmt: skip
        fleet = sa.fleet
        module = sa.serving.module("plc-1")
        await sa.pollers["plc-1"].client.module_info()  # start-up and archive sync first
        await module.wait_formed()
        meters = "".join(
            f'[[archive.meters]]\naddress = "{m.identity.meter_id}"\nbus = "plc-1"\n'
            f'protocol = "{m.identity.protocol}"\n'
            for m in fleet.meters()
        )
        path = tmp / "agent.toml"
        path.write_text(
            f'[agent]\nconcentrator = "c-bench"\nstate_dir = "{tmp}"\n'
            '[[buses]]\nname = "plc-1"\nurl = "carrier+tcp://127.0.0.1:1"\n' + meters
        )

        async def on_change() -> None:
            return None

        run = CommandExecutor(sa.ctx, ArchiveStore(load_config(path)), on_change)
        store = open_store(tmp / "carrier.sqlite3")
        book = OrderBook(store, TZ)
        book.migrate()
        book.set_archive(load_archive(topup_archive(fleet, "c-bench")))
        cfg = TopupConfig(concurrency=1, poll_s=0.01, command_timeout_s=60)
        executor = Executor(book, cfg, LocalHsm(fleet), AgentChannel(run))
        out = []
        exchanges = 0
        for i, m in enumerate(fleet.meters()):
            wallet = m.wallet
            assert wallet is not None
            before = len(fleet.recorder.carrier)
            now = time.time()
            body = {"order_id": f"plc-{i}", "meter": m.identity.meter_id,
                    "customer": wallet.customer_number, "amount_fen": 1000}  # fmt: skip
            book.accept("topup", body, now=now, deadline=now + 600)
            started = time.perf_counter()
            while book.active_count():
                executor.tick()
                for task in list(executor.running.values()):
                    await task
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            order = book.get(f"plc-{i}")
            assert order is not None
            assert order.state.value == "confirmed", order
            reads = [
                r for r in fleet.recorder.carrier[before:]
                if isinstance(r, CarrierRecord) and r.dir == "down" and r.applied_s is not None
            ]  # fmt: skip
            exchanges += len(reads)
            out.append((elapsed, sum(r.applied_s or 0.0 for r in reads)))
        store.close()
        return out, exchanges / n


class FakeHsm(SecurityModule):
    """Answers at once; the purse data carries amount and count as the codec lays them out
    (4-byte little-endian), so the fake agent can book them."""

    async def identity_auth(self, meter: str) -> IdentityAuth:
        return IdentityAuth(meter, b"\x01" * 8, b"\x02" * 8, b"\x00\x00" + bytes(6))

    async def increase_purse(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        data = amount_fen.to_bytes(4, "little") + purchase_count.to_bytes(4, "little")
        return PurseMacs(data + bytes(14), b"\x00" * 4, b"\x00" * 4)

    open_account = increase_purse

    async def user_control(
        self, meter: str, random2: bytes, esam_serial: bytes, plain: bytes
    ) -> bytes:
        return bytes(20)

    async def mac_check(self, meter: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        return True


class FakeAgent:
    """The agent and its meters as replies: counts, last purchases, status word 3."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.last: dict[str, tuple[int, str]] = {}
        self.commands = 0

    def _read(self, meter: str) -> dict[str, Any]:
        amount, when = self.last.get(meter, (0, "2026-01-01T00:00:00"))
        values = {
            "03330201": {"purchase_count": {"value": self.count.setdefault(meter, 7)}},
            "03330301": {"purchase_amount_yuan": {"value": amount / 100}},
            "03330101": {"purchase_time": {"value": when}},
            "04000503": {"status_word_3": {"value": 0x200}},
        }
        items = {k: {"item": k, "values": v} for k, v in values.items()}
        return {"op": "read", "ok": True, "sent": True, "items": items, "frames": []}

    async def security(
        self, concentrator: str, meter: str, args: Mapping[str, Any], wait_s: float
    ) -> dict[str, Any]:
        self.commands += 1
        steps = []
        for step in args["steps"]:
            if step["op"] == "auth":
                steps.append({"op": "auth", "ok": True, "sent": True, "frames": [],
                              "reply": {"random2": "0A0B0C0D", "esam_serial": "00" * 8}})  # fmt: skip
            elif step["op"] in ("topup", "open"):
                data = bytes.fromhex(step["data"])
                amount = int.from_bytes(data[:4], "little")
                count = int.from_bytes(data[4:8], "little")
                if count == self.count.setdefault(meter, 7) + 1:
                    self.count[meter] = count
                    now = dt.datetime.now(TZ).replace(tzinfo=None, second=0, microsecond=0)
                    self.last[meter] = (amount, now.isoformat())
                steps.append({"op": step["op"], "ok": True, "sent": True, "frames": []})
            else:
                steps.append(self._read(meter))
        return {"ok": True, "result": {"steps": steps, "session": None}, "frames": []}


async def throughput(orders: int, meters: int, tmp: Path) -> tuple[float, float, int]:
    store = open_store(tmp / "throughput.sqlite3")
    book = OrderBook(store, TZ)
    book.migrate()
    archive = [{"meter": f"{i:012d}", "concentrator": f"c-{i // 256}", "address": f"{i:012d}",
                "mode": "local"} for i in range(1, meters + 1)]  # fmt: skip
    book.set_archive(load_archive(archive))
    commits = Commits(store)
    agent = FakeAgent()
    cfg = TopupConfig(concurrency=64, poll_s=0.05)
    executor = Executor(book, cfg, FakeHsm(), agent)
    now = time.time()
    started = time.perf_counter()
    for i in range(orders):
        meter = f"{i % meters + 1:012d}"
        body = {"order_id": f"o-{i}", "meter": meter, "customer": "300000000001",
                "amount_fen": 100 + i % 7}  # fmt: skip
        book.accept("topup", body, now=now, deadline=now + 3600)
    stop = asyncio.Event()
    ended: list[str] = []

    def changed(order: Any) -> None:
        executor.wake()
        if order.terminal:
            ended.append(order.order_id)
            if len(ended) == orders:
                stop.set()

    book.listeners.append(changed)
    await executor.run(stop)
    elapsed = time.perf_counter() - started
    confirmed = len(book.query(state="confirmed", limit=orders + 1))
    transactions = commits.n
    store.close()
    # baseline: the same store doing as many commits as the run made (one insert per order,
    # the rest one-row updates), nothing else: what the store alone allows
    base = open_store(tmp / "baseline.sqlite3")
    base.execute("CREATE TABLE o (id TEXT PRIMARY KEY, state TEXT, n INTEGER)")
    started = time.perf_counter()
    per_order = transactions / orders
    for i in range(orders):
        base.write(
            lambda tx, i=i: tx.execute("INSERT INTO o VALUES (?, 'accepted', 0)", (f"o-{i}",))
        )
    updates = round((per_order - 1) * orders)
    for k in range(updates):
        base.write(lambda tx, k=k: tx.execute(
            "UPDATE o SET n = n + 1 WHERE id = ?", (f"o-{k % orders}",)))  # fmt: skip
    base_elapsed = time.perf_counter() - started
    base.close()
    assert confirmed == orders, confirmed
    return orders / elapsed, orders / base_elapsed, agent.commands, transactions


class Commits:
    """Counts the store's commits (every `write` transaction and single-statement write)."""

    def __init__(self, store: Any) -> None:
        self.n = 0
        write, execute = store.write, store.execute

        def counted_write(fn: Any) -> Any:
            self.n += 1
            return write(fn)

        def counted_execute(sql: str, params: Any = ()) -> Any:
            self.n += 1
            return execute(sql, params)

        store.write = counted_write
        store.execute = counted_execute


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=10000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--line-orders", type=int, default=12)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-topup-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "line").mkdir()
        lat, per_order = await line_latency(args.line_orders, tmp / "line")
        measured = [m for m, _ in lat]
        minimum = [w for _, w in lat]
        ratios = [m / w for m, w in lat]
        print(f"1. order latency on a 2400-baud timed line ({len(lat)} orders, one at a time;"
              f" 2 commands, {per_order:.1f} meter exchanges per order)")  # fmt: skip
        print(f"   {'':>10} {'measured s':>11} {'wire minimum s':>15} {'ratio':>6}")
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            print(f"   {name:>10} {pct(measured, q):>11.2f} {pct(minimum, q):>15.2f}"
                  f" {pct(ratios, q):>6.3f}")  # fmt: skip
        print(f"   {'mean':>10} {statistics.mean(measured):>11.2f}"
              f" {statistics.mean(minimum):>15.2f} {statistics.mean(ratios):>6.3f}")  # fmt: skip
        (tmp / "plc").mkdir()
        plc, plc_per_order = await carrier_latency(args.line_orders, tmp / "plc")
        print(f"\n1b. through an HPLC CCO, time scale {CARRIER_SCALE} ({len(plc)} orders, one"
              f" at a time; {plc_per_order:.1f} carrier exchanges per order)")  # fmt: skip
        print(f"   {'':>10} {'measured s':>11} {'Σ latency s':>15} {'ratio':>6}")
        pm, pw = [m for m, _ in plc], [w for _, w in plc]
        pr = [m / w for m, w in plc]
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            print(f"   {name:>10} {pct(pm, q):>11.2f} {pct(pw, q):>15.2f} {pct(pr, q):>6.3f}")
        print(
            f"   field time at scale 1: p50 {pct(pw, 0.5) / CARRIER_SCALE:.0f} s,"
            f" p95 {pct(pw, 0.95) / CARRIER_SCALE:.0f} s of carrier latency per order"
        )
        if args.skip_throughput:
            return
        (tmp / "tp").mkdir()
        rate, base, commands, commits = await throughput(args.orders, args.meters, tmp / "tp")
        print(f"\n2. throughput: {args.orders} orders over {args.meters} meters, SQLite store,"
              " fake agent and machine answering at once")  # fmt: skip
        print(f"   order service                {rate:>8.1f} orders/s ({commands} security"
              f" commands, {commits} store commits)")  # fmt: skip
        print(f"   baseline (the same commits)  {base:>8.1f} orders/s")
        print(f"   ratio service / baseline     {rate / base:>8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
