"""The operators' panel on a 100,000-meter fleet: server time of the overview and of the
consecutive-failure list, and page weight.

    .venv/bin/python bench/panel.py [--concentrators 200] [--meters 500] [--days 35] [--requests 200]

Seeds a SQLite store directly with ledger rows as the consumer leaves them (archives; per day
~98.5 % read, 2 % of them after the deadline, 1 % incomplete; 0.6 % of meters dead throughout,
~1 % failing on a given day with one of the agent's reasons, a few unexplained), and InfluxDB
(`influxd`) with the coverage job's fleet points for the trend. Then runs `meterlink central
panel` as its own process and requests each page `--requests` times with a logged-in session.

Server time is the panel's own `Server-Timing` header (the handler, from the request's arrival
to the response, without the network); the baseline, measured in the same run, is `/healthz`, a
handler that reads nothing. It also prints what a page costs when the day's coverage is not
cached yet: `compute_day` for the day (what `meterlink central report` does), which the panel
runs in a worker process when the ledger changed, never per request. Page weight is the bytes
of the HTML plus every asset it loads (CSS, script, icon), uncompressed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zoneinfo
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.config import CoverageConfig  # noqa: E402
from central.coverage import compute_day  # noqa: E402
from central.ledger import Ledger  # noqa: E402
from central.panel.auth import Users  # noqa: E402
from central.points import archive_digest  # noqa: E402
from central.store import Store, open_store  # noqa: E402
from meterlink.services import die_with_parent, free_port, running_influxdb  # noqa: E402

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
REASONS = [
    "no_reply",
    "no_reply",
    "no_reply",
    "timeout",
    "checksum",
    "route_failure",
    "abnormal_reply",
    "bus_busy",
]
MANUFACTURERS = ["CHINT", "Holley", "Linyang", "Wasion", "Sanxing"]


def seed(store: Store, nconc: int, per: int, days: list[str]) -> dict[str, tuple[int, int]]:
    """The ledger rows; returns (expected, read) per day for the coverage points."""
    Ledger(store)
    rnd = random.Random(7)
    meters = []
    first = days[0]
    archives = []
    for c in range(nconc):
        cid = f"c-{c:04d}"
        ms = tuple((f"{c:04d}{m:08d}", f"台区-{(c * 7 + m // 50) % 40:02d}",
                    MANUFACTURERS[m % 5], f"rs485-{m % 4 + 1}") for m in range(per))  # fmt: skip
        meters.append((cid, ms))
        stamp = int(dt.datetime.fromisoformat(f"{first}T08:00:00+08:00").timestamp())
        archives.append((cid, 1, 1, stamp, first, archive_digest(ms)))
    dead = {m for _, ms in meters for (m, *_r) in ms if rnd.random() < 0.006}

    def write_archives(tx):  # type: ignore[no-untyped-def]
        tx.upsert(
            "archive_version",
            ("concentrator", "seq", "version", "updated_at", "day_from", "digest"),
            ("text", "integer", "bigint", "bigint", "text", "text"),
            archives,
        )
        tx.upsert(
            "archive_meter",
            ("concentrator", "seq", "meter", "district", "manufacturer", "bus"),
            ("text", "integer", "text", "text", "text", "text"),
            [(cid, 1, *m) for cid, ms in meters for m in ms],
        )

    store.write(write_archives)
    totals = {}
    for day in days:
        start = int(dt.datetime.fromisoformat(f"{day}T00:00:00+08:00").timestamp())
        reads, fails = [], []
        for cid, ms in meters:
            for m, *_rest in ms:
                x = rnd.random()
                if m in dead or x < 0.012:
                    if x < 0.002:
                        continue  # no round listed it: unexplained
                    reason = "no_reply" if m in dead else REASONS[int(x * 1e4) % len(REASONS)]
                    fails.append((cid, m, day, reason, f"{reason} on rs485", start + 82800))
                else:
                    late = rnd.random() < 0.02
                    reads.append((cid, m, day, start,
                                  start + (84600 if late else 1200 + rnd.randrange(3600)),
                                  int(rnd.random() > 0.01), 0))  # fmt: skip
        totals[day] = (nconc * per, len(reads))

        def write_day(tx, reads=reads, fails=fails):  # type: ignore[no-untyped-def]
            tx.upsert(
                "daily_read",
                ("concentrator", "meter", "day", "day_start", "read_at", "complete", "backfill"),
                ("text", "text", "text", "bigint", "bigint", "smallint", "smallint"),
                reads,
            )
            tx.upsert(
                "daily_failure",
                ("concentrator", "meter", "day", "reason", "detail", "reported_at"),
                ("text", "text", "text", "text", "text", "bigint"),
                fails,
            )

        store.write(write_day)
    return totals


def influx_points(url: str, totals: dict[str, tuple[int, int]]) -> None:
    """The fleet coverage points the coverage job publishes (one per day, 00:00 UTC)."""
    urllib.request.urlopen(f"{url}/query?q=CREATE+DATABASE+meterlink", data=b"")
    lines = []
    for day, (expected, read) in totals.items():
        at = int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC).timestamp())
        rate = round(100.0 * read / expected, 4)
        lines.append(
            f"coverage,scope=fleet,key=all expected={expected},collected={read},"
            f"rate={rate},timeliness_rate={rate - 2},completeness_rate={rate - 1} {at}"
        )
    req = urllib.request.Request(f"{url}/write?db=meterlink&precision=s",
                                 data="\n".join(lines).encode(), method="POST")  # fmt: skip
    urllib.request.urlopen(req)


def get(url: str, cookie: str) -> tuple[bytes, float, float]:
    """Body, client wall time (ms), server time (ms, Server-Timing)."""
    req = urllib.request.Request(url, headers={"Cookie": f"meterlink_session={cookie}"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = resp.read()
        timing = resp.headers.get("Server-Timing", "")
    wall = (time.perf_counter() - started) * 1000
    found = re.search(r"dur=([0-9.]+)", timing)
    return body, wall, float(found[1]) if found else float("nan")


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concentrators", type=int, default=200)
    ap.add_argument("--meters", type=int, default=500, help="per concentrator")
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    today = dt.datetime.now(TZ).date()
    days = [(today - dt.timedelta(days=i)).isoformat() for i in range(args.days - 1, -1, -1)]
    fleet = args.concentrators * args.meters
    with tempfile.TemporaryDirectory() as tmp_name, running_influxdb(Path(tmp_name)) as influx:
        tmp = Path(tmp_name)
        store_url = f"sqlite://{tmp}/store.sqlite3"
        store = open_store(store_url, name="bench")
        t0 = time.perf_counter()
        totals = seed(store, args.concentrators, args.meters, days)
        influx_points(influx.url, totals)
        print(
            f"seeded {fleet:,} meters x {args.days} days ({sum(r for _, r in totals.values()):,}"
            f" reads) in {time.perf_counter() - t0:.0f} s"
        )
        t0 = time.perf_counter()
        cov = compute_day(Ledger(store), days[-1], CoverageConfig())
        compute_s = time.perf_counter() - t0
        print(
            f"compute_day for today (the report's computation; the panel's refresh of a day):"
            f" {compute_s:.2f} s, {len(cov.streaks)} failing meters"
        )
        users = Users(store)
        users.add("bench", "viewer", "bench-password-1")
        cookie, _ = users.open_session("bench", 1.0)
        store.close()
        port = free_port()
        config = tmp / "central.toml"
        config.write_text(
            f'[mqtt]\nport = {free_port()}\nreconnect_min_s = 30.0\n[influx]\nurl = "{influx.url}"\n'
            f'[store]\nurl = "{store_url}"\n[panel]\nlisten = "127.0.0.1:{port}"\n'
        )
        log = (tmp / "panel.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "meterlink", "central", "panel", "--config",
                                 str(config)], stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                                preexec_fn=die_with_parent(), env={**os.environ})  # fmt: skip
        try:
            assert proc.stdout is not None
            base = proc.stdout.readline().decode().split()[1].rstrip("/")
            pages = {"baseline /healthz": "/healthz", "overview /": "/",
                     "consecutive failures /failures": "/failures",
                     "failures CSV /failures.csv": "/failures.csv"}  # fmt: skip
            t0 = time.perf_counter()
            get(base + "/", cookie)  # the first view: today's and yesterday's coverage computed
            print(
                f"first overview after start (2 days computed in the worker): "
                f"{time.perf_counter() - t0:.2f} s\n"
            )
            results = {}
            for name, path in pages.items():
                walls, servers = [], []
                body = b""
                for _ in range(args.requests):
                    body, wall, server = get(base + path, cookie)
                    walls.append(wall)
                    servers.append(server)
                results[name] = (body, walls, servers)
            base_p50 = pct(results["baseline /healthz"][2], 50)
            print(f"{fleet:,}-meter fleet, {args.requests} requests each, one client in turn:")
            print(
                f"{'page':<34} {'server p50':>11} {'p95':>9} {'x baseline':>11} {'client p50':>11}"
                f" {'p95':>9}"
            )
            for name, (_body, walls, servers) in results.items():
                print(
                    f"{name:<34} {pct(servers, 50):>9.2f}ms {pct(servers, 95):>7.2f}ms"
                    f" {pct(servers, 50) / base_p50:>10.1f}x {pct(walls, 50):>9.2f}ms"
                    f" {pct(walls, 95):>7.2f}ms"
                )
            print("\npage weight (HTML + CSS + script + icon, uncompressed):")
            assets = ["/static/panel.css", "/static/panel.js", "/static/favicon.svg"]
            asset_bytes = sum(len(get(base + a, cookie)[0]) for a in assets)
            for name in ("overview /", "consecutive failures /failures"):
                html = len(results[name][0])
                print(
                    f"  {name:<32} {html + asset_bytes:>9,} bytes ({html:,} HTML,"
                    f" {asset_bytes:,} assets)"
                )
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
