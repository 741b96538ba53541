"""A fleet: districts, buses and meters described by rules in a TOML file.

    fleet = load_fleet(Path("simulators/fleets/field.toml"))
    fleet.meters()                 # every Meter
    fleet.archive()                # the archive entries the agent loads
    fleet.encryption_machine()     # makes 03H identity auth and top-up MACs for these meters
    fleet.inject("000000000001", "drop_reply", on="topup")   # a chaos fault (simulators.faults)
    fleet.credits.records()        # every credit booked (no meter may book a count twice)

Every random choice (models, faults, profiles, histories) comes from generators seeded with the
fleet's `seed` and the names of bus and meter, so the same file gives the same fleet.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import hashlib
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

from simulators.bus import Bus
from simulators.carrier.config import CarrierConfig, CarrierConfigError
from simulators.carrier.network import plan_network
from simulators.clock import DEFAULT_TIMEZONE, WorldClock
from simulators.esam import EncryptionMachine, Esam
from simulators.faults import BusFaults, FaultBook, InjectedFault, MeterFaults, NoiseWindow, rng_for
from simulators.meter import DEFAULT_PRICES, Identity, Meter
from simulators.models import model
from simulators.record import CreditLog, Recorder, TariffTruth
from simulators.tariff import (
    DEFECTS,
    EVENT_DIS,
    MeterTariff,
    Plan,
    applicable,
    builtin_plans,
    misprogram,
    plans_toml,
    program,
)
from simulators.wallet import Limits, PurchaseRecord, Wallet

__all__ = ["Fleet", "FleetError", "archive_entries", "load_fleet", "parse_fleet"]

_TOP_KEYS = {
    "seed", "start", "timezone", "frozen", "master_key", "district", "inject", "purchase", "tariff",
}  # fmt: skip
_TARIFF_KEYS = {"plans", "misprogram_share", "switch_after_days", "reprogram_after_days",
                "clock_error_s", "ladder_form"}  # fmt: skip
_TARIFF_DEFAULTS: dict[str, Any] = {
    "plans": True,
    "misprogram_share": 0.0,
    "switch_after_days": 2,
    "reprogram_after_days": 1,
    "clock_error_s": [600.0, 1800.0],
    "ladder_form": "2013",
}
_DISTRICT_KEYS = {"name", "bus"}
_BUS_KEYS = {
    "name", "protocol", "baud", "noise", "loss", "corrupt", "meters", "timing", "carrier",
}  # fmt: skip
_PROTOCOLS = ("dlt645", "modbus", "carrier")
_DEFAULT_BAUD = {"dlt645": 2400, "modbus": 9600, "carrier": 9600}
MAX_RULE_METERS = 2040
"""meters one `[[district.bus.meters]]` rule may build: a typo (2000000) must not keep
`meterlink sim serve` building meters for hours"""
_RULE_DEFAULTS: dict[str, Any] = {
    "count": 1,
    "first_address": None,
    "first_unit": 1,
    "models": {"DDZY666": 1},
    "prepaid": 1.0,
    "dead": 0.0,
    "intermittent": 0.0,
    "intermittent_loss": 0.3,
    "loss": 0.0,
    "corrupt": 0.0,
    "slow": 0.0,
    "garbage": 0.0,
    "wakeup": [0, 4],
    "drift_ppm": [0.0, 0.0],
    "offset_s": [0.0, 0.0],
    "base_kw": [0.3, 1.5],
    "balance_yuan": [50.0, 300.0],
    "hoarding_yuan": 5000.0,
    "remote": 0.0,
    "duplicates": 0,
}


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the key path."""


_TABLE: contextvars.ContextVar[str] = contextvars.ContextVar("fleet_table", default="")
"""the table `parse_fleet` is reading (set by `_known`): where an unforeseen error is"""
P = ParamSpec("P")
_BAD_VALUE = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError)
"""what a value of the wrong type or range raises deep inside the builders"""


def _table_named_errors(parse: Callable[P, Fleet]) -> Callable[P, Fleet]:
    """A wrong value the checks did not foresee still ends as one `FleetError` naming the table
    it is in (never a traceback)."""

    @functools.wraps(parse)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Fleet:
        token = _TABLE.set("")
        try:
            return parse(*args, **kwargs)
        except FleetError:
            raise
        except _BAD_VALUE as exc:
            detail = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            where = _TABLE.get() or "the fleet's top level"
            raise FleetError(
                f"{where}: a value of the wrong type or range ({detail[:200]})"
            ) from None
        finally:
            _TABLE.reset(token)

    return checked


