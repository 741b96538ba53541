"""The meter archive (档案): which meters this concentrator is responsible for.

The working copy lives in ``<state_dir>/archive.json`` with an integer version. It starts from
the config (inline `[[archive.meters]]` and/or the `archive.file`); the centre updates it by
command (replace / upsert / remove). When the technician edits the configured archive, the
configured content replaces the working copy at the next start or SIGHUP (version + 1);
otherwise centre updates survive restarts. Writes are atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common.clock
from agent.config import AgentConfig, MeterConfig
from common.config import ConfigError, build, load_toml

__all__ = ["Archive", "ArchiveStore", "ArchiveUpdateError", "load_meter_list"]


class ArchiveUpdateError(ValueError):
    """An archive update from the centre that cannot be applied (nothing is changed)."""


@dataclass(frozen=True)
class Archive:
    version: int
    updated_at: dt.datetime
    meters: tuple[MeterConfig, ...]

    def by_bus(self) -> dict[str, list[MeterConfig]]:
        out: dict[str, list[MeterConfig]] = {}
        for m in self.meters:
            out.setdefault(m.bus, []).append(m)
        return out

    def get(self, meter_id: str) -> MeterConfig | None:
        for m in self.meters:
            if m.meter_id == meter_id:
                return m
        return None

    def payload(self) -> dict[str, Any]:
        """The `archive` MQTT payload body (the publisher adds schema and concentrator)."""
        return {
            "version": self.version,
            "updated_at": self.updated_at.isoformat(timespec="seconds"),
            "meters": [_entry(m) for m in self.meters],
        }


def _entry(m: MeterConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"meter": m.meter_id, "protocol": m.protocol, "bus": m.bus}
    if m.address is not None:
        out["address"] = m.address.rjust(12, "0")
    if m.unit is not None:
        out["unit"] = m.unit
    for key in ("model", "district", "manufacturer", "tariff_plan"):
        if getattr(m, key):
            out[key] = getattr(m, key)
    out["prepaid"] = m.prepaid
    return out


def _meters_from(data: Any, where: str) -> list[MeterConfig]:
    items = data.get("meters") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of meters or a table with a `meters` array")
    return [build(MeterConfig, item, f"{where}: meters[{i}]") for i, item in enumerate(items)]


def load_meter_list(path: Path) -> list[MeterConfig]:
    """Meters from a JSON or TOML archive file (e.g. `meterlink sim fleet --archive`)."""
    if path.suffix == ".toml":
        return _meters_from(load_toml(path), str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such archive file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON archive: {exc}") from None
    return _meters_from(data, str(path))


def _check(meters: Iterable[MeterConfig], buses: set[str]) -> tuple[MeterConfig, ...]:
    seen: set[str] = set()
    addresses: set[tuple[str, str]] = set()
    out = []
    for m in meters:
        if m.bus not in buses:
            raise ConfigError(f"meter {m.meter_id}: no bus named {m.bus!r}")
        if m.meter_id in seen:
            raise ConfigError(f"meter {m.meter_id} is archived twice")
        if m.address is not None:
            key = (m.bus, m.address.rjust(12, "0"))
            if key in addresses:
                raise ConfigError(f"address {key[1]} appears twice on bus {m.bus}")
            addresses.add(key)
        seen.add(m.meter_id)
        out.append(m)
    return tuple(out)


def _digest(meters: Iterable[MeterConfig]) -> str:
    blob = json.dumps([dataclasses.asdict(m) for m in meters], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ArchiveStore:
    def __init__(self, cfg: AgentConfig) -> None:
        self._cfg = cfg
        self._path = cfg.agent.state_dir / "archive.json"
        self._buses = {b.name for b in cfg.buses}
        self.current = self._load()

    def reload(self, cfg: AgentConfig) -> Archive:
        """SIGHUP: pick up an edited config / archive file."""
        self._cfg = cfg
        self._buses = {b.name for b in cfg.buses}
        self.current = self._load()
        return self.current

    @staticmethod
    def preview(cfg: AgentConfig) -> list[MeterConfig]:
        """The configured archive (config + archive file), checked, without touching state."""
        meters = list(cfg.archive.meters)
        if cfg.archive.file is not None:
            meters += load_meter_list(cfg.archive.file)
        return list(_check(meters, {b.name for b in cfg.buses}))

    def _configured(self) -> tuple[MeterConfig, ...]:
        return tuple(self.preview(self._cfg))

    def _load(self) -> Archive:
        configured = self._configured()
        digest = _digest(configured)
        saved = self._read_saved()
        if saved is not None and saved["config_digest"] == digest:
            meters = _check(
                (build(MeterConfig, m, "archive.json") for m in saved["meters"]), self._buses
            )
            return Archive(saved["version"], dt.datetime.fromisoformat(saved["updated_at"]), meters)
        version = saved["version"] + 1 if saved is not None else 1
        archive = Archive(version, common.clock.current().now(self._cfg.agent.tz), configured)
        self._save(archive, digest)
        return archive

    def _read_saved(self) -> dict[str, Any] | None:
        try:
            saved: dict[str, Any] = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._path}: unreadable archive working copy: {exc}") from None
        return saved

    def _save(self, archive: Archive, digest: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "version": archive.version,
            "updated_at": archive.updated_at.isoformat(),
            "config_digest": digest,
            "meters": [
                {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
                for m in archive.meters
            ],
        }
        tmp = self._path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(body, f, indent=1, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._path)

    def apply_update(self, update: Mapping[str, Any]) -> Archive:
        """Apply a centre update: {"mode": "replace"|"upsert"|"remove", "meters": [...]}.

        For "remove" the items may be meter ids (strings). The whole update applies or none.
        """
        mode = update.get("mode", "upsert")
        items = update.get("meters")
        if not isinstance(items, list):
            raise ArchiveUpdateError("archive update needs a `meters` list")
        current = {m.meter_id: m for m in self.current.meters}
        try:
            if mode == "remove":
                ids = [i if isinstance(i, str) else str(i.get("meter", "")) for i in items]
                missing = [i for i in ids if i not in current]
                if missing:
                    raise ArchiveUpdateError(f"not in the archive: {', '.join(missing)}")
                meters = [m for k, m in current.items() if k not in ids]
            else:
                incoming = [build(MeterConfig, i, f"meters[{n}]") for n, i in enumerate(items)]
                if mode == "replace":
                    meters = incoming
                elif mode == "upsert":
                    merged = dict(current)
                    merged.update({m.meter_id: m for m in incoming})
                    meters = list(merged.values())
                else:
                    raise ArchiveUpdateError(f"unknown mode {mode!r} (replace, upsert, remove)")
            checked = _check(meters, self._buses)
        except ConfigError as exc:
            raise ArchiveUpdateError(str(exc)) from None
        archive = Archive(
            self.current.version + 1, common.clock.current().now(self._cfg.agent.tz), checked
        )
        self._save(archive, _digest(self._configured()))
        self.current = archive
        return archive
