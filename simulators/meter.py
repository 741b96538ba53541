"""One simulated meter: identity, clock, registers, daily freeze, wallet, relay, relay events.

Everything a meter shows is computed from its own clock when asked (`values()`), so tests can
move time (`WorldClock.set`, `Meter.set_time`) and read the consequences without sleeping.
Values are in the shared measurement vocabulary; `read(di)` encodes them with the DL/T 645
catalogue, the single source of formats.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from protocols.dlt645 import DataItem, Edition, History, lookup
from protocols.dlt645.tariff import is_tariff_di
from protocols.errors import LocalProtocolError
from protocols.measurements import energy_name
from protocols.tariff import TariffSetup
from simulators.clock import MeterClock, WorldClock
from simulators.energy import Accumulator, LoadProfile, TouTable
from simulators.esam import Esam
from simulators.faults import MeterFaults
from simulators.record import CreditRecord
from simulators.relay import Relay
from simulators.tariff import MeterTariff
from simulators.wallet import Wallet

__all__ = ["FREEZE_RECORDS", "FreezeRecord", "Identity", "Meter", "RelayEvent"]

FREEZE_RECORDS = 62
RELAY_EVENT_RECORDS = 10
SETTLEMENT_RECORDS = 12
DEFAULT_PRICES = (1.0, 0.8, 0.55, 0.3)
_PHASE_SHARES = {1: (1.0,), 3: (0.36, 0.33, 0.31)}
_PHASES = ("a", "b", "c")
Values = dict[str, float | int | str]


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    """communication address, 12 digits nameplate order (for Modbus meters: unused digits)"""
    meter_number: str
    customer_number: str
    protocol: str
    model: str
    manufacturer: str
    phases: int
    tariffs: int
    prepaid: bool
    bus: str = "bus"
    district: str = ""
    unit_id: int = 0
    """Modbus unit id (0 for DL/T 645 meters)"""

    @property
    def edition(self) -> Edition | None:
        return {"dlt645-2007": Edition.V2007, "dlt645-1997": Edition.V1997}.get(self.protocol)

    @property
    def meter_id(self) -> str:
        """The archive's meter id: the nameplate address (= meter number; a meter with a
        duplicated address still has its own), or ``<bus>:<unit id>`` for Modbus."""
        return f"{self.bus}:{self.unit_id}" if self.protocol == "modbus" else self.meter_number


@dataclass(frozen=True, slots=True)
class FreezeRecord:
    time: dt.datetime
    imported: tuple[float, ...]
    exported: tuple[float, ...]

    def values(self) -> Values:
        out: Values = {"freeze_time": self.time.isoformat()}
        out.update(_energy_values("energy_import", self.imported))
        out.update(_energy_values("energy_export", self.exported))
        return out


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """A relay trip (跳闸记录 1D 00 FF NN) or closing (合闸记录 1E 00 FF NN)."""

    time: dt.datetime
    operator: int
    """the operator code of the 1CH command (4 bytes, LE); 0 for the meter's own (money) logic"""
    energies: Values
    """total forward/reverse active and quadrant I-IV reactive energy at that moment"""

    def values(self) -> Values:
        return {
            "relay_event_time": self.time.replace(microsecond=0).isoformat(),
            "relay_event_operator": self.operator,
            **self.energies,
        }


def _energy_values(family: str, tariffs: tuple[float, ...] | list[float]) -> Values:
    rounded = [round(e, 2) for e in tariffs]
    out: Values = {energy_name(family, 0): round(sum(rounded), 2)}
    for i, e in enumerate(rounded, start=1):
        out[energy_name(family, i)] = e
    return out


