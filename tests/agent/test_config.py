"""The agent configuration: the example loads, mistakes are named, exit code 78."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.archive import ArchiveStore, ArchiveUpdateError
from agent.budget import daily_budget
from agent.config import load_config
from agent.daemon import STAGES
from common.config import EX_CONFIG, ConfigError
from tests.conftest import REPO
from tests.fixtures.pki import make_pki

EXAMPLE = REPO / "deploy" / "agent.example.toml"
UNIT = REPO / "deploy" / "systemd" / "meterlink-agent.service"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
[agent]
concentrator = "c-1"
state_dir = "{state}"
[[buses]]
name = "b1"
url = "serial:///dev/ttyS1"
[[archive.meters]]
address = "1"
bus = "b1"
"""


def test_example_config_loads_with_every_section() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.agent.concentrator == "c-0001"
    assert [b.name for b in cfg.buses] == ["rs485-1", "dtu-east", "modbus-1"]
    assert {m.protocol for m in cfg.archive.meters} == {"dlt645-2007", "dlt645-1997", "modbus"}
    assert cfg.buses[0].bus_url.parity == "E"  # production default stays 8E1
    assert cfg.plans.daily.backfill_days == 7


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            ("[agent]", "[agent]\nconcentratr = 'x'"),
            "agent.concentratr: unknown key; did you mean concentrator?",
        ),
        (
            ('url = "serial:///dev/ttyS1"', 'url = "serial:///dev/ttyS1?baud=2401"'),
            "not a standard rate",
        ),
        (('bus = "b1"', 'bus = "b2"'), "archive.meters[0].bus: no bus 'b2'"),
        (
            # two workers would share one half-duplex line: one could take the other's reply
            ('url = "serial:///dev/ttyS1"', 'url = "tcp://10.0.0.7:4001?in_flight=2"'),
            "buses[0]: bus URL 'tcp://10.0.0.7:4001?in_flight=2': a serial server carries one"
            " half-duplex RS-485 line: in_flight=1 (only a carrier module pairs replies with"
            " their requests, so only carrier:// buses take in_flight > 1)",
        ),
        (
            ('url = "serial:///dev/ttyS1"', 'url = "carrier:///dev/ttyS4?mode=point&in_flight=4"'),
            "mode=point reads one meter at a time: in_flight=1",
        ),
        (('address = "1"', 'address = "12ab"'), "address must be 1-12 digits"),
        (
            ("[agent]", "[plans.daily]\nretry_spacing = 5\n[agent]"),
            "plans.daily.retry_spacing: unknown key; did you mean retry_spacing_minutes?",
        ),
        (("[agent]", "[plans.daily]\nstart = '25:00'\n[agent]"), "'25:00' is not HH:MM"),
        (('concentrator = "c-1"', 'concentrator = "c/1"'), "must match"),
        (
            ('concentrator = "c-1"', "concentrator = 7"),
            "agent.concentrator: expected str, got int 7",
        ),
    ],
)
def test_mistakes_are_named(tmp_path: Path, patch: tuple[str, str], message: str) -> None:
    text = MINIMAL.format(state=tmp_path).replace(*patch)
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert message in str(err.value)


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINK_MQTT_PASSWORD", "s3cret")
    monkeypatch.setenv("METERLINK_MQTT_COMMAND_KEY", "00ff")
    cfg = load_config(_write(tmp_path, MINIMAL.format(state=tmp_path)))
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.reveal() == "s3cret"
    assert cfg.mqtt.command_key is not None
    assert cfg.mqtt.command_key.reveal() == "00ff"
    assert "s3cret" not in repr(cfg)


