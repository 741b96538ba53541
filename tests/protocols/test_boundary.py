"""`protocols/` is sans-I/O: no event loop, no serial port, no sockets, no MQTT/Modbus/HTTP/InfluxDB
clients — checked in the source (every import statement) and in a fresh interpreter (what
importing every protocols module actually loads). `jsonschema` (pure validation, used by
`protocols/payloads.py`) is allowed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
_DYNAMIC_IMPORTERS = {"__import__", "import_module"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a source file imports, statically or by literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if name in _DYNAMIC_IMPORTERS and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return {name.split(".")[0] for name in found}


def _sources() -> list[Path]:
    return sorted(PROTOCOLS.rglob("*.py"))


def test_the_scanner_sees_every_kind_of_import() -> None:
    source = (
        "import asyncio, json\n"
        "from serial.tools import list_ports\n"
        "from . import sibling\n"
        "def f():\n"
        "    import socket\n"
        "    importlib.import_module('paho.mqtt.client')\n"
        "    __import__('pymodbus')\n"
    )
    assert imported_modules(source) == {"asyncio", "json", "serial", "socket", "paho", "pymodbus"}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_io_imports_in_the_source(path: Path) -> None:
    bad = imported_modules(path.read_text(encoding="utf-8")) & FORBIDDEN
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_codec_sources_are_all_scanned() -> None:
    names = {p.relative_to(PROTOCOLS).as_posix() for p in _sources()}
    assert {"dlt645/stream.py", "dlt645/messages.py", "dlt645/_wire.py", "errors.py"} <= names
    assert {
        "q13762/_wire.py",
        "q13762/_hunt.py",
        "q13762/frame.py",
        "q13762/stream.py",
        "q13762/mixed.py",
        "q13762/messages.py",
        "q13762/module.py",
        "q13762/archive.py",
        "q13762/reading.py",
        "q13762/inner.py",
        "q13762/describe.py",
    } <= names


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
