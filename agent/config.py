"""The agent's configuration: one TOML file, typed and strict.

Every key is documented in ``deploy/agent.example.toml`` (which a test loads). Unknown keys are
errors naming their path; bad values say what is expected; the daemon exits 78 on either.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.mqtt.settings import LinkSettings
from agent.transports import BusUrl, BusUrlError
from common.config import ConfigError, Secret, build, load_toml
from protocols.payloads import CONCENTRATOR_ID

__all__ = [
    "AgentConfig",
    "BusConfig",
    "ClockPlan",
    "ConfigError",
    "DailyPlan",
    "HealthConfig",
    "IntervalPlan",
    "MeterConfig",
    "MqttConfig",
    "load_config",
]

Protocol = Literal["dlt645-2007", "dlt645-1997", "modbus"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def parse_hhmm(text: str, what: str) -> dt.time:
    if not _HHMM.match(text):
        raise ValueError(f"{what}: {text!r} is not HH:MM")
    return dt.time(int(text[:2]), int(text[3:]))


@dataclass(frozen=True)
class Identity:
    concentrator: str
    """the concentrator's id in MQTT topics (letters, digits, . _ -)"""
    timezone: str = "Asia/Shanghai"
    """the meters' local time zone: freeze stamps and plan times are meter local time"""
    state_dir: Path = Path("/var/lib/meterlink")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    def __post_init__(self) -> None:
        if not re.match(CONCENTRATOR_ID, self.concentrator):
            raise ValueError(f"concentrator {self.concentrator!r} must match {CONCENTRATOR_ID}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA zone") from None

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True)
class MqttConfig(LinkSettings):
    """The `[mqtt]` section: every setting of the MQTT link (documented in
    common/mqtt.py and agent/mqtt/settings.py) plus the key that authenticates commands."""

    command_key: Secret | None = None
    """HMAC key (hex or text) for signed commands: METERLINK_MQTT_COMMAND_KEY (a secret)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size > 5000:
            raise ValueError("batch_size must be 1..5000")


@dataclass(frozen=True)
class OutboxConfig:
    max_mb: float = 64
    """disk budget in MiB (a fraction for a concentrator with a tiny flash, or a soak)"""
    eviction: Literal["oldest_readings"] = "oldest_readings"

    def __post_init__(self) -> None:
        if not 0 < self.max_mb < 1 << 20:
            raise ValueError("max_mb must be a positive number of MiB")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9464"
    """host:port of the Prometheus endpoint; "" disables it"""


@dataclass(frozen=True)
class BusConfig:
    name: str
    url: str
    """serial:///dev/ttyS2?baud=2400&parity=E, tcp://host:port, modbus+rtu://..., modbus+tcp://..."""

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", self.name):
            raise ValueError(f"bus name {self.name!r}: letters, digits, . _ - (max 32)")
        try:
            BusUrl.parse(self.url)
        except BusUrlError as exc:
            raise ValueError(str(exc)) from None

    @property
    def bus_url(self) -> BusUrl:
        return BusUrl.parse(self.url)


@dataclass(frozen=True)
class MeterConfig:
    """One archived meter (档案). For DL/T 645 `address` is the nameplate communication address;
    for Modbus `unit` is the slave id and `model` names the register map."""

    bus: str
    protocol: Protocol = "dlt645-2007"
    address: str | None = None
    unit: int | None = None
    meter: str | None = None
    """the meter's id in readings; default: the address (645) or "<bus>:<unit>" (Modbus)"""
    model: str = ""
    district: str = ""
    manufacturer: str = ""
    prepaid: bool = False
    tariff_plan: str = ""
    """the utility's tariff plan this meter must execute (the central side checks it)"""

    def __post_init__(self) -> None:
        if self.protocol == "modbus":
            if self.unit is None or not 1 <= self.unit <= 247:
                raise ValueError(f"Modbus meter on {self.bus}: unit must be 1..247")
            if not self.model:
                raise ValueError(
                    f"Modbus meter {self.bus}:{self.unit}: model (register map) is required"
                )
        elif self.address is None or not re.match(r"^\d{1,12}$", self.address):
            raise ValueError(
                f"DL/T 645 meter on {self.bus}: address must be 1-12 digits, got {self.address!r}"
            )

    @property
    def meter_id(self) -> str:
        if self.meter:
            return self.meter
        if self.protocol == "modbus":
            return f"{self.bus}:{self.unit}"
        assert self.address is not None
        return self.address.rjust(12, "0")


@dataclass(frozen=True)
class ArchiveConfig:
    file: Path | None = None
    """a JSON or TOML file with a `meters` array (same keys as below); read at start and SIGHUP"""
    meters: list[MeterConfig] = field(default_factory=list)


@dataclass(frozen=True)
class HealthConfig:
    offline_after_failures: int = 3
    offline_after_minutes: float = 30
    reprobe_min_minutes: float = 15
    reprobe_max_minutes: float = 240

    def __post_init__(self) -> None:
        if self.offline_after_failures < 1 or self.offline_after_minutes < 0:
            raise ValueError("offline_after_failures >= 1 and offline_after_minutes >= 0")
        if not 0 < self.reprobe_min_minutes <= self.reprobe_max_minutes:
            raise ValueError("0 < reprobe_min_minutes <= reprobe_max_minutes")