@dataclass
class Fleet:
    seed: int | str
    world: WorldClock
    buses: list[Bus]
    master_key: bytes
    recorder: Recorder = field(default_factory=Recorder)
    credits: CreditLog = field(default_factory=CreditLog)
    """every credit any meter booked, in order (chaos tests: no (meter, count) twice)"""
    injected: FaultBook = field(default_factory=FaultBook)
    """injected faults, consulted for every request (`inject`, ``[[inject]]``, control channel)"""
    tariff_plans: dict[str, Plan] = field(default_factory=dict)
    """the utility's tariff plans the meters were programmed from (``[tariff]``)"""

    def __post_init__(self) -> None:
        for bus in self.buses:
            bus.injected = self.injected
            for m in bus.meters:
                m.on_credit = self.credits.add

    def meters(self) -> list[Meter]:
        return [m for b in self.buses for m in b.meters]

    def bus(self, name: str) -> Bus:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(f"no bus {name!r} in the fleet")

    def meter(self, meter_id: str) -> Meter:
        """By archive id: the nameplate address (DL/T 645) or ``<bus>:<unit>`` (Modbus)."""
        for m in self.meters():
            if m.identity.meter_id == meter_id:
                return m
        raise KeyError(f"no meter {meter_id!r} in the fleet")

    def archive(self) -> list[dict[str, object]]:
        return archive_entries(self)

    def encryption_machine(self) -> EncryptionMachine:
        return EncryptionMachine(self.master_key)

    def inject(self, meter: str, action: str, *, on: str = "any", **options: Any) -> InjectedFault:
        """Inject a fault (`simulators.faults.INJECTED_ACTIONS`) into the next requests of kind
        `on` to `meter`; options: times (default 1, None = until cleared), skip, late_s, serr,
        err. The returned rule counts its `hits`."""
        self.meter(meter)  # KeyError for a meter that is not in the fleet
        return self.injected.add(InjectedFault(meter, action, on, **options))

    def clear_faults(self, meter: str | None = None) -> int:
        return self.injected.clear(meter)

    def tariff_plans_toml(self) -> str:
        """The plans in the central side's plan-file format (what the utility declares)."""
        return plans_toml(self.tariff_plans)

    def tariff_truth(self, day: dt.date | None = None) -> dict[str, TariffTruth]:
        """Per meter that carries a tariff set-up: what was done to it and the outcome the
        central check must give on `day` (default: the world's date)."""
        day = day if day is not None else self.world.now().date()
        out: dict[str, TariffTruth] = {}
        for m in self.meters():
            t = m.tariff
            if t is None:
                continue
            defect, detail, outcome = t.defect, t.detail, t.outcome(day)
            if m.faults.dead:
                defect, detail, outcome = "dead", "the meter never answers", "NOT_READ"
            elif t.denied:
                defect, outcome = "old_firmware", "UNSUPPORTED_DI"
                detail = f"denies DIs starting {', '.join(t.denied)}"
            since = t.since.isoformat() if t.since is not None and defect == t.defect else None
            out[m.identity.meter_id] = TariffTruth(
                m.identity.meter_id, t.plan.name, defect, detail, since, outcome, day.isoformat()
            )
        return out


def archive_entries(fleet: Fleet) -> list[dict[str, object]]:
    """The meter archive entries (item shape of the "archive" payload schema)."""
    out: list[dict[str, object]] = []
    for bus in fleet.buses:
        for m in bus.meters:
            ident = m.identity
            entry: dict[str, object] = {"meter": ident.meter_id}
            if ident.protocol == "modbus":
                entry["unit"] = ident.unit_id
            else:
                entry["address"] = ident.meter_number  # what the archive holds
            entry.update(
                {
                    "protocol": ident.protocol,
                    "model": ident.model,
                    "bus": bus.name,
                    "district": bus.district,
                    "manufacturer": ident.manufacturer,
                    "prepaid": ident.prepaid,
                }
            )
            if m.tariff is not None:
                entry["tariff_plan"] = m.tariff.plan.name
            out.append(entry)
    return out


def load_fleet(
    path: Path,
    *,
    world: WorldClock | None = None,
    recorder: Recorder | None = None,
    credits: CreditLog | None = None,
) -> Fleet:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"{path}: {exc.strerror}") from None
    return parse_fleet(text, world=world, recorder=recorder, credits=credits, source=str(path))


