"""`protocols/` is sans-I/O: no event loop, no serial port, no sockets, no MQTT/Modbus/HTTP/InfluxDB
clients. The source is checked by import-linter in `scripts/check` (the contracts in
pyproject.toml, proven to bite by tests/test_layers.py); this checks what importing every
protocols module actually loads in a fresh interpreter, which also sees what third-party
libraries pull in. `jsonschema` (pure validation, used by `protocols/payloads.py`) is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "protocols"
FORBIDDEN = frozenset(
    {
        "asyncio",
        "serial",
        "serial_asyncio",
        "serial_asyncio_fast",
        "socket",
        "aiomqtt",
        "paho",
        "pymodbus",
        "aiohttp",
        "influxdb_client",
    }
)
_PROBE = """
import importlib, json, pkgutil, sys
import protocols
loaded = [m.name for m in pkgutil.walk_packages(protocols.__path__, "protocols.")]
for name in loaded:
    importlib.import_module(name)
print(json.dumps({"imported": loaded, "modules": sorted(sys.modules)}))
"""


def test_importing_every_protocols_module_loads_no_io_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(done.stdout)
    assert "protocols.dlt645.stream" in report["imported"]
    assert "protocols.dlt645.security" in report["imported"]
    assert {
        "protocols.q13762.stream",
        "protocols.q13762.mixed",
        "protocols.q13762.describe",
    } <= set(report["imported"])
    loaded_roots = {name.split(".")[0] for name in report["modules"]}
    assert not loaded_roots & FORBIDDEN, sorted(loaded_roots & FORBIDDEN)
