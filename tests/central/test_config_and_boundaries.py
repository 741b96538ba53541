"""Configuration and the command line's exit codes (what central/ may import: import-linter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import CentralConfig, load
from common.config import EX_CONFIG, ConfigError
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
