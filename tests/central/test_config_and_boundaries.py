"""Configuration and the command line's exit codes (what central/ may import: import-linter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import CentralConfig, load, reloaded
from central.store import parse_url
from common.config import EX_CONFIG, ConfigError, build
from meterlink.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_commented_example_loads_and_matches_the_defaults() -> None:
    assert load(REPO / "deploy" / "central.example.toml") == CentralConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots: unknown key; did you mean host?"),
        ("[influx]\napi = 'v3'\n", "influx.api: 'v3' is not one of 'v1', 'v2'"),
        ("[coverage]\ntimely_by = 'late'\n", "is not a time of day"),
        ("[consumer]\nbatch_readings = '10'\n", "consumer.batch_readings: expected int"),
        ("[mqtt]\ngroup = 'a/b'\n", "group 'a/b' must match"),
        ("[store]\nurl = 'mysql://h/db'\n", "unknown scheme 'mysql'"),
        ("[store]\nurl = 'sqlite://host/x.sqlite3'\n", "a SQLite file is local"),
        ("[store]\nurl = 'postgresql://u@h:99999/db'\n", "the port is not a number"),
        ("[store]\nurl = 'postgresql://u@h:5432'\n", "names no database"),
        ("[store]\nurl = ''\n", "store url is empty"),
        ("[metrics]\nlisten = '9465'\n", "listen '9465': expected host:port"),
        ("[metrics]\nlisten = 'localhost:http'\n", "expected host:port"),
        ("[metrics]\nport = 9465\n", "metrics.port: unknown key"),
        ("[log]\nlevel = 'verbose'\n", "log.level: 'verbose' is not one of"),
        ("[log]\nformat = 'xml'\n", "log.format: 'xml' is not one of"),
        ("[consumer]\nstop_timeout_s = 0\n", "stop_timeout_s must be > 0"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "central.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load(path)


def test_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[influx]\nurl = 'influx:8086'\n")
    assert main(["central", "run", "--config", str(path)]) == EX_CONFIG
    assert "must start with http://" in capsys.readouterr().err


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[influx]\napi = 'v2'\n")
    monkeypatch.setenv("METERLINK_INFLUX_TOKEN", "s3cret")
    token = load(path).influx.token
    assert token is not None
    assert token.reveal() == "s3cret"


def test_no_password_in_the_store_url_and_none_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[store]\nurl = 'postgresql://central:s3cret@db:5432/meterlink'\n")
    with pytest.raises(ConfigError, match="no password in the URL") as caught:
        load(path)
    assert "s3cret" not in str(caught.value)


def test_the_store_password_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[store]\nurl = 'postgresql://central@db.example.net:5432/meterlink'\n")
    monkeypatch.setenv("METERLINK_STORE_PASSWORD", "s3cret")
    password = load(path).store.password
    assert password is not None
    assert password.reveal() == "s3cret"


@pytest.mark.parametrize(
    ("url", "dialect", "where"),
    [
        (
            "sqlite:///var/lib/meterlink/coverage.sqlite3",
            "sqlite",
            "/var/lib/meterlink/coverage.sqlite3",
        ),
        ("sqlite:var/demo/coverage.sqlite3", "sqlite", "var/demo/coverage.sqlite3"),
        ("/srv/meterlink/state.sqlite3", "sqlite", "/srv/meterlink/state.sqlite3"),
        ("postgresql://central@db:5432/meterlink?sslmode=verify-full", "postgresql", None),
        ("postgres://central@db/meterlink", "postgresql", None),
    ],
)
def test_store_urls(url: str, dialect: str, where: str | None) -> None:
    parsed = parse_url(url)
    assert parsed.dialect == dialect
    assert parsed.path == (Path(where) if where else None)


def test_the_ledger_key_of_before_the_store_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[coverage]\nledger = '/srv/meterlink/coverage.sqlite3'\ninterval_s = 5.0\n")
    with caplog.at_level("WARNING", logger="central.config"):
        cfg = load(path)
    assert cfg.store.url == "sqlite:///srv/meterlink/coverage.sqlite3"
    assert cfg.coverage.interval_s == 5.0
    assert "[coverage] ledger is deprecated; write [store] url" in caplog.text
    path.write_text("[coverage]\nledger = 'a.sqlite3'\n[store]\nurl = 'sqlite:b.sqlite3'\n")
    with pytest.raises(ConfigError, match=r"coverage\.ledger and store\.url both set"):
        load(path)


def test_a_reload_takes_what_a_running_consumer_can_change_and_names_the_rest() -> None:
    running = CentralConfig()
    data = {
        "log": {"level": "debug"},
        "consumer": {"batch_readings": 777, "spool": "/elsewhere.sqlite3"},
        "coverage": {"interval_s": 5.0},
        "influx": {"retry_max_s": 3.0, "url": "http://other:8086"},
        "mqtt": {"port": 8883},
    }
    new = build(CentralConfig, data, env_prefix="METERLINK", environ={})
    out, kept = reloaded(running, new)
    assert out.log.level == "debug"
    assert out.consumer.batch_readings == 777
    assert out.coverage.interval_s == 5.0
    assert out.influx.retry_max_s == 3.0
    # kept as they were, and named
    assert out.consumer.spool == running.consumer.spool
    assert out.influx.url == running.influx.url
    assert out.mqtt == running.mqtt
    assert kept == ["[mqtt]", "[consumer] spool", "[influx] (address, database, credentials)"]
    assert reloaded(running, running) == (running, [])
