"""The `[topup]` section of the central configuration: the order service
(`meterlink central topup serve`, docs/topup.md "The order service")."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.config import Secret, parse_listen

__all__ = ["TopupConfig"]


@dataclass(frozen=True)
class TopupConfig:
    #: where the billing-facing HTTP API listens
    listen: str = "127.0.0.1:8490"
    #: TLS: the server's certificate chain and key (PEM); both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: bearer tokens billing presents, comma-separated (several: rotation); only from the
    #: environment, METERLINK_TOPUP_TOKENS. Without it the service refuses to start.
    tokens: Secret | None = None
    #: the top-up archive: a JSON list of {meter, concentrator, address, mode ("local" |
    #: "remote"), district, manufacturer, model, install_year}; read at start
    archive: Path | None = None
    #: the encryption machine: "network" (`meterlink sim hsm` and compatible) or a vendor's
    #: "package.module:Class" (built with url and timeout_s)
    hsm: str = "network"
    hsm_url: str = "http://127.0.0.1:8491"
    hsm_timeout_s: float = 10.0
    #: the zone of the meters' clocks (purchase times, days of the KPI, a suspended meter's
    #: next day)
    timezone: str = "Asia/Shanghai"
    #: an order without a deadline must be terminal this long after acceptance; the longest
    #: deadline billing may ask for
    default_deadline_s: float = 86400.0
    max_deadline_s: float = 7 * 86400.0
    #: orders executed at once (one per meter at most)
    concurrency: int = 16
    #: how long one security command may wait for the agent's reply
    command_timeout_s: float = 60.0
    #: backoff between attempts after a communication failure
    retry_initial_s: float = 5.0
    retry_max_s: float = 300.0
    #: how long an order waits when the encryption machine is unavailable
    hsm_retry_s: float = 30.0
    #: ESAM (MAC) failures: an order stops (needs_review) after this many ...
    esam_failures_per_order: int = 2
    #: ... and every order of a meter after this many on one day (the meter locks at 200)
    esam_failures_per_meter_day: int = 5
    #: the meter's clock error allowed when its last purchase time is compared with acceptance
    clock_tolerance_s: float = 300.0
    #: how a remote-prepaid (远程费控) meter's supply is restored after a credit notice
    remote_restore: Literal["allow_close", "close"] = "allow_close"
    #: valid-until of a 1CH command, from its making
    relay_valid_minutes: int = 10
    #: relay commands per order that the meter accepts without moving before a relay fault
    relay_attempts: int = 3
    #: results pushed to billing (empty: pull only); signed with METERLINK_TOPUP_WEBHOOK_SECRET
    webhook_url: str = ""
    webhook_secret: Secret | None = None
    webhook_retry_initial_s: float = 2.0
    webhook_retry_max_s: float = 600.0
    webhook_timeout_s: float = 10.0
    #: how often the KPI (topup* measurements) goes to InfluxDB; 0 = never
    influx_interval_s: float = 60.0
    #: how often the scheduler looks for work when nothing woke it
    poll_s: float = 1.0
    #: an instance's claim on an order it executes; another instance takes over after it
    lease_s: float = 900.0
    #: on SIGTERM / SIGINT: how long the API's open requests, then the scheduler, the webhook
    #: and the KPI loop together may take to end before they are cancelled (an order cut
    #: mid-attempt is taken up again with a read-back); below the unit's TimeoutStopSec (30)
    stop_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        parse_listen(self.listen, "127.0.0.1:8490")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known zone") from None
        if not self.hsm_url.startswith(("http://", "https://")):
            raise ValueError("hsm_url must start with http:// or https://")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        positive = {
            "hsm_timeout_s": self.hsm_timeout_s,
            "default_deadline_s": self.default_deadline_s,
            "command_timeout_s": self.command_timeout_s,
            "retry_initial_s": self.retry_initial_s,
            "hsm_retry_s": self.hsm_retry_s,
            "webhook_retry_initial_s": self.webhook_retry_initial_s,
            "webhook_timeout_s": self.webhook_timeout_s,
            "poll_s": self.poll_s,
            "lease_s": self.lease_s,
            "stop_timeout_s": self.stop_timeout_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_deadline_s < self.default_deadline_s:
            raise ValueError("max_deadline_s must be >= default_deadline_s")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be >= retry_initial_s")
        if self.webhook_retry_max_s < self.webhook_retry_initial_s:
            raise ValueError("webhook_retry_max_s must be >= webhook_retry_initial_s")
        if not 1 <= self.concurrency <= 1024:
            raise ValueError("concurrency must be 1..1024")
        if not 1 <= self.esam_failures_per_order <= 10:
            raise ValueError("esam_failures_per_order must be 1..10")
        if not 1 <= self.esam_failures_per_meter_day < 200:
            raise ValueError("esam_failures_per_meter_day must be 1..199 (the meter locks at 200)")
        if self.clock_tolerance_s < 0 or self.influx_interval_s < 0:
            raise ValueError("clock_tolerance_s and influx_interval_s must be >= 0")
        if not 1 <= self.relay_valid_minutes <= 60 or not 1 <= self.relay_attempts <= 10:
            raise ValueError("relay_valid_minutes must be 1..60 and relay_attempts 1..10")

    def token_list(self) -> list[bytes]:
        """The accepted bearer tokens (empty: none configured)."""
        if self.tokens is None:
            return []
        return [t.strip().encode() for t in self.tokens.reveal().split(",") if t.strip()]
