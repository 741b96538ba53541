"""Bus-time budget: can the daily plan physically finish on each bus in its window?

Computed at start (and SIGHUP) from the bus's baud and framing, the frames the plan exchanges
per meter, the meters' reply delay, and the time a silent meter costs (our reply window). A
carrier bus: the module's typical read time (real-CCO medians) shared by the window of
requests in flight, plus the frames' time on the serial line to the module. When a
bus cannot read all its meters even once before the deadline, or cannot leave room for retries,
the agent says so with the numbers — before the first night, not after a month of low rates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from agent.config import AgentConfig, MeterConfig, parse_hhmm
from agent.transports import BusUrl
from agent.transports.base import REPLY_SLACK_S

__all__ = ["BusBudget", "daily_budget", "tariff_read_s"]

TYPICAL_REPLY_DELAY_S = 0.26
"""midpoint of the standard's 20-500 ms reply window; a planning figure, not a measurement"""
ASSUMED_FAILURE_SHARE = 0.02
"""share of meters assumed silent in a round (the complement of the 98% target)"""

#: carrier modules: planning figures from real-CCO captures (reference §9): an AFN F1 F1 read's
#: median 1.4 s, an AFN13 F1 point read's 0.7 s, a failed read answered after 10-12 s
CARRIER_READ_S = {"hplc": 1.4, "point": 0.7, "router": 0.7}
CARRIER_FAILED_S = 12.0
_CARRIER_FRAME = 15 + 12 + 4  # header, address field, protocol/length of a read's data unit

# DL/T 645-2007 frame sizes without wake-up: read request L=4; replies L=4+value
_REQUEST = 16
_REPLY = {"freeze_time": 12 + 4 + 5, "energy_block": 12 + 4 + 4 * 5, "balance": 12 + 4 + 4}
_MODBUS_REQUEST, _MODBUS_REPLY = 8, 5 + 2 * 20


#: one meter's tariff read (agent.plans.tariff), planning figures: value bytes of each item
#: (clock 7, status word 2, switch times 5, counts 1-2, weekend 1+1, zone and daily tables 42,
#: holidays 4, counters 3; local meters: price blocks 16, ladder blocks 64, ladder zones 12,
#: prices 4) for a plan of 3 daily tables and 10 holidays
TARIFF_VALUES_REMOTE = [7, 2, 5, 5, 1, 1, 1, 1, 2, 1, 1, 42, 42] + [42] * 6 + [4] * 10 + [3] * 5
TARIFF_VALUES_LOCAL = [*TARIFF_VALUES_REMOTE, 3, 3, 16, 16, 64, 64, 12, 12, 4, 4, 4, 1, 5, 5, 5]
TARIFF_STAGES = 3
"""read_many calls of one meter's tariff read (what a carrier module packs)"""
_COUNTER_REPLY = 12 + 4 + 3


@dataclass(frozen=True)
class BusBudget:
    bus: str
    meters: int
    exchanges_per_round: int
    round_s: float
    """one round over every meter, the assumed share silent"""
    window_s: float
    rounds_possible: float
    tariff_s: float = 0.0
    """the tariff plan's bus time on an average day (its reads spread over `every_days`),
    taken off the window before the daily rounds are counted"""

    @property
    def ok(self) -> bool:
        return self.rounds_possible >= 2  # one pass plus room for at least one retry pass

    def describe(self) -> str:
        verdict = "fits" if self.ok else "DOES NOT FIT"
        tariff = f", tariff plan {self.tariff_s:.0f} s/day" if self.tariff_s else ""
        return (
            f"bus {self.bus}: {self.meters} meters, {self.exchanges_per_round} exchanges/round, "
            f"{self.round_s:.0f} s per round in a {self.window_s:.0f} s window{tariff} "
            f"({self.rounds_possible:.1f} rounds) - {verdict}"
        )


def _exchange_s(url: BusUrl, request: int, reply: int) -> float:
    return (
        url.wire_time(request + url.wakeup)
        + TYPICAL_REPLY_DELAY_S
        + url.wire_time(reply)
        + url.frame_gap_ms / 1000
    )


