"""Any configuration file, however wrong, ends in a `ConfigError` (the fleet file: a
`FleetError`) whose one line names the problem — never a traceback. The commented examples are
mutated at random places (a value replaced by another type, a key removed, a key added) and
written back as TOML; random text stands for a file that is not TOML at all."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from central.config import load as load_central
from common.config import ConfigError
from meterlink.cli import main
from simulators import parse_fleet
from simulators.fleet import FleetError

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """TOML for a document: every top-level key as one line, tables inline."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


toml_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(out)[1:]))
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(toml_values)
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=8))] = draw(toml_values)
            elif isinstance(target, list):
                target.append(draw(toml_values))
            else:
                parent[path[-1]] = draw(toml_values)
    return out


AGENT = tomllib.loads((REPO / "deploy" / "agent.example.toml").read_text(encoding="utf-8"))
CENTRAL = tomllib.loads((REPO / "deploy" / "central.example.toml").read_text(encoding="utf-8"))
FLEET = tomllib.loads((REPO / "simulators" / "fleets" / "example.toml").read_text(encoding="utf-8"))


def _one_line(exc: Exception) -> None:
    text = str(exc)
    assert text
    assert "Traceback" not in text


def test_the_toml_writer_round_trips_the_examples() -> None:
    for doc in (AGENT, CENTRAL, FLEET):
        assert tomllib.loads(to_toml(doc)) == doc


@FUZZ
@given(doc=mutated(AGENT))
def test_agent_config(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        _one_line(exc)


@FUZZ
@given(doc=mutated(CENTRAL))
def test_central_config(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "central.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    try:
        load_central(path)
    except ConfigError as exc:
        _one_line(exc)


@FUZZ
@given(doc=mutated(FLEET))
def test_fleet_file(doc: dict[str, Any]) -> None:
    try:
        parse_fleet(to_toml(doc))
    except FleetError as exc:
        _one_line(exc)


@FUZZ
@given(text=st.text(max_size=300))
def test_text_that_is_not_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "any.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for load in (load_config, load_central):
        try:
            load(path)
        except ConfigError as exc:
            _one_line(exc)
    try:
        parse_fleet(text)
    except FleetError as exc:
        _one_line(exc)


@pytest.mark.parametrize(
    ("command", "doc"), [("agent", AGENT), ("central", CENTRAL)], ids=["agent", "central"]
)
def test_the_check_command_exits_78_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, doc: dict[str, Any]
) -> None:
    bad = copy.deepcopy(doc)
    bad["mqtt"]["port"] = {"nested": ["not", "a", "port"]}
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(bad), encoding="utf-8")
    assert main([command, "check", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "mqtt.port" in err
    assert "Traceback" not in err
