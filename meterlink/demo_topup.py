"""The top-up part of `meterlink demo`: the software encryption machine (`meterlink sim hsm`),
the order service (`meterlink central topup serve`), then top-ups and relay orders for the
demo fleet's prepaid meters through the billing API — some of them bound to fail (a dead
meter, a reply lost after the credit, a request lost, a wrong customer number, a purchase over
the hoarding limit) — and, once every order is terminal, the 远程充值成功率 line beside the
simulator's own record of credits (which must show no meter credited twice)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import common.clock
from simulators import Fleet

__all__ = ["TopupDemo", "topup_archive"]

TERMINAL = {"confirmed", "failed", "needs_review", "cancelled"}
AMOUNT_FEN = 5000


class _Starter(Protocol):
    workdir: Path

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]: ...

    def check(self) -> None: ...


#: how many local prepaid meters the demo tops up (a sample: see TopupDemo.submit)
TOPUP_METERS = 24


def topup_archive(fleet: Fleet, concentrator: str) -> list[dict[str, Any]]:
    """The order service's archive of the fleet's prepaid DL/T 645-2007 meters."""
    out = []
    for m in fleet.meters():
        ident = m.identity
        if not ident.prepaid or ident.protocol != "dlt645-2007":
            continue
        out.append(
            {
                "meter": ident.meter_id,
                "concentrator": concentrator,
                "address": ident.meter_number,
                "mode": "local" if m.wallet is not None else "remote",
                "district": ident.district,
                "manufacturer": ident.manufacturer,
                "model": ident.model,
            }
        )
    return out


def _http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - our own URL
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class TopupDemo:
    fleet: Fleet
    fleet_path: Path
    concentrator: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    url: str = ""
    hsm_url: str = ""
    orders: list[tuple[str, str]] = field(default_factory=list)
    """(kind path, order id)"""
    plan: dict[str, str] = field(default_factory=dict)
    """order id → what the demo did to it"""

    def start_hsm(self, stack: _Starter) -> str:
        proc = stack.start(
            "hsm",
            [sys.executable, "-m", "meterlink", "sim", "hsm", "--fleet", str(self.fleet_path),
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("hsm "):
                self.hsm_url = line.split()[1]
            if line == "ready":
                break
        if not self.hsm_url:
            stack.check()
            raise RuntimeError("the encryption machine did not start: see hsm.log")
        return self.hsm_url

    def config_section(self, workdir: Path, port: int) -> str:
        archive = workdir / "topup-archive.json"
        archive.write_text(json.dumps(topup_archive(self.fleet, self.concentrator), indent=1))
        return (
            f'[topup]\nlisten = "127.0.0.1:{port}"\narchive = "{archive}"\n'
            f'hsm_url = "{self.hsm_url}"\ntimezone = "{self.fleet.world.tz}"\n'
            "influx_interval_s = 2.0\npoll_s = 0.5\nretry_initial_s = 1.0\nretry_max_s = 4.0\n"
            "hsm_retry_s = 2.0\ncommand_timeout_s = 20.0\n"
        )

    def start_service(self, stack: _Starter, central_conf: Path, env: dict[str, str]) -> str:
        proc = stack.start(
            "topup",
            [sys.executable, "-m", "meterlink", "central", "topup", "serve", "--config",
             str(central_conf)],
            stdout=subprocess.PIPE, env={**env, "METERLINK_TOPUP_TOKENS": self.token},
        )  # fmt: skip
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("topup "):
                self.url = line.split()[1].rstrip("/")
            if line == "ready":
                break
        if not self.url:
            stack.check()
            raise RuntimeError("the top-up service did not start: see topup.log")
        return self.url

    def submit(self, control: str, deadline_s: float) -> None:
        """Top-ups for up to TOPUP_METERS local prepaid meters (two dead ones among them when
        the fleet has them), relay orders for two; faults injected into a few through the
        simulator's control channel. A sample, not every meter: orders go before the plans on
        the one bus, and a demo's orders have a deadline of seconds."""
        tz = zoneinfo.ZoneInfo(str(self.fleet.world.tz))
        deadline = (common.clock.current().now(tz) + dt.timedelta(seconds=deadline_s)).isoformat(
            timespec="seconds"
        )
        local = [m for m in self.fleet.meters() if m.wallet is not None
                 and m.identity.protocol == "dlt645-2007"]  # fmt: skip
        dead = [m for m in local if m.faults.dead][:2]
        healthy = [m for m in local if not m.faults.dead][: TOPUP_METERS - len(dead)]
        chosen = {id(m) for m in dead + healthy}
        local = [m for m in local if id(m) in chosen]
        faults = {}
        if len(healthy) >= 6:
            faults = {healthy[0].identity.meter_id: "drop_reply",
                      healthy[1].identity.meter_id: "drop_request"}  # fmt: skip
        for meter, action in faults.items():
            _http("POST", f"{control}/v1/faults", {"meter": meter, "action": action, "on": "topup"})
        stamp = common.clock.current().now(tz).strftime("%H%M%S")
        for i, m in enumerate(local):
            wallet = m.wallet
            assert wallet is not None
            meter = m.identity.meter_id
            customer = wallet.customer_number
            amount = AMOUNT_FEN
            note = "dead meter" if m.faults.dead else faults.get(meter, "")
            if healthy and len(healthy) >= 6 and m is healthy[2]:
                customer, note = "999999999999", "wrong customer number"
            if healthy and len(healthy) >= 6 and m is healthy[3]:
                amount, note = wallet.limits.hoarding_fen + 100, "over the hoarding limit"
            order_id = f"demo-{stamp}-{i:03d}"
            body = {"order_id": order_id, "meter": meter, "customer": customer,
                    "amount_fen": amount, "deadline": deadline}  # fmt: skip
            status, answer = _http("POST", f"{self.url}/v1/topups", body, self.token)
            if status != 201:
                raise RuntimeError(f"POST /v1/topups {order_id}: {status} {answer}")
            self.orders.append(("topups", order_id))
            self.plan[order_id] = note
        for j, m in enumerate(healthy[4:6]):
            for action in ("trip", "allow_close"):
                order_id = f"demo-{stamp}-relay-{j}-{action}"
                body = {"order_id": order_id, "meter": m.identity.meter_id, "action": action,
                        "deadline": deadline}  # fmt: skip
                status, answer = _http("POST", f"{self.url}/v1/relay-orders", body, self.token)
                if status != 201:
                    raise RuntimeError(f"POST /v1/relay-orders {order_id}: {status} {answer}")
                self.orders.append(("relay-orders", order_id))

    def wait(self, stack: _Starter, within_s: float) -> dict[str, dict[str, Any]]:
        """Every order's final view (polls the API, as billing would)."""
        end = time.monotonic() + within_s
        final: dict[str, dict[str, Any]] = {}
        while time.monotonic() < end:
            stack.check()
            for kind, order_id in self.orders:
                if order_id in final:
                    continue
                status, view = _http("GET", f"{self.url}/v1/{kind}/{order_id}", None, self.token)
                if status == 200 and view["state"] in TERMINAL:
                    final[order_id] = view
            if len(final) == len(self.orders):
                break
            time.sleep(1.0)
        return final

    def report(self, control: str, final: dict[str, dict[str, Any]], store: Any) -> list[str]:
        """The 远程充值成功率 line (from the store, as `meterlink central report --topups`
        counts) beside the simulator's own credit record."""
        from central.topup.kpi import compute, rate_line
        from central.topup.orders import OrderBook

        tz = zoneinfo.ZoneInfo(str(self.fleet.world.tz))
        ours = {order_id for _, order_id in self.orders}
        book = OrderBook(store, tz)
        days = sorted(
            {book.day_of(common.clock.current().time()), *(v["day"] for v in final.values())}
        )
        orders = [o for o in book.orders_of_days(days) if o.order_id in ours]
        day = days[-1]
        lines = [f"top-ups: {rate_line(compute(day, orders))}"]
        by_state: dict[str, list[str]] = {}
        for o in orders:
            key = f"{o.kind} {o.state.value}" + (f" ({o.reason})" if o.reason else "")
            note = self.plan.get(o.order_id)
            by_state.setdefault(key, []).append(o.order_id + (f" [{note}]" if note else ""))
        for key, ids in sorted(by_state.items()):
            shown = ", ".join(ids[:3]) + (" …" if len(ids) > 3 else "")
            lines.append(f"  {key}: {len(ids)} — {shown}")
        _, credits = _http("GET", f"{control}/v1/credits")
        remote = [c for c in credits["credits"] if c["source"] == "remote"]
        meters = {c["meter"] for c in remote}
        repeated = credits["repeated"]
        confirmed = sum(1 for o in orders if o.kind == "topup" and o.state.value == "confirmed")
        lines.append(
            f"simulator's credit record: {len(remote)} remote credits on {len(meters)} meters"
            f" (confirmed top-ups: {confirmed}); meters credited twice for one purchase count:"
            f" {len(repeated)}" + (f" {repeated}" if repeated else " (none)")
        )
        return lines