def _per_meter(url: BusUrl, meter: MeterConfig, cfg: AgentConfig) -> tuple[int, float, float]:
    """(exchanges, seconds when it answers, seconds when it is silent)."""
    silent = (
        url.wire_time(_REQUEST + url.wakeup + 1)
        + url.reply_timeout_ms / 1000
        + REPLY_SLACK_S
        + url.frame_gap_ms / 1000
    )
    if meter.protocol == "modbus":
        t = _exchange_s(url, _MODBUS_REQUEST, _MODBUS_REPLY)
        return 1, t, url.timeout_ms / 1000
    if meter.protocol == "dlt645-1997":
        return 1, _exchange_s(url, 14, 12 + 2 + 20), silent
    replies = [_REPLY["freeze_time"], _REPLY["energy_block"]]
    if cfg.plans.daily.reverse_energy:
        replies.append(_REPLY["energy_block"])
    if cfg.plans.daily.prepaid_balance and meter.prepaid:
        replies.append(_REPLY["balance"])
    replies += [_COUNTER_REPLY] * _watched(meter, cfg)
    return len(replies), sum(_exchange_s(url, _REQUEST, r) for r in replies), silent


def _watched(meter: MeterConfig, cfg: AgentConfig) -> int:
    """Programming-event counters the daily read also reads for the tariff plan."""
    tariff = cfg.plans.tariff
    if not tariff.enabled or meter.protocol != "dlt645-2007":
        return 0
    return len(tariff.watch) + (1 if meter.prepaid and "03300F00" not in tariff.watch else 0)


def tariff_read_s(url: BusUrl, meter: MeterConfig) -> tuple[int, float]:
    """(exchanges, bus seconds) of one meter's tariff read, planning figures (a local-prepaid
    meter when archived as prepaid). A carrier module packs each stage into one exchange."""
    values = TARIFF_VALUES_LOCAL if meter.prepaid else TARIFF_VALUES_REMOTE
    if url.is_carrier:
        line = url.wire_time(sum(_REQUEST + 16 + v for v in values) + 2 * 2 * _CARRIER_FRAME)
        mode = url.mode if url.mode in CARRIER_READ_S else "hplc"
        exchanges = TARIFF_STAGES + 1 if mode == "hplc" else len(values)
        return exchanges, exchanges * CARRIER_READ_S[mode] + line
    return len(values), sum(_exchange_s(url, _REQUEST, 16 + v) for v in values)


def _carrier_per_meter(
    url: BusUrl, meter: MeterConfig, cfg: AgentConfig
) -> tuple[int, float, float, float]:
    """(exchanges, module seconds when it answers, when it fails, line seconds): the module's
    time overlaps up to the window; the serial line to it carries one frame at a time."""
    replies = [_REPLY["freeze_time"], _REPLY["energy_block"]]
    if meter.protocol == "dlt645-1997":
        replies = [12 + 2 + 20]
    if cfg.plans.daily.reverse_energy:
        replies.append(_REPLY["energy_block"])
    if cfg.plans.daily.prepaid_balance and meter.prepaid:
        replies.append(_REPLY["balance"])
    watched = _watched(meter, cfg)
    replies += [_COUNTER_REPLY] * watched
    exchanges = 1 if url.mode == "hplc" else len(replies)  # hplc: the items (counters too) in one
    line = url.wire_time(exchanges * 2 * _CARRIER_FRAME + sum(_REQUEST + r for r in replies))
    return exchanges, exchanges * CARRIER_READ_S[url.mode], CARRIER_FAILED_S, line


def daily_budget(cfg: AgentConfig, meters: list[MeterConfig]) -> list[BusBudget]:
    daily = cfg.plans.daily
    start, deadline = parse_hhmm(daily.start, "start"), parse_hhmm(daily.deadline, "deadline")
    day = dt.date(2000, 1, 1)
    window = (dt.datetime.combine(day, deadline) - dt.datetime.combine(day, start)).total_seconds()
    out = []
    for bus in cfg.buses:
        url = bus.bus_url
        on_bus = [m for m in meters if m.bus == bus.name]
        exchanges, round_s, line_s, tariff_s = 0, 0.0, 0.0, 0.0
        for m in on_bus:
            if cfg.plans.tariff.enabled and m.protocol == "dlt645-2007":
                tariff_s += tariff_read_s(url, m)[1] / cfg.plans.tariff.every_days
            if url.is_carrier:
                n, answering, silent, line = _carrier_per_meter(url, m, cfg)
                line_s += line
            else:
                n, answering, silent = _per_meter(url, m, cfg)
            exchanges += n
            round_s += (1 - ASSUMED_FAILURE_SHARE) * answering + ASSUMED_FAILURE_SHARE * silent
        if url.in_flight > 1:
            round_s /= url.in_flight
            tariff_s /= url.in_flight
        round_s += line_s
        rounds = max(0.0, window - tariff_s) / round_s if round_s else float("inf")
        out.append(BusBudget(bus.name, len(on_bus), exchanges, round_s, window, rounds, tariff_s))
    return out
