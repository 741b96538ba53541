"""The `[district.bus.carrier]` table of a fleet file: what kind of CCO serves a carrier bus.

    [[district.bus]]
    name = "plc-1"
    protocol = "carrier"
      [district.bus.carrier]
      profile = "hplc"          # hplc | narrowband; every other key defaults per profile
      time_scale = 0.01         # every drawn latency and timer × this (tests, benches)

Every key, its default per profile and what it does is in docs/simulator.md ("Carrier (CCO)
buses"); `CarrierConfig.parse` checks them and names the key path of any mistake.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.q13762 import NodeAddress
from simulators.carrier import latency

__all__ = ["PROFILES", "CarrierConfig", "CarrierConfigError"]

PROFILES = ("hplc", "narrowband")
READING = ("concentrator", "router", "both")


class CarrierConfigError(ValueError):
    """A carrier table that cannot be used; the message names the key."""


def _hplc_hops() -> dict[int, float]:
    return dict(latency.HPLC_HOPS)


@dataclass(frozen=True)
class CarrierConfig:
    """One CCO and its network. Times are in unscaled seconds (the field's); the module
    multiplies every drawn latency and timer by `time_scale`."""

    profile: str = "hplc"
    time_scale: float = 1.0
    main_node: str = "000000000000"
    """main-node address at power-up (AFN05 F1 changes it)"""
    concurrency: int = 16
    """exchanges with nodes in flight at once; one more is denied 109 (narrowband: 1)"""
    max_frames: int = 6
    """645 frames in one AFN F1 F1; more are denied 110"""
    max_nodes: int = 2040
    """archive capacity (AFN03 F10, AFN10 F1)"""
    max_frame_len: int = 2048
    """AFN03 F10 maximum frame length"""
    monitor_timeout_s: int = 60
    """AFN03 F10 monitor max timeout: an exchange not done by then ends with no answer"""
    forming_s: float = 120.0
    """network forming after power-up or a reset (reads denied 9 meanwhile)"""
    reforming_s: float = 30.0
    """network forming again after the archive changed (11F1 / 11F2)"""
    boot_report_s: tuple[float, float] = (7.7, 12.2)
    """the spontaneous AFN03 F10 this long after power-up / 01F1 / 01F2 (uniform)"""
    boot_report: bool = True
    reading: str = "concentrator"
    """periodic reading the module does: concentrator-led, router-led (AFN14) or both"""
    hops: dict[int, float] = field(default_factory=_hplc_hops)
    """hop-depth weights of the nodes"""
    missing: float = 0.0
    """share of the bus's meters absent from the module's node list at power-up"""
    extra: int = 0
    """stale nodes in the module's list at power-up that match no meter"""
    dropout: float = 0.0
    """share of nodes that drop out of the network and come back"""
    dropout_off_s: tuple[float, float] = (300.0, 1800.0)
    dropout_on_s: tuple[float, float] = (1800.0, 14400.0)
    route_failure: float = 0.0
    """per exchange, mean probability that the route fails (weak links fail more)"""
    route_failure_deny: float = 0.5
    """share of route failures reported as deny 11 (the rest: a reply of length 0)"""
    unknown_node_deny: int = 12
    """deny code for a read of a node not in the module's list: 12 or 7"""
    events_per_hour: float = 0.0
    """meter events (AFN06 F5) per hour for the whole network, once 05F2 allows them"""
    node_page_max: int = 32
    """nodes per AFN10 F2 answer at most"""
    ask_repeat_s: float = 10.0
    """an unanswered AFN14 F1/F2 is sent again after this long (the capture: ~10 s) …"""
    ask_retries: int = 3
    """… this many times, then the node is skipped"""
    report_repeat_s: float = 10.0
    """an unconfirmed AFN06 report is sent again after this long …"""
    report_retries: int = 3
    """… this many times, then dropped"""

    @property
    def narrowband(self) -> bool:
        return self.profile == "narrowband"

    @property
    def main_node_address(self) -> NodeAddress:
        return NodeAddress.parse(self.main_node)

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    @classmethod
    def defaults(cls, profile: str) -> CarrierConfig:
        if profile == "narrowband":
            return cls(
                profile="narrowband",
                concurrency=1,
                max_frames=1,
                max_nodes=1016,
                monitor_timeout_s=90,
                reading="router",
                hops=dict(latency.NARROWBAND_HOPS),
            )
        if profile != "hplc":
            raise CarrierConfigError(f"profile: 'hplc' or 'narrowband', not {profile!r}")
        return cls()

    @classmethod
    def parse(cls, doc: Mapping[str, Any], path: str = "carrier") -> CarrierConfig:
        """From a fleet file's carrier table (unknown keys and bad values raise)."""
        if not isinstance(doc, Mapping):
            raise CarrierConfigError(f"{path}: expected a table")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in doc:
            if key not in known:
                raise CarrierConfigError(
                    f"{path}.{key}: unknown key (known: {', '.join(sorted(known))})"
                )
        profile = doc.get("profile", "hplc")
        if profile not in PROFILES:
            raise CarrierConfigError(f"{path}.profile: 'hplc' or 'narrowband', not {profile!r}")
        base = cls.defaults(str(profile))
        values: dict[str, Any] = {}
        for key, raw in doc.items():
            if key == "profile":
                continue
            values[key] = _convert(key, raw, getattr(base, key), f"{path}.{key}")
        config = dataclasses.replace(base, **values)
        config.check(path)
        return config

    def check(self, path: str = "carrier") -> None:
        def bad(key: str, what: str) -> CarrierConfigError:
            return CarrierConfigError(f"{path}.{key}: {what}")

        if not 0 < self.time_scale <= 1000:
            raise bad("time_scale", "a number > 0 (0.01 = a hundred times faster)")
        try:
            _ = self.main_node_address
        except ValueError:
            raise bad("main_node", "12 hex digits, e.g. 000000000000 or BEBEBEBEBE01") from None
        if not 1 <= self.concurrency <= 255:
            raise bad("concurrency", "1..255")
        if self.narrowband and self.concurrency != 1:
            raise bad("concurrency", "a narrowband module has one exchange outstanding: 1")
        if not 1 <= self.max_frames <= 64:
            raise bad("max_frames", "1..64")
        if not 1 <= self.max_nodes <= 0xFFFF:
            raise bad("max_nodes", "1..65535")
        if not 64 <= self.max_frame_len <= 0xFFFF:
            raise bad("max_frame_len", "64..65535")
        if not 1 <= self.monitor_timeout_s <= 255:
            raise bad("monitor_timeout_s", "1..255 (one byte of AFN03 F10)")
        for key in ("forming_s", "reforming_s", "ask_repeat_s", "report_repeat_s"):
            if getattr(self, key) < 0:
                raise bad(key, "seconds >= 0")
        for key in ("boot_report_s", "dropout_off_s", "dropout_on_s"):
            low, high = getattr(self, key)
            if not 0 <= low <= high:
                raise bad(key, "[low, high] seconds, 0 <= low <= high")
        if self.dropout_on_s[1] <= 0 and self.dropout > 0:
            raise bad("dropout_on_s", "a dropping node must stay for some time")
        if self.reading not in READING:
            raise bad("reading", f"one of {', '.join(READING)}")
        if not self.hops or any(h < 1 or h > 15 or w < 0 for h, w in self.hops.items()):
            raise bad("hops", "a table of hop depth (1..15) = weight, e.g. { 1 = 60, 2 = 40 }")
        if sum(self.hops.values()) <= 0:
            raise bad("hops", "the weights add up to nothing")
        for key in ("missing", "dropout", "route_failure", "route_failure_deny"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "a share between 0 and 1")
        if self.extra < 0:
            raise bad("extra", "a count >= 0")
        if self.unknown_node_deny not in (7, 12):
            raise bad("unknown_node_deny", "12 (not in the network) or 7 (no such meter)")
        if self.events_per_hour < 0:
            raise bad("events_per_hour", ">= 0")
        if not 1 <= self.node_page_max <= 255:
            raise bad("node_page_max", "1..255")
        if self.ask_retries < 0 or self.report_retries < 0:
            raise bad("ask_retries" if self.ask_retries < 0 else "report_retries", ">= 0")


def _convert(key: str, raw: Any, default: Any, path: str) -> Any:
    """A TOML value as the type of the field's default."""
    try:
        if isinstance(default, bool):
            if not isinstance(raw, bool):
                raise TypeError
            return raw
        if isinstance(default, int):
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise TypeError
            return raw
        if isinstance(default, float):
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise TypeError
            return float(raw)
        if isinstance(default, str):
            if not isinstance(raw, str):
                raise TypeError
            return raw
        if isinstance(default, tuple):
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                return (float(raw), float(raw))
            if not isinstance(raw, list) or len(raw) != 2:
                raise TypeError
            return (float(raw[0]), float(raw[1]))
        if isinstance(default, dict):
            if not isinstance(raw, Mapping):
                raise TypeError
            return {int(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        pass
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    what = kind.get(type(default), "[low, high]" if isinstance(default, tuple) else "a table")
    raise CarrierConfigError(f"{path}: expected {what}, got {raw!r}")