@dataclass
class Meter:
    identity: Identity
    clock: MeterClock
    importer: Accumulator
    exporter: Accumulator
    power_factor: float
    relay: Relay = field(default_factory=Relay)
    wallet: Wallet | None = None
    esam: Esam | None = None
    faults: MeterFaults = field(default_factory=MeterFaults)
    reply_limit: int = 200
    password: bytes = b"\x02\x00\x00\x00"
    """level-02 password accepted for plain writes and remote control"""
    freezes: deque[FreezeRecord] = field(default_factory=lambda: deque(maxlen=FREEZE_RECORDS))
    last_time_sync: dt.date | None = None
    pending: tuple[int, bytes] | None = None
    """DI and the not yet sent rest of a long reply (12H follow-up frames)"""
    last_reply: bytes | None = None
    """data field of the last normal reply (1997 03H re-read)"""
    relay_events: dict[str, deque[RelayEvent]] = field(
        default_factory=lambda: {
            "relay_trip": deque(maxlen=RELAY_EVENT_RECORDS),
            "relay_close": deque(maxlen=RELAY_EVENT_RECORDS),
        }
    )
    relay_counts: dict[str, int] = field(
        default_factory=lambda: {"relay_trip": 0, "relay_close": 0}
    )
    credits: list[CreditRecord] = field(default_factory=list)
    """every credit this meter's wallet booked (remote, opening, card)"""
    on_credit: Callable[[CreditRecord], None] | None = None
    """the fleet's credit log (set by the fleet)"""
    card_purchases: list[tuple[dt.datetime, int]] = field(default_factory=list)
    """out-of-band purchases still to come: (meter time, amount in fen), in time order"""
    tariff: MeterTariff | None = None
    """the tariff set-up this meter executes (DL/T 645-2007 meters of a fleet; None: the fixed
    hourly table of `simulators.energy.DEFAULT_TOU` and no tariff items)"""

    @property
    def mode(self) -> str | None:
        """ "local" (本地费控: the wallet is in the meter), "remote" (远程费控: an ESAM, the
        balance with billing) or None (no cost control)."""
        if self.wallet is not None:
            return "local"
        return "remote" if self.esam is not None else None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        identity: Identity,
        world: WorldClock,
        *,
        salt: int,
        base_kw: float,
        initial_kwh: float,
        power_factor: float = 0.95,
        offset_s: float = 0.0,
        drift_ppm: float = 0.0,
        history_days: int = 400,
        prefill: bool = True,
    ) -> Meter:
        clock = MeterClock(world, offset_s=offset_s, drift_ppm=drift_ppm)
        tou = TouTable(identity.tariffs)
        profile = LoadProfile(base_kw, salt)
        origin = clock.now().date() - dt.timedelta(days=history_days)
        share = initial_kwh / max(1, identity.tariffs)
        importer = Accumulator(profile, tou, origin, tuple([share] * identity.tariffs))
        exporter = Accumulator(profile, tou, origin, tuple([0.0] * identity.tariffs), ratio=0.0)
        meter = cls(identity, clock, importer, exporter, power_factor)
        if prefill:
            meter.prefill_freezes()
        return meter

    def attach_tariff(self, tariff: MeterTariff) -> None:
        """Execute `tariff` from now on: energy books into the registers its set-up selects (the
        history is recomputed with it: call this while building the fleet, before a wallet
        takes its registers as the start), its items answer."""
        if tariff.registers != self.importer.tou.tariffs:
            raise ValueError(
                f"{tariff.registers} registers, the meter keeps {self.importer.tou.tariffs}"
            )
        self.tariff = tariff
        for acc in (self.importer, self.exporter):
            acc.tou = tariff
            acc.reset_cache()
        if self.freezes:
            self.freezes.clear()
            self.prefill_freezes()

    def tariff_setup(self, now: dt.datetime | None = None) -> TariffSetup | None:
        """What the meter's tariff items answer at `now` (None: it keeps no tariff set-up)."""
        if self.tariff is None:
            return None
        now = self.tick() if now is None else now
        setup = self.tariff.setup_at(now, self.status_words(now)["status_word_3"])  # type: ignore[arg-type]
        used = sum(self.importer.tariffs_at(now)) - sum(
            self.importer.tariffs_at(self._ladder_start(now))
        )
        return self.tariff.with_prices(setup, used)

    def technician_visit(self) -> list[str]:
        """A work order carried out on site: the tariff set-up reprogrammed as planned and, when
        it is off by more than a broadcast sync can fix, the clock set (校时 counts up). Energy
        stays continuous. Returns the programming-event counters that moved."""
        tariff = self.tariff
        if tariff is None:
            raise ValueError(f"meter {self.identity.meter_id} keeps no tariff set-up")
        now = self.tick()
        moved = tariff.technician_visit(now)
        if abs(self.clock.error_s) > 300:
            self.set_time(self.clock.world.now())
            key = "03300400"
            counters = dict(tariff.programmed.event_counters)
            if key in counters:
                counters[key] += 1
                tariff.programmed = replace(tariff.programmed, event_counters=counters)
                moved.append(key)
            if tariff.defect == "clock_drift":
                tariff.defect, tariff.detail = None, ""
        for acc in (self.importer, self.exporter):
            before = acc.tariffs_at(now)
            acc.reset_cache()
            after = acc.tariffs_at(now)
            acc.offset = [b - a for b, a in zip(before, after, strict=True)]
        return moved

    def _ladder_start(self, now: dt.datetime) -> dt.datetime:
        """The last settlement of the ladder: its yearly day if it has one, else the 1st."""
        assert self.tariff is not None
        setup = self.tariff.stored(now)
        stored = setup.ladders_current[0].settlement_days if setup.ladders_current else ()
        days = [s for s in stored if 1 <= s.month <= 12 and 1 <= s.day <= 28]
        if not days:
            return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        starts = []
        for s in days:
            start = dt.datetime(now.year, s.month, s.day, min(s.hour, 23))
            starts.append(start if start <= now else start.replace(year=now.year - 1))
        return max(starts)

    def prefill_freezes(self) -> None:
        """Record the daily freezes of the last `FREEZE_RECORDS` days (once, when built)."""
        today = self.clock.now().date()
        for back in range(FREEZE_RECORDS - 1, -1, -1):
            self._freeze_at(dt.datetime.combine(today - dt.timedelta(days=back), dt.time()))

    def _freeze_at(self, when: dt.datetime) -> None:
        self.freezes.appendleft(
            FreezeRecord(
                when,
                tuple(self.importer.tariffs_at(when)),
                tuple(self.exporter.tariffs_at(when)),
            )
        )

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        return self.clock.now()

    def tick(self) -> dt.datetime:
        """Let the meter catch up with its clock: daily freezes, prepaid trip. Returns now."""
        now = self.clock.now()
        last = self.freezes[0].time.date() if self.freezes else now.date()
        day = last + dt.timedelta(days=1)
        while day <= now.date():
            self._freeze_at(dt.datetime.combine(day, dt.time()))
            day += dt.timedelta(days=1)
        while self.card_purchases and self.card_purchases[0][0] <= now:
            when, amount = self.card_purchases.pop(0)
            self.card_purchase(amount, when)
        if self.wallet is not None:
            energies = self.importer.tariffs_at(now)
            if self.wallet.exhausted(energies):
                if self.relay.prepaid_trip():
                    self.contact_changed(now)
            elif self.relay.prepaid_tripped and (
                self.wallet.balance_fen(energies) > self.wallet.limits.close_allowed_fen
            ):
                self.relay.prepaid_restore()
                self.press_button()
        return now

    def set_time(self, when: dt.datetime) -> None:
        """Re-set the meter's clock (14H write, 08H sync): registers stay continuous."""
        old = self.clock.now()
        self.importer.rebase(old, when)
        self.exporter.rebase(old, when)
        self.clock.set_now(when)

    def contact_changed(self, now: dt.datetime, operator: int = 0) -> None:
        """The contact moved: energy stops or resumes, and a relay event is recorded."""
        for acc in (self.importer, self.exporter):
            if self.relay.open:
                acc.pause(now)
            else:
                acc.resume(now)
        kind = "relay_trip" if self.relay.open else "relay_close"
        energies = self.energies(now)
        totals = {
            k: energies[k]
            for k in (
                "energy_import_total_kwh",
                "energy_export_total_kwh",
                *(f"energy_reactive_q{q}_total_kvarh" for q in range(1, 5)),
            )
        }
        self.relay_events[kind].appendleft(RelayEvent(now, operator, totals))
        self.relay_counts[kind] += 1

    # -- purchases ------------------------------------------------------------------------------
    def book_credit(
        self, amount_fen: int, count: int, now: dt.datetime, source: str
    ) -> CreditRecord:
        """Credit the wallet (the caller checked the rules) and log it; the relay follows."""
        wallet = self.wallet
        assert wallet is not None
        energies = self.importer.tariffs_at(now)
        wallet.credit(amount_fen, count, energies, now)
        record = CreditRecord(
            self.identity.meter_id,
            count,
            amount_fen,
            source,
            now,
            self.clock.world.now(),
            wallet.remaining_fen(energies),
        )
        self.credits.append(record)
        if self.on_credit is not None:
            self.on_credit(record)
        self.tick()
        return record

    def card_purchase(
        self, amount_fen: int, when: dt.datetime | None = None
    ) -> CreditRecord | None:
        """An out-of-band purchase (IC card, handheld terminal, another system): the next
        purchase count, at `when` (meter time, default now). None when the meter refuses it
        (no wallet, not opened, suspended, over the hoarding limit)."""
        wallet = self.wallet
        now = when if when is not None else self.clock.now()
        if wallet is None or not wallet.opened or amount_fen <= 0:
            return None
        if self.esam is not None and self.esam.suspended(now):
            return None
        if wallet.would_hoard(amount_fen, self.importer.tariffs_at(now)):
            return None
        return self.book_credit(amount_fen, wallet.purchase_count + 1, now, "card")

    def schedule_card_purchase(self, when: dt.datetime, amount_fen: int) -> None:
        """A card purchase that happens when the meter's clock reaches `when`."""
        self.card_purchases.append((when, amount_fen))
        self.card_purchases.sort(key=lambda p: p[0])

    def press_button(self) -> bool:
        """The customer presses the close button (after "close allowed")."""
        if self.relay.press_button():
            self.contact_changed(self.clock.now())
            return True
        return False

    # -- values ---------------------------------------------------------------------------------
    def energies(self, when: dt.datetime) -> Values:
        imp = self.importer.tariffs_at(when)
        exp = self.exporter.tariffs_at(when)
        tan = math.tan(math.acos(self.power_factor))
        zero = [0.0] * len(imp)
        out: Values = {}
        for family, tariffs in (
            ("energy_import", imp),
            ("energy_export", exp),
            ("energy_combined", [a + b for a, b in zip(imp, exp, strict=True)]),
            ("energy_reactive_q1", [e * tan for e in imp]),
            ("energy_reactive_q2", zero),
            ("energy_reactive_q3", zero),
            ("energy_reactive_q4", [e * tan for e in exp]),
            ("energy_reactive_combined1", [e * tan for e in imp]),
            ("energy_reactive_combined2", [e * tan for e in exp]),
        ):
            out.update(_energy_values(family, tariffs))
        return out

    def instantaneous(self, when: dt.datetime) -> Values:
        phases = self.identity.phases
        total_kw = 0.0 if self.relay.open else self.importer.profile.power_kw(when)
        pf = 1.0 if total_kw == 0 else self.power_factor
        angle = math.acos(pf)
        minute = when.hour * 60 + when.minute
        out: Values = {}
        currents: list[float] = []
        for i, share in enumerate(_PHASE_SHARES[phases]):
            p = _PHASES[i]
            volts = round(220.0 * (1 + 0.02 * math.sin(2 * math.pi * minute / 1440 + i)), 1)
            kw = round(total_kw * share, 4)
            amps = round(kw * 1000 / (volts * pf), 3)
            currents.append(amps)
            out[f"voltage_{p}_v"] = volts
            out[f"current_{p}_a"] = amps
            out[f"power_active_{p}_kw"] = kw
            out[f"power_reactive_{p}_kvar"] = round(kw * math.tan(angle), 4)
            out[f"power_apparent_{p}_kva"] = round(kw / pf, 4)
            out[f"power_factor_{p}"] = round(pf, 3)
            out[f"phase_angle_{p}_deg"] = round(math.degrees(angle), 1)
        out["power_active_total_kw"] = round(total_kw, 4)
        out["power_reactive_total_kvar"] = round(total_kw * math.tan(angle), 4)
        out["power_apparent_total_kva"] = round(total_kw / pf, 4)
        out["power_factor_total"] = round(pf, 3)
        if phases == 1:
            out["current_n_a"] = currents[0]
        else:
            a, b, c = currents
            out["current_n_a"] = round(
                math.sqrt(max(0.0, a * a + b * b + c * c - a * b - b * c - c * a)), 3
            )
        out["frequency_hz"] = round(50 + 0.03 * math.sin(2 * math.pi * minute / 97), 2)
        out["power_active_avg_1min_kw"] = round(total_kw, 4)
        out["demand_active_kw"] = round(total_kw, 4)
        out["demand_reactive_kvar"] = round(total_kw * math.tan(angle), 4)
        out["temperature_c"] = round(24 + 6 * math.sin(2 * math.pi * (when.hour - 9) / 24), 1)
        out["battery_clock_v"] = 3.62
        out["battery_reading_v"] = 6.05
        kw_max, at = self._max_demand(when)
        out["demand_max_import_kw"] = round(kw_max, 4)
        out["demand_max_import_time"] = at.isoformat()
        out["demand_max_export_kw"] = 0.0
        out["demand_max_export_time"] = when.replace(day=1, hour=0, minute=0, second=0).isoformat()
        return out

    def _max_demand(self, when: dt.datetime) -> tuple[float, dt.datetime]:
        """The month's highest hourly power so far (the demand period is the hour here)."""
        profile = self.importer.profile
        best, at = 0.0, when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        day = at.date()
        while day <= when.date():
            last_hour = when.hour if day == when.date() else 23
            hour = max(range(last_hour + 1), key=lambda h: profile.shape[h])
            kw = profile.base_kw * profile.shape[hour] * profile.day_factor(day)
            if kw > best:
                best, at = kw, dt.datetime.combine(day, dt.time(hour))
            day += dt.timedelta(days=1)
        return best, at

    def status_words(self, when: dt.datetime) -> Values:
        word1 = 0
        word3 = self.relay.status_bits
        if self.wallet is not None:
            word3 |= 1 << 9  # money-type prepaid
            if self.wallet.overdraft_fen(self.importer.tariffs_at(when)) > 0:
                word1 |= 1 << 14
            if not self.wallet.opened:
                word3 |= 1 << 15
        if self.esam is not None and self.esam.active(when) is not None:
            word3 |= 1 << 13  # identity authenticated
        if self.tariff is not None:
            setup = self.tariff.stored(when)
            zone_set, table_set = setup.active_zone_set, setup.active_table_set
            if setup.switch_zones is not None and setup.switch_zones <= when:
                zone_set = 3 - zone_set
            if setup.switch_tables is not None and setup.switch_tables <= when:
                table_set = 3 - table_set
            word3 |= (1 << 5 if zone_set == 2 else 0) | (1 if table_set == 2 else 0)
        words = {1: word1, 2: 0, 3: word3, 4: 0, 5: 0, 6: 0, 7: 0}
        return {f"status_word_{n}": w for n, w in words.items()}

    def prices(self) -> tuple[float, ...]:
        if self.wallet is not None:
            return self.wallet.prices
        n = self.identity.tariffs
        return tuple(DEFAULT_PRICES[min(i, 3)] for i in range(n))

    def values(self, when: dt.datetime | None = None) -> Values:
        """Every current measurement at meter time `when` (default: now)."""
        now = self.tick() if when is None else when
        ident = self.identity
        out: Values = {
            "meter_date": now.date().isoformat(),
            "meter_time": now.time().replace(microsecond=0).isoformat(),
            "meter_datetime": now.replace(microsecond=0).isoformat(),
            "comm_address": ident.address,
            "meter_number": ident.meter_number,
            "customer_number": (
                self.wallet.customer_number if self.wallet is not None else ident.customer_number
            ),
            "device_number": ident.meter_number,
        }
        out.update(self.energies(now))
        out.update(self.instantaneous(now))
        out.update(self.status_words(now))
        out["relay_trip_count"] = self.relay_counts["relay_trip"]
        out["relay_close_count"] = self.relay_counts["relay_close"]
        if self.esam is not None:
            out["auth_session_remaining_min"] = self.esam.remaining_minutes(now)
        local = self.tariff is not None and self.tariff.stored(now).prices_current is not None
        setup = self.tariff_setup(now) if local else None
        if setup is not None and setup.current_ladder_price is not None:
            # 0280000B is 当前阶梯电价: a local meter with a ladder answers its ladder price
            out["price_current_yuan_per_kwh"] = float(setup.current_ladder_price)
        else:
            tariff = self.importer.tou.minutes(now.date())[now.hour * 60 + now.minute]
            prices = self.prices()
            out["price_current_yuan_per_kwh"] = prices[min(tariff, len(prices)) - 1]
        if self.wallet is not None:
            w = self.wallet
            energies = self.importer.tariffs_at(now)
            out["balance_yuan"] = w.remaining_fen(energies) / 100
            out["overdraft_yuan"] = w.overdraft_fen(energies) / 100
            out["alarm_limit_1_yuan"] = w.limits.alarm_1_fen / 100
            out["alarm_limit_2_yuan"] = w.limits.alarm_2_fen / 100
            out["overdraft_limit_yuan"] = w.limits.overdraft_fen / 100
            out["hoarding_limit_yuan"] = w.limits.hoarding_fen / 100
            out["close_allowed_limit_yuan"] = w.limits.close_allowed_fen / 100
            out["purchase_count"] = w.purchase_count
            out["purchase_total_yuan"] = w.total_fen / 100
        return out

    def value(self, name: str) -> float | int | str:
        return self.values()[name]

    def history_values(self, history: History, now: dt.datetime | None = None) -> Values | None:
        """Values of a past record (settlement day, daily freeze, purchase), None if absent."""
        now = self.tick() if now is None else now
        if history.kind == "daily_freeze":
            if history.index > len(self.freezes):
                return None
            return self.freezes[history.index - 1].values()
        if history.kind == "purchase":
            record = self.wallet.record(history.index) if self.wallet is not None else None
            return record.values() if record is not None else None
        if history.kind in self.relay_events:
            events = self.relay_events[history.kind]
            if history.index > len(events):
                return None
            return events[history.index - 1].values()
        if history.kind == "settlement" and 1 <= history.index <= SETTLEMENT_RECORDS:
            return self.energies(settlement_time(now, history.index))
        return None

    def freeze_history(self) -> list[FreezeRecord]:
        """Daily freezes, latest first (index 0 = `05 06 xx 01`)."""
        self.tick()
        return list(self.freezes)

    # -- DL/T 645 ------------------------------------------------------------------------------
    def read(self, di: int, edition: Edition | None = None) -> bytes | None:
        """The value bytes a read of `di` returns, or None for "no such data"."""
        edition = edition or self.identity.edition or Edition.V2007
        tariff = self.tariff
        item = lookup(di, edition)
        if tariff is not None and edition is Edition.V2007 and is_tariff_di(di):
            if tariff.denies(di):
                return None
            if item is None:  # catalogued items (clock, status word 3, 0280000B) answer below
                setup = self.tariff_setup()
                assert setup is not None
                return tariff.replies(setup).get(di)
        if item is None:
            return None
        return self.encode(item)

    def encode(self, item: DataItem, now: dt.datetime | None = None) -> bytes | None:
        values = (
            self.values(now) if item.history is None else self.history_values(item.history, now)
        )
        if values is None:
            return None
        try:
            return item.encode(values)
        except LocalProtocolError:
            return None


def settlement_time(now: dt.datetime, index: int) -> dt.datetime:
    """The `index`-th last settlement moment (the 1st of a month, 00:00)."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = first.year * 12 + first.month - 1 - (index - 1)
    return first.replace(year=month // 12, month=month % 12 + 1)
