"""Configuration, the command line's exit codes, and what central/ may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from central.config import CentralConfig, load
from meterlink.cli import main
from meterlink.config import EX_CONFIG, ConfigError

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
    assert load(path).influx.token == "s3cret"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_central_imports_neither_agent_nor_simulators() -> None:
    files = sorted((REPO / "central").rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(REPO)): sorted(_imports(f) & {"agent", "simulators"})
        for f in files
        if _imports(f) & {"agent", "simulators"}
    }
    assert offenders == {}


def test_central_takes_only_vocabulary_and_payloads_from_protocols() -> None:
    used: set[str] = set()
    for f in (REPO / "central").rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("protocols"):
                used.add(node.module or "")
    assert used <= {"protocols.payloads", "protocols.measurements"}
