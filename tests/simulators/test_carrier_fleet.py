"""Carrier buses in fleet files: the keys and their checks, the network plan drawn with the
fleet, the shipped fleets, and `meterlink sim` serving a CCO as a technician runs it."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocols import dlt645
from protocols import q13762 as q
from protocols.payloads import validate
from simulators import FleetError, load_fleet, parse_fleet
from simulators.carrier import CarrierConfig, Outages
from simulators.faults import rng_for
from tests.fixtures.services import free_port, wait_port
from tests.simulators.carrier_client import MAIN, carrier_fleet

REPO = Path(__file__).resolve().parents[2]
FLEETS = REPO / "simulators" / "fleets"


def _bus(carrier: str, protocol: str = "carrier", meters: str = "") -> str:
    return f"""
seed = 1
[[district]]
name = "d"
[[district.bus]]
name = "plc"
protocol = "{protocol}"
{carrier}
[[district.bus.meters]]
first_address = "000000000001"
count = 4
{meters}
"""


@pytest.mark.parametrize(
    ("carrier", "protocol", "message"),
    [
        ("[district.bus.carrier]\nprofil = 'hplc'", "carrier", "carrier.profil: unknown key"),
        ("[district.bus.carrier]\nprofile = 'wifi'", "carrier", "profile: 'hplc' or 'narrowband'"),
        (
            "[district.bus.carrier]\nprofile = 'narrowband'\nconcurrency = 4",
            "carrier",
            "carrier.concurrency: a narrowband module has one exchange outstanding",
        ),
        ("[district.bus.carrier]\nconcurrency = 'many'", "carrier", "expected an integer"),
        ("[district.bus.carrier]\ntime_scale = 0", "carrier", "carrier.time_scale"),
        ("[district.bus.carrier]\nmissing = 2", "carrier", "carrier.missing: a share"),
        ("[district.bus.carrier]\nunknown_node_deny = 9", "carrier", "12 (not in the network)"),
        ("[district.bus.carrier]\nmain_node = 'xyz'", "carrier", "carrier.main_node"),
        ("[district.bus.carrier]\nreading = 'sometimes'", "carrier", "carrier.reading"),
        ("[district.bus.carrier]\nhops = { 0 = 1 }", "carrier", "carrier.hops"),
        ("[district.bus.carrier]\nboot_report_s = [5, 1]", "carrier", "boot_report_s"),
        ("[district.bus.carrier]\nprofile = 'hplc'", "dlt645", "only a bus with protocol"),
        ("", "zigbee", "'dlt645', 'modbus' or 'carrier'"),
    ],
)
def test_carrier_keys_are_checked(carrier: str, protocol: str, message: str) -> None:
    with pytest.raises(FleetError, match="district\\[0\\]\\.bus\\[0\\]") as caught:
        parse_fleet(_bus(carrier, protocol))
    assert message in str(caught.value)


def test_a_carrier_bus_needs_645_meters_with_addresses() -> None:
    with pytest.raises(FleetError, match="speaks modbus"):
        parse_fleet(_bus("", meters="models = { DTSU666 = 1 }"))
    no_address = _bus("").replace('first_address = "000000000001"\n', "")
    with pytest.raises(FleetError, match="first_address: required"):
        parse_fleet(no_address)


def test_profile_defaults() -> None:
    hplc, narrow = CarrierConfig.defaults("hplc"), CarrierConfig.defaults("narrowband")
    assert (hplc.concurrency, hplc.max_frames, hplc.max_nodes, hplc.reading) == (
        16, 6, 2040, "concentrator",
    )  # fmt: skip
    assert (narrow.concurrency, narrow.max_nodes, narrow.monitor_timeout_s, narrow.reading) == (
        1, 1016, 90, "router",
    )  # fmt: skip
    fleet = parse_fleet(_bus("[district.bus.carrier]\nprofile = 'narrowband'\nforming_s = 5"))
    bus = fleet.bus("plc")
    assert bus.carrier is not None
    assert (bus.carrier.profile, bus.carrier.forming_s, bus.carrier.concurrency) == (
        "narrowband", 5.0, 1,
    )  # fmt: skip
    assert bus.baud == 9600


def test_the_network_plan_is_drawn_with_the_fleet() -> None:
    keys = {"missing": 0.25, "extra": 2, "dropout": 0.5}
    a, b = carrier_fleet(count=40, **keys), carrier_fleet(count=40, **keys)
    na, nb = a.bus("plc").network, b.bus("plc").network
    assert na is not None
    assert nb is not None
    assert (na.missing, na.extra) == (nb.missing, nb.extra)
    assert [(n.hops, n.quality, n.phase) for n in na.nodes.values()] == [
        (n.hops, n.quality, n.phase) for n in nb.nodes.values()
    ]
    assert len(na.missing) == 10
    assert len(na.extra) == 2
    assert all(x.startswith("99") for x in na.extra)
    listed = {e.addr.digits for e in na.initial}
    assert listed.isdisjoint(na.missing)
    assert set(na.extra) <= listed
    assert len(listed) == 40 - 10 + 2
    assert 10 < len(na.dropping()) < 30
    other = carrier_fleet(count=40, seed=12, **keys).bus("plc").network
    assert other is not None
    assert other.missing != na.missing


def test_a_module_holds_no_more_nodes_than_its_capacity() -> None:
    fleet = carrier_fleet(count=12, max_nodes=10)
    network = fleet.bus("plc").network
    assert network is not None
    assert len(network.initial) == 10
    assert len(network.missing) == 2


def test_outages_alternate_and_return() -> None:
    outages = Outages(rng_for(1, "x"), (100.0, 200.0), (10.0, 20.0))
    windows = outages.windows(2000.0)
    assert len(windows) > 5
    for (start, end), (next_start, _) in itertools.pairwise(windows):
        assert 10.0 <= end - start <= 20.0
        assert 100.0 <= next_start - end <= 200.0
    start, end = windows[2]
    assert outages.absent((start + end) / 2)
    assert not outages.absent(end + 1)
    assert outages.next_return(start + 0.5) == end
    assert outages.next_return(end + 0.5) == windows[3][1]


def test_shipped_carrier_fleets() -> None:
    fleet = load_fleet(FLEETS / "hplc-1024.toml")
    (bus,) = fleet.buses
    assert (bus.name, bus.protocol, len(bus.meters)) == ("plc-1", "carrier", 1024)
    assert bus.carrier is not None
    assert bus.network is not None
    assert bus.carrier.profile == "hplc"
    assert len(bus.network.missing) == 10
    assert len(bus.network.extra) == 3
    assert bus.network.dropping()
    assert sum(m.faults.dead for m in bus.meters) > 0
    narrow = load_fleet(FLEETS / "narrowband.toml")
    (nb,) = narrow.buses
    assert nb.carrier is not None
    assert (nb.carrier.profile, nb.carrier.reading) == ("narrowband", "router")


def _meterlink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterlink", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("name", "bus", "count"), [("hplc-1024", "plc-1", 1024), ("narrowband", "nb-1", 24)]
)
def test_archive_of_a_carrier_fleet(name: str, bus: str, count: int) -> None:
    done = _meterlink("sim", "fleet", "--archive", "--fleet", str(FLEETS / f"{name}.toml"))
    assert done.returncode == 0, done.stderr
    meters = json.loads(done.stdout)
    assert len(meters) == count
    assert {m["bus"] for m in meters} == {bus}
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


def _exchange(sock: socket.socket, frame: q.Frame) -> q.Frame:
    sock.sendall(frame.to_bytes())
    decoder = q.FrameDecoder()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in decoder.feed(sock.recv(4096)):
            if isinstance(event, q.Frame) and q.is_answer(event, frame):
                return event
    raise AssertionError("no answer")


def test_meterlink_sim_serves_a_cco_with_record_and_trace(tmp_path: Path) -> None:
    fleet_file = tmp_path / "cco.toml"
    fleet_file.write_text(
        _bus("[district.bus.carrier]\nforming_s = 0\nboot_report_s = 0\n"), encoding="utf-8"
    )
    record = tmp_path / "record.jsonl"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterlink", "sim", "serve", "--fleet", str(fleet_file),
         "--tcp", f"127.0.0.1:{port}", "--time-scale", "0.01", "--record", str(record), "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            info = _exchange(sock, q.to_frame(q.QueryModuleInfo(), q.DownInfo(seq=1)))
            assert isinstance(q.from_frame(info), q.ModuleInfo)
            meter = dlt645.Address.parse("000000000002")
            read = q.to_frame(
                q.ConcurrentRead.of_645([dlt645.to_frame(meter, dlt645.ReadRequest(0x00010000))]),
                q.DownInfo(seq=2), src=MAIN, dst=meter,
            )  # fmt: skip
            reply = q.from_frame(_exchange(sock, read))
            assert isinstance(reply, q.ConcurrentReply)
            assert reply.answered
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"bus plc (carrier) tcp 127.0.0.1:{port} meters=4" in out
    assert "-> " + read.to_bytes().hex(" ").upper() in out
    assert "\n  -> 68 02 00 00 00 00 00 68 11 04 33 33 34 33" in out
    assert "\n  <- 68 02 00 00 00 00 00 68 91" in out
    lines = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    carrier = [r for r in lines if r.get("layer") == "1376.2"]
    meters = [r for r in lines if "layer" not in r]
    reads = [r for r in carrier if r["afn"] == "F1"]
    assert len(reads) == 1
    (row,) = reads
    assert (row["seq"], row["fn"], row["meter"], row["outcome"]) == (
        2,
        1,
        "000000000002",
        "answered",
    )
    assert row["applied_s"] == pytest.approx(row["latency_s"] * 0.01, abs=1e-5)
    assert row["time_scale"] == 0.01
    assert [(m["meter"], m["di"], m["outcome"]) for m in meters] == [
        ("000000000002", "00010000", "answered")
    ]


def test_time_scale_option_is_checked() -> None:
    done = _meterlink(
        "sim", "serve", "--fleet", str(FLEETS / "hplc-1024.toml"), "--time-scale", "0"
    )
    assert done.returncode == 2
    assert "a number > 0" in done.stderr