@dataclass(frozen=True)
class DailyPlan:
    enabled: bool = True
    start: str = "00:05"
    """meter local time the first round starts (after the 00:00 freeze)"""
    deadline: str = "23:00"
    """no new round starts after this; the last round's report is final"""
    retry_spacing_minutes: float = 30
    """a failed meter is retried no sooner than this (lets bad hours pass)"""
    reverse_energy: bool = False
    """also read the frozen reverse active energy block (05 06 02 01)"""
    prepaid_balance: bool = True
    """also read the remaining amount (00 90 02 00) of meters archived as prepaid"""
    backfill_days: int = 7
    """missed days up to this far back are read from the meters' frozen history"""

    def __post_init__(self) -> None:
        start, deadline = parse_hhmm(self.start, "start"), parse_hhmm(self.deadline, "deadline")
        if deadline <= start:
            raise ValueError("deadline must be after start")
        if not 0 <= self.backfill_days <= 61:
            raise ValueError("backfill_days must be 0..61 (meters keep 62 daily records)")
        if self.retry_spacing_minutes <= 0:
            raise ValueError("retry_spacing_minutes must be > 0")


@dataclass(frozen=True)
class IntervalPlan:
    enabled: bool = False
    every_minutes: int = 15
    items: list[str] = field(
        default_factory=lambda: ["00010000", "0201FF00", "0202FF00", "02030000"]
    )
    """DIs (hex) or measurement names to read"""
    meters: list[str] = field(default_factory=lambda: ["*"])
    """meter ids, or "*" for every DL/T 645 meter"""

    def __post_init__(self) -> None:
        if not 1 <= self.every_minutes <= 1440:
            raise ValueError("every_minutes must be 1..1440")


@dataclass(frozen=True)
class ClockPlan:
    enabled: bool = True
    at: str = "10:00"
    """when meter clocks are read each day (keep it far from midnight)"""
    max_offset_s: float = 60
    """readings from meters whose clock is off by more are flagged clock_suspect"""
    sync: bool = True
    """broadcast time sync (08H) when a clock is off, within the meters' acceptance rules"""
    sync_threshold_s: float = 10

    def __post_init__(self) -> None:
        parse_hhmm(self.at, "at")


@dataclass(frozen=True)
class TariffPlan:
    """Read each DL/T 645-2007 meter's tariff set-up (docs/tariff.md): weekly, after a
    programming-event counter moved in the daily read, and the day after a switch time the meter
    held; published as ``tariff`` payloads."""

    enabled: bool = False
    start: str = "12:00"
    """reads start at this meter local time (after the daily plan's busy hours) ..."""
    deadline: str = "20:00"
    """... and no new meter is started after this; the rest waits for the next day"""
    every_days: int = 7
    watch: list[str] = field(default_factory=lambda: ["03300500", "03300600"])
    """programming-event counters (总次数 DIs) the daily read also reads; a change triggers a
    tariff read. Local-prepaid meters also have 03300F00 (prices) watched."""
    max_holidays: int = 32
    """public holidays 040300nn read per meter (the count 04000205 says how many are set)"""
    reprobe_days: int = 90
    """items a meter denied are asked again after this many days (a firmware upgrade)"""
    attempts_per_day: int = 2
    """reads of one meter tried per day (a failed read: dead, intermittent or noisy meter)"""
    retry_spacing_minutes: float = 30.0
    """the wait before a failed meter's read is tried again"""

    def __post_init__(self) -> None:
        start, deadline = parse_hhmm(self.start, "start"), parse_hhmm(self.deadline, "deadline")
        if deadline <= start:
            raise ValueError("deadline must be after start")
        if not 1 <= self.every_days <= 90:
            raise ValueError("every_days must be 1..90")
        for di in self.watch:
            if (
                len(di) != 8
                or not di.startswith("0330")
                or not all(c in "0123456789ABCDEF" for c in di)
            ):
                raise ValueError(f"watch: {di!r} is not an event counter DI like 03300500")
        if not 0 <= self.max_holidays <= 254:
            raise ValueError("max_holidays must be 0..254")
        if self.reprobe_days < 1:
            raise ValueError("reprobe_days must be >= 1")
        if not 1 <= self.attempts_per_day <= 48:
            raise ValueError("attempts_per_day must be 1..48")
        if not 0 < self.retry_spacing_minutes <= 1440:
            raise ValueError("retry_spacing_minutes must be > 0 and <= 1440")


@dataclass(frozen=True)
class Plans:
    daily: DailyPlan = field(default_factory=DailyPlan)
    interval: IntervalPlan = field(default_factory=IntervalPlan)
    clock: ClockPlan = field(default_factory=ClockPlan)
    tariff: TariffPlan = field(default_factory=TariffPlan)


@dataclass(frozen=True)
class AgentConfig:
    agent: Identity
    buses: list[BusConfig]
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    plans: Plans = field(default_factory=Plans)
    stop_timeout_s: float = 25
    """staged shutdown budget; keep below the unit's TimeoutStopSec (30 s)"""

    def __post_init__(self) -> None:
        names = [b.name for b in self.buses]
        if len(set(names)) != len(names):
            raise ValueError("two buses share a name")
        if not self.buses:
            raise ValueError("at least one [[buses]] entry is needed")


def load_config(path: Path) -> AgentConfig:
    """Load and check the agent config; raise ConfigError naming the problem."""
    cfg = build(AgentConfig, load_toml(path), env_prefix="METERLINK")
    known = {b.name for b in cfg.buses}
    for i, meter in enumerate(cfg.archive.meters):
        if meter.bus not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"archive.meters[{i}].bus: no bus {meter.bus!r} (buses: {names})")
    return cfg