@_table_named_errors
def parse_fleet(
    text: str,
    *,
    world: WorldClock | None = None,
    recorder: Recorder | None = None,
    credits: CreditLog | None = None,
    source: str = "fleet",
) -> Fleet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{source}: {exc}") from None
    _known(doc, _TOP_KEYS, "")
    seed = doc.get("seed", 0)
    if world is None:
        start = doc.get("start")
        if isinstance(start, str):
            start = dt.datetime.fromisoformat(start)
        if start is not None and not isinstance(start, dt.datetime):
            raise FleetError("start: expected a local date-time like 2026-03-01T10:00:00")
        if isinstance(start, dt.datetime) and start.tzinfo is not None:
            raise FleetError(
                "start: a local date-time without an offset (the meters' clocks show local"
                " time; their zone is `timezone`)"
            )
        world = WorldClock(start, frozen=bool(doc.get("frozen", False)), tz=_zone(doc))
    key_hex = doc.get("master_key")
    master_key = (
        bytes.fromhex(key_hex)
        if isinstance(key_hex, str)
        else hashlib.sha256(f"meterlink-sim-master/{seed}".encode()).digest()[:16]
    )
    if len(master_key) != 16:
        raise FleetError("master_key: 32 hex digits (16 bytes) expected")
    recorder = recorder if recorder is not None else Recorder()
    tariff_doc = doc.get("tariff", {})
    if not isinstance(tariff_doc, dict):
        raise FleetError("tariff: a table")
    tariffs = _Tariffs(tariff_doc, seed, world)
    buses: list[Bus] = []
    for d_index, district in enumerate(_list(doc, "district", "")):
        path = f"district[{d_index}]"
        _known(district, _DISTRICT_KEYS, path)
        d_name = str(district.get("name", f"district{d_index + 1}"))
        for b_index, bus_doc in enumerate(_list(district, "bus", path)):
            buses.append(
                _bus(bus_doc, f"{path}.bus[{b_index}]", d_name, seed, world, master_key, recorder,
                     tariffs)
            )  # fmt: skip
    names = [b.name for b in buses]
    if len(set(names)) != len(names):
        raise FleetError("bus names must be unique across the fleet")
    fleet = Fleet(
        seed, world, buses, master_key, recorder, credits if credits is not None else CreditLog()
    )
    for i, entry in enumerate(_list(doc, "inject", "")):
        try:
            rule = InjectedFault.from_dict(entry)
            fleet.inject(rule.meter, rule.action, on=rule.on, times=rule.times, skip=rule.skip,
                         late_s=rule.late_s, serr=rule.serr, err=rule.err)  # fmt: skip
        except KeyError as exc:
            raise FleetError(f"inject[{i}].meter: {exc.args[0]}") from None
        except (ValueError, TypeError) as exc:
            raise FleetError(f"inject[{i}]: {exc}") from None
    for i, entry in enumerate(_list(doc, "purchase", "")):
        _card_purchase(fleet, entry, f"purchase[{i}]")
    fleet.tariff_plans = tariffs.plans if tariffs.enabled else {}
    return fleet


