"""The `[panel]` section of the central configuration: the operators' web panel
(`meterlink central panel`, docs/panel.md)."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.config import parse_listen

__all__ = ["PanelConfig"]


@dataclass(frozen=True)
class PanelConfig:
    #: where `meterlink central panel` listens (put a reverse proxy in front for other hosts)
    listen: str = "127.0.0.1:8480"
    #: TLS: the server's certificate chain and key (PEM); both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: the Secure flag of the cookies: "auto" = when the panel itself speaks TLS; "always"
    #: behind a reverse proxy that terminates TLS
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    #: a log-in lasts at most this long, and ends after this long without a request
    session_hours: float = 12.0
    idle_minutes: float = 60.0
    #: the zone whose calendar says what "today" is (the meters' local time)
    timezone: str = "Asia/Shanghai"
    #: the full-coverage target (全口径抄表成功率), percent
    threshold: float = 98.0
    #: days in the overview's trend (from the coverage points in InfluxDB)
    trend_days: int = 30
    #: days of a meter's reading history chart and failure list (meters keep 62 freezes)
    history_days: int = 62
    #: the cached coverage of a day is recomputed when the ledger changed, at most this often
    #: (and no more often than three times the last computation took)
    refresh_s: float = 15.0
    #: ... and at the latest after this long even if no change was noticed
    max_age_s: float = 600.0
    #: what "read now" reads (measurement names or DIs)
    read_items: list[str] = field(default_factory=lambda: ["energy_import_total_kwh"])
    #: how long "read now" waits for the agent's reply
    command_timeout_s: float = 30.0
    #: the MQTT client id of the panel's status subscription (default: <[mqtt] client_id>-panel)
    client_id: str = ""
    #: the language of a browser that has not chosen one
    language: Literal["zh-CN", "en"] = "zh-CN"
    #: modules that add sections and actions (`register(registry)`), besides the built-in ones
    extensions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        parse_listen(self.listen, "127.0.0.1:8480")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known zone") from None
        if not 0 < self.threshold <= 100:
            raise ValueError("threshold must be in (0, 100]")
        if not 1 <= self.trend_days <= 366 or not 1 <= self.history_days <= 366:
            raise ValueError("trend_days and history_days must be 1..366")
        if self.refresh_s <= 0 or self.max_age_s <= 0 or self.command_timeout_s <= 0:
            raise ValueError("refresh_s, max_age_s and command_timeout_s must be > 0")
        if self.session_hours <= 0 or self.idle_minutes <= 0:
            raise ValueError("session_hours and idle_minutes must be > 0")
        if not self.read_items:
            raise ValueError("read_items must name at least one item")
