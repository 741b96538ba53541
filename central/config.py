"""The central side's configuration: strict, typed TOML (see `common.config`).

`deploy/central.example.toml` is the commented reference; a test loads it. Secrets come only from
the environment (the rule is in `common.config`): ``METERLINK_MQTT_PASSWORD``,
``METERLINK_MQTT_COMMAND_KEY``, ``METERLINK_INFLUX_PASSWORD``, ``METERLINK_INFLUX_TOKEN``,
``METERLINK_STORE_PASSWORD``, ``METERLINK_TOPUP_TOKENS``,
``METERLINK_TOPUP_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from central.panel.config import PanelConfig
from central.store.url import parse_url
from central.topup.config import TopupConfig
from common.config import ConfigError, Secret, build, load_toml, parse_listen
from common.mqtt import MqttSettings

if TYPE_CHECKING:
    from central.tariff.check import CheckSettings

__all__ = [
    "CentralConfig",
    "ConsumerConfig",
    "CoverageConfig",
    "InfluxConfig",
    "LogConfig",
    "MetricsConfig",
    "MqttConfig",
    "PanelConfig",
    "StoreConfig",
    "TariffConfig",
    "TopupConfig",
    "load",
    "reloaded",
]

log = logging.getLogger(__name__)

_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class MqttConfig(MqttSettings):
    """The `[mqtt]` section: the connection settings the agent has too (`common.mqtt`, TLS with
    a client certificate included), with the central side's defaults, plus the group."""

    #: stable per instance: the broker keeps this session (and its queued messages) while the
    #: instance is down, for `session_expiry_s`; with the production broker it is the
    #: instance's certificate name (meterlink-central-<n>)
    client_id: str = "meterlink-central-1"
    #: instances with the same group split the load ($share/<group>/...)
    group: str = "meterlink-central"
    session_expiry_s: int = 7 * 86400
    #: how many unacknowledged QoS 1 messages the broker may send us (MQTT v5 Receive Maximum)
    receive_maximum: int = 1000
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: the key commands to agents are signed with (`meterlink central command`); from
    #: METERLINK_MQTT_COMMAND_KEY, the same variable and value as the agents'
    command_key: Secret | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.client_id:
            raise ValueError("client_id must not be empty (one per instance)")
        if not _GROUP.match(self.group):
            raise ValueError(f"group {self.group!r} must match {_GROUP.pattern}")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535")


@dataclass(frozen=True)
class InfluxConfig:
    #: "v1": POST /write (InfluxDB 1.x); "v2": influxdb-client /api/v2/write (InfluxDB 1.8+,
    #: 2.x, 3.x, VictoriaMetrics)
    api: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    database: str = "meterlink"  # v1
    retention_policy: str = ""  # v1, empty = the database's default
    username: str | None = None  # v1
    password: Secret | None = None  # v1: METERLINK_INFLUX_PASSWORD (a secret)
    create_database: bool = True  # v1: CREATE DATABASE at start (idempotent)
    org: str = "meterlink"  # v2
    bucket: str = "meterlink"  # v2 (InfluxDB 1.8: "database/retention")
    token: Secret | None = None  # v2: METERLINK_INFLUX_TOKEN (a secret)
    timeout_s: float = 10.0
    #: lines per HTTP request
    max_lines_per_write: int = 10000
    #: attempts on a 5xx / connection error before the batch goes to the local spool
    attempts_before_spool: int = 2
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.max_lines_per_write < 1 or self.attempts_before_spool < 1:
            raise ValueError("max_lines_per_write and attempts_before_spool must be >= 1")


@dataclass(frozen=True)
class ConsumerConfig:
    #: per-instance SQLite file: batches InfluxDB has not accepted yet, dead letters, rejects
    spool: Path = Path("/var/lib/meterlink/central-spool.sqlite3")
    #: a batch is written when it holds this many lines (a reading is one line; so is every
    #: other point), or after `flush_interval_s`
    batch_readings: int = 5000
    flush_interval_s: float = 0.5
    #: SIGTERM: how long the staged stop may take (stop taking messages, write and acknowledge
    #: what is held, close); below the systemd unit's TimeoutStopSec (30 s)
    stop_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.batch_readings < 1 or self.flush_interval_s <= 0:
            raise ValueError("batch_readings must be >= 1 and flush_interval_s > 0")
        if not 0 < self.stop_timeout_s <= 3600:
            raise ValueError("stop_timeout_s must be > 0 and <= 3600")


@dataclass(frozen=True)
class LogConfig:
    #: reloaded on SIGHUP (`meterlink central run --log-level` overrides it until then)
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "text" (one line each) or "json" (one object per line, for a log collector)
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class MetricsConfig:
    #: host:port of the consumer's Prometheus endpoint (GET /metrics); "" turns it off. One
    #: port per instance on a host.
    listen: str = ""

    def __post_init__(self) -> None:
        if not self.listen:
            return
        parse_listen(self.listen, "127.0.0.1:9465")


@dataclass(frozen=True)
class StoreConfig:
    """Where the central state (the coverage ledger, and what later modules keep) lives."""

    #: "sqlite:///path" (one host: its instances share the file) or
    #: "postgresql://user@host:port/db" (several hosts); see central/store/url.py
    url: str = "sqlite:///var/lib/meterlink/coverage.sqlite3"
    #: PostgreSQL's password: only from the environment, METERLINK_STORE_PASSWORD (or ~/.pgpass)
    password: Secret | None = None
    #: how long to wait for PostgreSQL to answer a connection
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        parse_url(self.url)
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")