def test_bad_config_exits_78_with_a_readable_message(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.format(state=tmp_path).replace("[agent]", "[agent]\nbogus = 1"))
    proc = subprocess.run(
        [sys.executable, "-m", "meterlink", "agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EX_CONFIG
    assert "agent.bogus: unknown key" in proc.stdout + proc.stderr


def test_check_command_checks_tls_files_and_secrets_and_prints_the_budget(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", "c-0001")
    config = tmp_path / "agent.toml"
    config.write_text(
        EXAMPLE.read_text(encoding="utf-8")
        .replace("/etc/meterlink/tls/ca.pem", str(pki.ca))
        .replace("/etc/meterlink/tls/c-0001.pem", str(pki.cert("c-0001")))
        .replace("/etc/meterlink/tls/c-0001.key", str(pki.key("c-0001")))
    )

    def check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterlink", "agent", "check", "--config", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "METERLINK_MQTT_COMMAND_KEY": "key-7f3a9c"},
        )

    proc = check(config, "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "bus rs485-1: 1 meters" in proc.stdout
    assert f"mqtt: TLS to mqtt.example.net:8883, broker checked against {pki.ca}" in proc.stdout
    assert "secret mqtt.command_key: set from METERLINK_MQTT_COMMAND_KEY" in proc.stdout
    assert "secret mqtt.password: not set" in proc.stdout
    assert '"command_key": "********"' in proc.stdout
    assert "key-7f3a9c" not in proc.stdout + proc.stderr
    # the example's own paths do not exist here: said, and the exit code is not 0
    proc = check(EXAMPLE)
    assert proc.returncode == 1
    assert "mqtt: PROBLEM: TLS files: ca_file /etc/meterlink/tls/ca.pem" in proc.stdout


def test_budget_warns_when_a_bus_cannot_finish(tmp_path: Path) -> None:
    many = "".join(f'[[archive.meters]]\naddress = "{i}"\nbus = "b1"\n' for i in range(2, 1501))
    text = MINIMAL.format(state=tmp_path).replace(
        'url = "serial:///dev/ttyS1"', 'url = "serial:///dev/ttyS1?baud=1200"'
    )
    text += many + '[plans.daily]\nstart = "00:05"\ndeadline = "00:30"\n'
    cfg = load_config(_write(tmp_path, text))
    (budget,) = daily_budget(cfg, ArchiveStore.preview(cfg))
    assert budget.meters == 1500
    assert not budget.ok
    assert "DOES NOT FIT" in budget.describe()
    # two reads per meter: 2 x (20 B request + 0.26 s + reply) at 1200 baud, 11 bits a byte
    per_meter = (20 * 11 / 1200 + 0.26 + 21 * 11 / 1200 + 0.02) + (
        20 * 11 / 1200 + 0.26 + 36 * 11 / 1200 + 0.02
    )
    silent = 21 * 11 / 1200 + 0.5 + 0.03 + 0.02  # window + slack + gap
    assert budget.round_s == pytest.approx(1500 * (0.98 * per_meter + 0.02 * silent))


def test_budget_of_a_carrier_bus_shares_the_module_time_by_the_window(tmp_path: Path) -> None:
    many = "".join(f'[[archive.meters]]\naddress = "{i}"\nbus = "b1"\n' for i in range(2, 1025))
    rounds = {}
    for window in (1, 16):
        url = f"carrier:///dev/ttyS4?in_flight={window}"
        text = MINIMAL.format(state=tmp_path).replace(
            'url = "serial:///dev/ttyS1"', f'url = "{url}"'
        )
        cfg = load_config(_write(tmp_path, text + many))
        (budget,) = daily_budget(cfg, ArchiveStore.preview(cfg))
        rounds[window] = budget
    assert rounds[1].exchanges_per_round == 1024  # freeze time + energy in one AFN F1 F1
    # module time 1.4 s a read (12 s for the 2 % failing), shared by the window; the serial
    # line to the module (9600 8E1) carries each request and reply once: 31 + 31 bytes of
    # 1376.2 around 16 + 21 and 16 + 36 bytes of 645
    line = 1024 * (62 + 16 + 21 + 16 + 36) * 11 / 9600
    module = 1024 * (0.98 * 1.4 + 0.02 * 12.0)
    assert rounds[1].round_s == pytest.approx(module + line)
    assert rounds[16].round_s == pytest.approx(module / 16 + line)


def test_archive_versions_and_centre_updates(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL.format(state=tmp_path)))
    store = ArchiveStore(cfg)
    assert store.current.version == 1
    assert [m.meter_id for m in store.current.meters] == ["000000000001"]
    updated = store.apply_update(
        {"mode": "upsert", "meters": [{"address": "2", "bus": "b1", "prepaid": True}]}
    )
    assert updated.version == 2
    assert ArchiveStore(cfg).current.version == 2  # centre updates survive a restart
    with pytest.raises(ArchiveUpdateError, match="no bus named 'nope'"):
        store.apply_update({"mode": "upsert", "meters": [{"address": "3", "bus": "nope"}]})
    assert store.current.version == 2  # a refused update changes nothing
    with pytest.raises(ArchiveUpdateError, match="not in the archive"):
        store.apply_update({"mode": "remove", "meters": ["999999999999"]})
    edited = load_config(
        _write(tmp_path, MINIMAL.format(state=tmp_path).replace('address = "1"', 'address = "5"'))
    )
    assert store.reload(edited).version == 3  # an edited config replaces the working copy
    assert [m.meter_id for m in store.current.meters] == ["000000000005"]
    payload = store.current.payload()
    assert payload["meters"][0] == {
        "meter": "000000000005",
        "protocol": "dlt645-2007",
        "bus": "b1",
        "address": "000000000005",
        "prepaid": False,
    }


def test_unit_file_stops_within_timeout_and_does_not_loop_on_bad_config() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    service = unit["Service"]
    assert service["RestartPreventExitStatus"] == "78"
    assert load_config(EXAMPLE).stop_timeout_s < float(service["TimeoutStopSec"])
    assert sum(STAGES.values()) == pytest.approx(1.0)
    assert service["NoNewPrivileges"] == "yes"
