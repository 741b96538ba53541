"""`meterlink sim` as a technician runs it: a subprocess serving on TCP and a pty, with
the -v trace and the JSONL answer record; the example fleet; the archive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
import tty
from pathlib import Path

from protocols.dlt645 import Address, FrameDecoder, ReadRequest, to_frame
from protocols.dlt645.describe import trace_line
from protocols.payloads import validate
from simulators import load_fleet, parse_fleet
from tests.fixtures.services import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
FLEETS = REPO / "simulators" / "fleets"
ONE_BUS = """
seed = 1
[[district]]
name = "d"
[[district.bus]]
name = "b1"
[[district.bus.meters]]
first_address = "123456781012"
models = { DDZY666 = 1 }
"""


def _meterlink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterlink", *args], capture_output=True, text=True, timeout=60
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    return out


def test_example_fleet_is_the_shipped_file_and_loads() -> None:
    done = _meterlink("sim", "fleet", "--example")
    assert done.returncode == 0
    assert done.stdout == (FLEETS / "example.toml").read_text(encoding="utf-8")
    tomllib.loads(done.stdout)
    fleet = parse_fleet(done.stdout)
    assert {b.protocol for b in fleet.buses} == {"dlt645", "modbus"}


def test_shipped_fleets_load() -> None:
    counts = {path.name: len(load_fleet(path).meters()) for path in sorted(FLEETS.glob("*.toml"))}
    assert all(counts.values()), counts
    assert counts["concentrator-1024.toml"] == 1024


def test_archive_matches_the_payload_schema(tmp_path: Path) -> None:
    done = _meterlink("sim", "fleet", "--archive", "--fleet", str(FLEETS / "example.toml"))
    assert done.returncode == 0, done.stderr
    meters = json.loads(done.stdout)
    validate(
        "archive",
        {
            "schema": "meterlink.archive/1",
            "concentrator": "c1",
            "version": 1,
            "updated_at": "2026-03-10T10:00:00+08:00",
            "meters": meters,
        },
    )
    modbus = [m for m in meters if m["protocol"] == "modbus"]
    assert modbus == [
        {"meter": "modbus-1:1", "unit": 1, "protocol": "modbus", "model": modbus[0]["model"],
         "bus": "modbus-1", "district": "riverside", "manufacturer": modbus[0]["manufacturer"],
         "prepaid": False},
        {"meter": "modbus-1:2", "unit": 2, "protocol": "modbus", "model": modbus[1]["model"],
         "bus": "modbus-1", "district": "riverside", "manufacturer": modbus[1]["manufacturer"],
         "prepaid": False},
    ]  # fmt: skip


def test_bad_fleet_names_the_key(tmp_path: Path) -> None:
    said = _refused(tmp_path, ONE_BUS + "[[district.bus.meters]]\nfirst_address='1'\ncolour = 3\n")
    assert "district[0].bus[0].meters[1].colour: unknown key" in said


def _refused(tmp_path: Path, fleet: str) -> str:
    """`meterlink sim fleet` on a bad fleet file: exit 78 (EX_CONFIG); what it said."""
    bad = tmp_path / "bad.toml"
    bad.write_text(fleet, encoding="utf-8")
    done = _meterlink("sim", "fleet", "--archive", "--fleet", str(bad))
    assert done.returncode == 78, done.stderr
    return done.stderr


def test_a_meter_count_out_of_range_is_refused_before_any_meter_is_built(tmp_path: Path) -> None:
    """A typo's two million meters used to be built one by one (hours, found by the config fuzz
    test hanging); a fraction or a string was truncated or misreported."""
    for count, shown in (("2000000", "2000000"), ("-1", "-1"), ("2.5", "2.5"), ('"20"', "'20'")):
        said = _refused(
            tmp_path, ONE_BUS + f"[[district.bus.meters]]\nfirst_address='1'\ncount = {count}\n"
        )
        assert (
            f"district[0].bus[0].meters[1].count: a whole number of meters from 0 to 2040"
            f" (the largest archive a carrier module takes), not {shown}"
        ) in said


def test_a_share_outside_0_to_1_is_refused(tmp_path: Path) -> None:
    """A share of 685 was taken as "always", -3 as "never"."""
    rule = "[[district.bus.meters]]\nfirst_address='1'\n"
    for where, line, shown in (
        ("meters[1].corrupt", "corrupt = 685", "685"),
        ("meters[1].slow", "slow = -3", "-3"),
        ("meters[1].prepaid", "prepaid = '0.5'", "'0.5'"),
        ("meters[1].dead", "dead = true", "True"),
    ):
        said = _refused(tmp_path, ONE_BUS + rule + line + "\n")
        assert f"district[0].bus[0].{where}: a share from 0 to 1, not {shown}" in said
    bus = "[[district]]\nname = 'd'\n[[district.bus]]\nname = 'b'\n"
    said = _refused(tmp_path, bus + "noise = [{ from = 2, to = 4, rate = 2.5 }]\n")
    assert "district[0].bus[0].noise[0].rate: a share from 0 to 1, not 2.5" in said
    said = _refused(tmp_path, bus + "loss = 1.5\n")
    assert "district[0].bus[0].loss: a share from 0 to 1, not 1.5" in said


def test_modbus_unit_ids_out_of_range_are_refused(tmp_path: Path) -> None:
    for first, count in ((0, 1), (240, 10), (1, 300)):
        said = _refused(
            tmp_path,
            "[[district]]\nname = 'd'\n[[district.bus]]\nname = 'm'\nprotocol = 'modbus'\n"
            f"[[district.bus.meters]]\nmodels = {{ DTSU666 = 1 }}\nfirst_unit = {first}\n"
            f"count = {count}\n",
        )
        assert (
            f"district[0].bus[0].meters[0]: Modbus unit ids are 1 to 247; first_unit = {first}"
            f" and count = {count} do not fit"
        ) in said


def test_serve_tcp_with_trace_and_record(tmp_path: Path) -> None:
    fleet_file = tmp_path / "one.toml"
    fleet_file.write_text(ONE_BUS, encoding="utf-8")
    record = tmp_path / "record.jsonl"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterlink", "sim", "serve", "--fleet", str(fleet_file),
         "--tcp", f"127.0.0.1:{port}", "-v", "--record", str(record)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_port(port, proc=proc)  # type: ignore[arg-type]
        import socket

        request = to_frame(Address.parse("123456781012"), ReadRequest(0x00010000)).to_bytes()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            decoder = FrameDecoder()
            events: list[object] = []
            reply = b""
            while not events:
                chunk = sock.recv(4096)
                reply += chunk
                events = list(decoder.feed(chunk))
    finally:
        out = _stop(proc)
    lines = out.splitlines()
    assert lines[0].startswith(f"bus b1 (dlt645) tcp 127.0.0.1:{port}")
    assert trace_line("->", request) in lines
    assert trace_line("<-", reply) in lines
    rows = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["meter"] == "123456781012"
    assert rows[0]["di"] == "00010000"
    assert rows[0]["outcome"] == "answered"


def test_serve_pty_with_a_link(tmp_path: Path) -> None:
    fleet_file = tmp_path / "one.toml"
    fleet_file.write_text(ONE_BUS, encoding="utf-8")
    link = tmp_path / "meters"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterlink", "sim", "serve", "--fleet", str(fleet_file),
         "--pty", str(link)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"bus b1 (dlt645) pty {link}")
        assert proc.stdout.readline().strip() == "ready"
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            os.write(
                fd, to_frame(Address.parse("123456781012"), ReadRequest(0x00900200)).to_bytes()
            )
            decoder = FrameDecoder()
            events: list[object] = []
            while not events:
                events = list(decoder.feed(os.read(fd, 4096)))
        finally:
            os.close(fd)
    finally:
        _stop(proc)
    assert not link.exists()