class _Tariffs:
    """``[tariff]``: programs every DL/T 645-2007 meter from its plan while the fleet is built
    (local-prepaid meters ``prepaid-local``, the others ``resident-tou``) and misprograms a seeded
    share of them, one defect each, the defects taken in turn so that every kind occurs."""

    def __init__(self, doc: Mapping[str, Any], seed: int | str, world: WorldClock) -> None:
        _known(doc, _TARIFF_KEYS, "tariff")
        opts = {**_TARIFF_DEFAULTS, **doc}
        if not isinstance(opts["plans"], bool):
            raise FleetError("tariff.plans: true or false")
        self.enabled: bool = opts["plans"]
        share = opts["misprogram_share"]
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise FleetError("tariff.misprogram_share: a number from 0 to 1")
        self.share = float(share)
        days: dict[str, int] = {}
        for key in ("switch_after_days", "reprogram_after_days"):
            value = opts[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FleetError(f"tariff.{key}: a whole number of days >= 0")
            days[key] = value
        self.clock_error = _range(opts, "clock_error_s", "tariff")
        if self.clock_error[0] <= 300 or self.clock_error[1] < self.clock_error[0]:
            raise FleetError("tariff.clock_error_s: [low, high] seconds, low above the 300 s limit")
        self.ladder_form = str(opts["ladder_form"])
        if self.ladder_form not in ("2013", "tables", "2009"):
            raise FleetError("tariff.ladder_form: '2013', 'tables' or '2009'")
        today = world.now().date()
        switch = today + dt.timedelta(days=days["switch_after_days"])
        self.reprogram_at = dt.datetime.combine(
            today + dt.timedelta(days=days["reprogram_after_days"]), dt.time(10)
        )
        self.plans = builtin_plans(today, switch if days["switch_after_days"] else None)
        self.rng = rng_for(seed, "tariff")
        self.turn = 0

    def attach(self, meter: Meter, *, local: bool) -> None:
        """Program `meter` (before its wallet is made: the wallet starts from its registers)."""
        if not self.enabled or meter.identity.protocol != "dlt645-2007":
            return
        plan = self.plans["prepaid-local" if local else "resident-tou"]
        counters = dict.fromkeys(EVENT_DIS, 1)
        counters[EVENT_DIS[0]] = self.rng.randrange(0, 40)  # 校时: clock sets over the years
        if plan.mode != "local":
            for local_only in ("03300F00", "03301000"):
                counters.pop(local_only)
        tariff = MeterTariff(
            plan,
            program(plan, meter.now().date(), counters=counters),
            meter.identity.tariffs,
            denied=model(meter.identity.model).tariff_denied,
            ladder_form=self.ladder_form,
        )
        defect = None
        if not meter.faults.dead and not tariff.denied and self.rng.random() < self.share:
            for _ in DEFECTS:
                candidate = DEFECTS[self.turn % len(DEFECTS)]
                self.turn += 1
                if applicable(candidate, tariff):
                    defect = candidate
                    break
        if defect is not None and defect != "clock_drift":
            misprogram(
                tariff, defect, start=meter.now().replace(microsecond=0),
                reprogram_at=self.reprogram_at,
            )  # fmt: skip
        meter.attach_tariff(tariff)
        if defect == "clock_drift":
            error = self.rng.uniform(*self.clock_error) * self.rng.choice((-1, 1))
            meter.set_time(meter.now() + dt.timedelta(seconds=error))
            tariff.defect = defect
            tariff.detail = f"clock {error:+.0f} s (limit 300 s)"


def _card_purchase(fleet: Fleet, doc: Mapping[str, Any], path: str) -> None:
    """``[[purchase]]``: an out-of-band (card) purchase when the meter's clock reaches `at`."""
    _known(doc, {"meter", "at", "amount_yuan"}, path)
    try:
        meter = fleet.meter(str(doc.get("meter")))
    except KeyError as exc:
        raise FleetError(f"{path}.meter: {exc.args[0]}") from None
    if meter.wallet is None:
        raise FleetError(
            f"{path}.meter: {meter.identity.meter_id} keeps no wallet (not local prepaid)"
        )
    at = doc.get("at")
    try:
        when = at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(str(at))
    except ValueError:
        raise FleetError(f"{path}.at: a local date-time like 2026-03-10T10:05:00") from None
    amount = doc.get("amount_yuan")
    if not isinstance(amount, int | float) or amount <= 0:
        raise FleetError(f"{path}.amount_yuan: a positive number")
    meter.schedule_card_purchase(when.replace(tzinfo=None), round(amount * 100))


def _zone(doc: Mapping[str, Any]) -> zoneinfo.ZoneInfo:
    name = doc.get("timezone", DEFAULT_TIMEZONE)
    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise FleetError(
            f"timezone: {name!r} is not a known IANA zone (e.g. Asia/Shanghai, UTC)"
        ) from None


def _known(doc: Mapping[str, Any], keys: set[str], path: str) -> None:
    _TABLE.set(path)
    for key in doc:
        if key not in keys:
            where = f"{path}.{key}" if path else key
            raise FleetError(f"{where}: unknown key (known: {', '.join(sorted(keys))})")


def _list(doc: Mapping[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FleetError(f"{path + '.' if path else ''}{key}: expected a list of tables")
    return value


def _bus(
    doc: dict[str, Any],
    path: str,
    district: str,
    seed: int | str,
    world: WorldClock,
    master_key: bytes,
    recorder: Recorder,
    tariffs: _Tariffs,
) -> Bus:
    _known(doc, _BUS_KEYS, path)
    name = str(doc.get("name", path))
    protocol = str(doc.get("protocol", "dlt645"))
    if protocol not in _PROTOCOLS:
        raise FleetError(f"{path}.protocol: 'dlt645', 'modbus' or 'carrier', not {protocol!r}")
    carrier: CarrierConfig | None = None
    if protocol == "carrier":
        try:
            carrier = CarrierConfig.parse(doc.get("carrier", {}), f"{path}.carrier")
        except CarrierConfigError as exc:
            raise FleetError(str(exc)) from None
    elif "carrier" in doc:
        raise FleetError(f'{path}.carrier: only a bus with protocol = "carrier" has a CCO')
    noise = tuple(
        NoiseWindow(int(w["from"]), int(w["to"]), float(w["rate"])) for w in doc.get("noise", [])
    )
    for i, window in enumerate(noise):
        _share(window.rate, f"{path}.noise[{i}].rate")
    faults = BusFaults(
        noise,
        _share(doc.get("loss", 0.0), f"{path}.loss"),
        _share(doc.get("corrupt", 0.0), f"{path}.corrupt"),
    )
    baud = int(doc.get("baud", _DEFAULT_BAUD[protocol]))
    bus = Bus(name, world, [], seed, district, protocol, baud, faults, recorder, carrier=carrier)
    for r_index, rule in enumerate(_list(doc, "meters", path)):
        bus.meters.extend(
            _meters(rule, f"{path}.meters[{r_index}]", bus, seed, master_key, tariffs)
        )
    units = [m.identity.unit_id for m in bus.meters if protocol == "modbus"]
    if len(set(units)) != len(units):
        raise FleetError(f"{path}: Modbus unit ids repeat on one bus")
    bus.reindex()
    if carrier is not None:
        bus.network = plan_network(bus.meters, carrier, seed, name)
    return bus


_SHARES = ("prepaid", "dead", "intermittent", "intermittent_loss", "loss", "corrupt", "slow",
           "garbage", "remote")  # fmt: skip
"""a meter rule's keys that are shares or probabilities"""


def _share(value: Any, path: str) -> float:
    """A share or probability: a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FleetError(f"{path}: a share from 0 to 1, not {value!r}")
    return float(value)


def _range(rule: dict[str, Any], key: str, path: str) -> tuple[float, float]:
    value = rule[key]
    if isinstance(value, int | float):
        return float(value), float(value)
    if isinstance(value, list) and len(value) == 2:
        return float(value[0]), float(value[1])
    raise FleetError(f"{path}.{key}: a number or [low, high]")


def _meters(
    rule_doc: dict[str, Any],
    path: str,
    bus: Bus,
    seed: int | str,
    master_key: bytes,
    tariffs: _Tariffs,
) -> list[Meter]:
    _known(rule_doc, set(_RULE_DEFAULTS), path)
    rule = {**_RULE_DEFAULTS, **rule_doc}
    rng = rng_for(seed, "rule", bus.name, path)
    weights = rule["models"]
    if not isinstance(weights, dict) or not weights:
        raise FleetError(f"{path}.models: a table of model = weight")
    try:
        models = [model(name) for name in weights]
    except KeyError as exc:
        raise FleetError(f"{path}.models: {exc.args[0]}") from None
    for m in models:
        if (m.protocol == "modbus") != (bus.protocol == "modbus"):
            raise FleetError(f"{path}.models: {m.name} speaks {m.protocol} on a {bus.protocol} bus")
    for key in _SHARES:
        _share(rule[key], f"{path}.{key}")
    count = rule["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_RULE_METERS:
        raise FleetError(
            f"{path}.count: a whole number of meters from 0 to {MAX_RULE_METERS} (the largest"
            f" archive a carrier module takes), not {count!r}; give more meters as more rules"
        )
    first = rule["first_address"]
    if bus.protocol != "modbus" and first is None:
        raise FleetError(f"{path}.first_address: required for DL/T 645 meters")
    if bus.protocol == "modbus" and count:
        first_unit = rule["first_unit"]
        if (
            isinstance(first_unit, bool)
            or not isinstance(first_unit, int)
            or not 1 <= first_unit <= first_unit + count - 1 <= 247
        ):
            raise FleetError(
                f"{path}: Modbus unit ids are 1 to 247; first_unit = {first_unit!r} and"
                f" count = {count} do not fit"
            )
    out: list[Meter] = []
    for i in range(count):
        chosen = rng.choices(models, weights=[float(weights[m.name]) for m in models])[0]
        if bus.protocol == "modbus":
            unit = int(rule["first_unit"]) + i
            address = f"{unit:012d}"
        else:
            unit = 0
            address = f"{int(str(first)) + i:012d}"
            if len(address) != 12:
                raise FleetError(f"{path}.first_address: {address} has more than 12 digits")
        prepaid = chosen.prepaid and rng.random() < float(rule["prepaid"])
        customer = f"{(int(address) * 7919 + 3 * 10**11) % 10**12:012d}"
        ident = Identity(
            address, address, customer, chosen.protocol, chosen.name, chosen.manufacturer,
            chosen.phases, chosen.tariffs, prepaid, bus.name, bus.district, unit,
        )  # fmt: skip
        salt = int.from_bytes(hashlib.sha256(f"{seed}/{bus.name}/{address}".encode()).digest()[:4])
        meter = Meter.build(
            ident,
            bus.world,
            salt=salt,
            base_kw=rng.uniform(*_range(rule, "base_kw", path))
            * (2.5 if chosen.phases == 3 else 1),
            initial_kwh=rng.uniform(100, 20000),
            power_factor=round(rng.uniform(0.86, 0.99), 3),
            offset_s=rng.uniform(*_range(rule, "offset_s", path)),
            drift_ppm=rng.uniform(*_range(rule, "drift_ppm", path)),
            prefill=False,
        )
        meter.reply_limit = chosen.reply_limit
        intermittent = rng.random() < float(rule["intermittent"])
        wakeup = rule["wakeup"]
        meter.faults = MeterFaults(
            dead=rng.random() < float(rule["dead"]),
            loss=float(rule["intermittent_loss"]) if intermittent else float(rule["loss"]),
            corrupt=float(rule["corrupt"]),
            slow=float(rule["slow"]),
            garbage=float(rule["garbage"]),
            wakeup=(int(wakeup[0]), int(wakeup[1])),
        )
        remote, balance = False, 0.0
        if prepaid:
            # drawn only when asked for, so existing fleets keep their random sequence
            remote = float(rule["remote"]) > 0 and rng.random() < float(rule["remote"])
            balance = rng.uniform(*_range(rule, "balance_yuan", path))
        tariffs.attach(meter, local=prepaid and not remote)
        if prepaid:
            _make_prepaid(meter, balance, master_key, salt, remote=remote)
            if meter.wallet is not None:
                meter.wallet.limits.hoarding_fen = round(float(rule["hoarding_yuan"]) * 100)
        meter.prefill_freezes()
        out.append(meter)
    _duplicate(out, int(rule["duplicates"]), rng, path)
    return out


def _make_prepaid(
    meter: Meter, balance_yuan: float, master_key: bytes, salt: int, *, remote: bool = False
) -> None:
    """A cost-control meter: an ESAM, and (local mode) a wallet with a purchase history. A
    remote-mode meter keeps no wallet: its balance lives with billing."""
    ident = meter.identity
    serial = hashlib.sha256(f"esam/{ident.meter_number}".encode()).digest()[:8]
    meter.esam = Esam(master_key, ident.meter_number, serial=serial, seed=salt)
    if remote:
        return
    now = meter.now()
    energies = meter.importer.tariffs_at(now)
    prices = tuple(DEFAULT_PRICES[min(i, 3)] for i in range(ident.tariffs))
    wallet = Wallet(prices, ident.customer_number, round(balance_yuan * 100), energies)
    wallet.limits = Limits()
    purchases = 1 + salt % 14
    total = 0
    history: list[PurchaseRecord] = []
    balance = 0
    for n in range(1, purchases + 1):
        amount = (5 + (salt >> n) % 26) * 1000  # 50..300 yuan
        total += amount
        when = (now - dt.timedelta(days=30 * (purchases - n) + 3)).replace(second=0, microsecond=0)
        history.append(PurchaseRecord(when, n, amount, balance, balance + amount, total))
        balance = (balance + amount) // 3  # most of it is spent before the next purchase
    for record in history[-10:]:
        wallet.records.appendleft(record)
    wallet.purchase_count = purchases
    wallet.total_fen = total
    meter.wallet = wallet


def _duplicate(meters: list[Meter], count: int, rng: Any, path: str) -> None:
    """Give `count` meters the address of another meter of the same rule (a field error)."""
    if count <= 0:
        return
    if count >= len(meters):
        raise FleetError(f"{path}.duplicates: needs more meters than duplicates")
    picks = rng.sample(range(1, len(meters)), count)
    for i in picks:
        source = meters[rng.randrange(0, i)]
        m = meters[i]
        m.identity = Identity(
            source.identity.address, m.identity.meter_number, m.identity.customer_number,
            m.identity.protocol, m.identity.model, m.identity.manufacturer, m.identity.phases,
            m.identity.tariffs, m.identity.prepaid, m.identity.bus, m.identity.district,
            m.identity.unit_id,
        )  # fmt: skip
