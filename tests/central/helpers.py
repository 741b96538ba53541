"""Schema-valid payloads as the agent sends them, a publisher, and a consumer runner."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt

from central.config import CentralConfig
from central.consumer import Consumer
from common.config import build
from common.mqtt import Client
from protocols.payloads import topic, validate

CST = dt.timezone(dt.timedelta(hours=8))
TARIFFS = ("energy_import_total_kwh", *(f"energy_import_t{i}_kwh" for i in range(1, 5)))


def stamp(day: str, hhmm: str = "00:00", tz: dt.tzinfo = CST) -> str:
    return dt.datetime.combine(
        dt.date.fromisoformat(day), dt.time.fromisoformat(hhmm), tz
    ).isoformat()


def reading(
    meter: str,
    day: str,
    *,
    read_at: str = "00:20",
    kwh: float = 100.0,
    names: Iterable[str] = TARIFFS,
    quality: str | None = None,
    item: str = "daily_freeze",
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "meter": meter,
        "item": item,
        "plan": "daily",
        "data_time": stamp(day),
        "read_at": stamp(day, read_at) if ":" in read_at and "T" not in read_at else read_at,
        "values": {
            n: {"value": kwh if i == 0 else round(kwh / 4, 2), "unit": "kWh"}
            for i, n in enumerate(names)
        },
    }
    if quality:
        r["quality"] = quality
    return r


def batch(concentrator: str, readings: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    p = {
        "schema": "meterlink.readings/1",
        "concentrator": concentrator,
        "batch_id": batch_id,
        "sent_at": "2026-11-26T05:00:00+00:00",
        "readings": readings,
    }
    validate("readings", p)
    return p


def archive(
    concentrator: str, version: int, meters: list[tuple[str, str, str]], updated_at: str
) -> dict[str, Any]:
    p = {
        "schema": "meterlink.archive/1",
        "concentrator": concentrator,
        "version": version,
        "updated_at": updated_at,
        "meters": [
            {
                "meter": m,
                "protocol": "dlt645-2007",
                "bus": "rs485-1",
                "district": d,
                "manufacturer": f,
                "address": m,
            }
            for m, d, f in meters
        ],
    }
    validate("archive", p)
    return p


def round_report(
    concentrator: str,
    day: str,
    failed: list[tuple[str, str]],
    *,
    expected: int,
    ended: str = "23:00",
    final: bool = True,
) -> dict[str, Any]:
    p = {
        "schema": "meterlink.rounds/1",
        "concentrator": concentrator,
        "plan": "daily",
        "round_id": f"{concentrator}:{day}:{ended}",
        "data_day": day,
        "final": final,
        "started_at": stamp(day, "00:05"),
        "ended_at": stamp(day, ended),
        "expected": expected,
        "read": expected - len(failed),
        "failed": [{"meter": m, "reason": r, "detail": f"{r} on rs485-1"} for m, r in failed],
    }
    validate("rounds", p)
    return p


async def publish(
    port: int,
    messages: Iterable[tuple[str, str, dict[str, Any] | bytes]],
    *,
    retain_archive: bool = True,
) -> int:
    """Publish (concentrator, kind, payload) at QoS 1 and wait for every PUBACK."""
    n = 0
    async with Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=200
    ) as client:
        pending = []
        for concentrator, kind, payload in messages:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            pending.append(
                client.publish(
                    topic(concentrator, kind),
                    body,
                    qos=1,
                    retain=retain_archive and kind == "archive",
                )
            )
            n += 1
            if len(pending) >= 10:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    return n


def config(
    tmp: Path,
    mqtt_port: int,
    influx_url: str,
    *,
    api: str = "v1",
    client_id: str = "central-test-1",
    store: str | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> CentralConfig:
    """A consumer's config for tests; the store is a SQLite file in `tmp` unless `store` (a
    URL) names another; secrets come from `environ` (METERLINK_INFLUX_PASSWORD, ...), as they
    would from the process environment."""
    data: dict[str, Any] = {
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "client_id": client_id,
            "group": "test",
            "session_expiry_s": 3600,
        },
        "influx": {
            "api": api,
            "url": influx_url,
            "database": "meterlink",
            "bucket": "meterlink",
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
            "timeout_s": 2.0,
        },
        "consumer": {
            "spool": str(tmp / f"{client_id}.spool.sqlite3"),
            "batch_readings": 2000,
            "flush_interval_s": 0.1,
        },
        "coverage": {"interval_s": 0.3},
        "store": {"url": store or f"sqlite://{tmp}/ledger.sqlite3"},
    }
    for section, values in overrides.items():
        data[section].update(values)
    return build(CentralConfig, data, env_prefix="METERLINK", environ=environ or {})


@contextlib.asynccontextmanager
async def running_consumer(cfg: CentralConfig) -> AsyncIterator[Consumer]:
    consumer = Consumer(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop), name=f"consumer {cfg.mqtt.client_id}")
    try:
        await wait_for(consumer.connected.is_set, what="consumer connected")
        yield consumer
    finally:
        stop.set()
        await task


async def wait_for(
    predicate: Callable[[], object], *, within: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def meters(n: int, start: int = 1) -> list[str]:
    return [f"{i:012d}" for i in range(start, start + n)]