@dataclass(frozen=True)
class CoverageConfig:
    #: how often an instance recomputes the days that changed (one instance at a time)
    interval_s: float = 60.0
    #: values a daily freeze must carry to count as complete (完整率)
    required_values: list[str] = field(
        default_factory=lambda: [
            "energy_import_total_kwh",
            "energy_import_t1_kwh",
            "energy_import_t2_kwh",
            "energy_import_t3_kwh",
            "energy_import_t4_kwh",
        ]
    )
    #: read on time (及时率) = read_at before this local time of the data day
    timely_by: str = "23:00"
    #: the consecutive-failure list (连续失败明细) shows meters failing this many days or more
    streak_min_days: int = 3

    def __post_init__(self) -> None:
        parse_hhmm(self.timely_by)
        if self.streak_min_days < 1 or self.interval_s <= 0:
            raise ValueError("streak_min_days must be >= 1 and interval_s > 0")


@dataclass(frozen=True)
class TariffConfig:
    """The tariff execution check (docs/tariff.md)."""

    #: the meters' local time zone (their clocks, the plans' dates and times)
    timezone: str = "Asia/Shanghai"
    #: how often an instance re-checks today and yesterday (one instance at a time)
    interval_s: float = 300.0
    clock_warn_s: float = 60.0
    clock_error_s: float = 300.0
    #: days ahead over which the meter's and the plan's tariff functions must agree
    horizon_days: int = 366
    #: a set-up read longer ago than this (at the day's end) does not count: NOT_READ
    max_setup_age_days: int = 8
    #: per register, for the energy allocation step (≥ 0.01 kWh, the registers' resolution)
    energy_tolerance_kwh: float = 0.01

    def __post_init__(self) -> None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known time zone") from None
        if not 0 < self.clock_warn_s <= self.clock_error_s:
            raise ValueError("clock_warn_s must be > 0 and <= clock_error_s")
        if not 1 <= self.horizon_days <= 800 or self.max_setup_age_days < 1:
            raise ValueError("horizon_days must be 1..800 and max_setup_age_days >= 1")
        if self.energy_tolerance_kwh < 0.01 or self.interval_s <= 0:
            raise ValueError("energy_tolerance_kwh must be >= 0.01 and interval_s > 0")

    def settings(self) -> CheckSettings:
        from central.tariff.check import CheckSettings

        return CheckSettings(
            clock_warn_s=self.clock_warn_s,
            clock_error_s=self.clock_error_s,
            horizon_days=self.horizon_days,
            max_setup_age_days=self.max_setup_age_days,
            energy_tolerance_kwh=self.energy_tolerance_kwh,
        )


@dataclass(frozen=True)
class CentralConfig:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    topup: TopupConfig = field(default_factory=TopupConfig)
    tariff: TariffConfig = field(default_factory=TariffConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)


def reloaded(running: CentralConfig, new: CentralConfig) -> tuple[CentralConfig, list[str]]:
    """What SIGHUP changes in a running consumer: the log level and format, the batch size
    and interval, the stop budget, the coverage job's and the tariff check's settings,
    InfluxDB's retry timing. The rest (the broker, the database's address and credentials,
    the store, the spool, the metrics listener, the panel) is kept, and named in the returned
    list: it takes a restart."""
    influx_retry = ("attempts_before_spool", "retry_initial_s", "retry_max_s")
    influx = dataclasses.replace(
        running.influx, **{k: getattr(new.influx, k) for k in influx_retry}
    )
    consumer = dataclasses.replace(new.consumer, spool=running.consumer.spool)
    out = dataclasses.replace(
        running,
        log=new.log,
        coverage=new.coverage,
        tariff=new.tariff,
        consumer=consumer,
        influx=influx,
    )
    kept = [
        name
        for name, before, after in (
            ("[mqtt]", running.mqtt, new.mqtt),
            ("[store]", running.store, new.store),
            ("[metrics]", running.metrics, new.metrics),
            ("[panel]", running.panel, new.panel),
            ("[consumer] spool", running.consumer.spool, new.consumer.spool),
            ("[influx] (address, database, credentials)", influx, new.influx),
        )
        if before != after
    ]
    return out, kept


def parse_hhmm(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day (HH:MM)") from None


def load(path: Path) -> CentralConfig:
    """Read and check a config file; raises `ConfigError` (exit code 78) naming the key."""
    data = _moved_ledger_key(load_toml(path), path)
    try:
        return build(CentralConfig, data, env_prefix="METERLINK")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _moved_ledger_key(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``[coverage] ledger = PATH`` (before the store) still works: it is ``[store] url``."""
    coverage = data.get("coverage")
    if not isinstance(coverage, dict) or "ledger" not in coverage:
        return data
    store = data.get("store", {})
    if not isinstance(store, dict):
        return data  # build() names the mistake
    if "url" in store:
        raise ConfigError(
            f"{path}: coverage.ledger and store.url both set: keep store.url (the ledger is in"
            " the store now)"
        )
    ledger = coverage["ledger"]
    if not isinstance(ledger, str):
        raise ConfigError(f"{path}: coverage.ledger: expected a path, got {ledger!r}")
    url = f"sqlite://{ledger}" if ledger.startswith("/") else f"sqlite:{ledger}"
    log.warning("%s: [coverage] ledger is deprecated; write [store] url = %r instead", path, url)
    rest = {k: v for k, v in coverage.items() if k != "ledger"}
    return {**data, "coverage": rest, "store": {**store, "url": url}}
