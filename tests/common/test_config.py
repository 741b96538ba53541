"""The configuration rules both daemons share (common/config.py, common/mqtt.py): secrets only
from the environment and never printed, renamed keys named, every key in the examples."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.config import MqttConfig as AgentMqtt
from central.config import CentralConfig, load
from central.config import MqttConfig as CentralMqtt
from common.config import ConfigError, Secret, _keys, build, describe_secrets, dump, env_name
from common.mqtt import MqttSettings
from tests.conftest import REPO

AGENT_EXAMPLE = REPO / "deploy" / "agent.example.toml"
CENTRAL_EXAMPLE = REPO / "deploy" / "central.example.toml"


@dataclasses.dataclass(frozen=True)
class Inner:
    token: Secret | None = None
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Section:
    password: Secret | None = None
    host: str = "h"
    inner: Inner = dataclasses.field(default_factory=Inner)


@dataclasses.dataclass(frozen=True)
class Config:
    mqtt: Section = dataclasses.field(default_factory=Section)


def _build(data: dict[str, object], **environ: str) -> Config:
    return build(Config, data, env_prefix="METERLINK", environ=environ)


def test_secrets_come_from_the_environment_only() -> None:
    cfg = _build({}, METERLINK_MQTT_PASSWORD="pw-1", METERLINK_MQTT_INNER_TOKEN="tk-2")
    assert cfg.mqtt.password == Secret("pw-1")
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.source == "METERLINK_MQTT_PASSWORD"
    assert cfg.mqtt.inner.token == Secret("tk-2")  # a nested section: its dotted path
    assert _build({}, METERLINK_MQTT_PASSWORD="").mqtt.password is None  # empty = unset
    assert _build({}).mqtt.password is None
    with pytest.raises(ConfigError) as err:
        _build({"mqtt": {"password": "pw-in-file"}})
    assert str(err.value) == (
        "mqtt.password: a secret is never written in the config file; set"
        " METERLINK_MQTT_PASSWORD in the environment (systemd: EnvironmentFile=)"
    )
    assert "pw-in-file" not in str(err.value)


@pytest.mark.parametrize(
    ("var", "message"),
    [
        (
            "METERLINK_MQTT_HOST",
            "METERLINK_MQTT_HOST: only secrets are read from the environment; set mqtt.host in"
            " the config file",
        ),
        (
            "METERLINK_MQTT_PASWORD",
            "METERLINK_MQTT_PASWORD: not a setting; did you mean METERLINK_MQTT_PASSWORD?",
        ),
    ],
)
def test_stray_variables_are_named(var: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _build({}, **{var: "value-1"})
    assert str(err.value) == message
    assert "value-1" not in str(err.value)


def test_unrelated_variables_are_left_alone() -> None:
    # the other daemon's secrets (one shell may export both) and other programs' variables
    cfg = _build({}, METERLINK_INFLUX_TOKEN="t", METERLINK_MQTT_COMMAND_KEY="k", PATH="/bin")
    assert cfg == Config()


def test_a_secret_never_prints() -> None:
    secret = Secret("hunter2", "METERLINK_MQTT_PASSWORD")
    cfg = Config(Section(password=secret))
    for text in (str(secret), repr(secret), f"{secret}", f"{secret:>20}", "%s" % secret):  # noqa: UP031
        assert "hunter2" not in text
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in dump(cfg)
    assert json.loads(dump(cfg))["mqtt"]["password"] == "********"
    assert describe_secrets(cfg) == [
        "secret mqtt.password: set from METERLINK_MQTT_PASSWORD",
        "secret mqtt.inner.token: not set (METERLINK_MQTT_INNER_TOKEN is empty or unset)",
    ]
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") != Secret("other")
    with pytest.raises(TypeError):
        __import__("pickle").dumps(secret)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keepalive = 30", "mqtt.keepalive: renamed to keepalive_s"),
        (
            "password_env = 'X'",
            "mqtt.password_env: removed: the password comes only from the environment, as"
            " METERLINK_MQTT_PASSWORD",
        ),
    ],
)
def test_renamed_and_removed_mqtt_keys_say_so_on_both_sides(
    tmp_path: Path, text: str, message: str
) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text(
        '[agent]\nconcentrator = "c-1"\n[[buses]]\nname = "b"\nurl = "tcp://127.0.0.1:1"\n'
        f"[mqtt]\n{text}\n"
    )
    central = tmp_path / "central.toml"
    central.write_text(f"[mqtt]\n{text}\n")
    for loader, path in ((load_config, agent), (load, central)):
        with pytest.raises(ConfigError, match=message):
            loader(path)


def test_agent_and_central_share_the_connection_keys() -> None:
    agent = {f.name for f in dataclasses.fields(AgentMqtt)}
    central = {f.name for f in dataclasses.fields(CentralMqtt)}
    shared = {f.name for f in dataclasses.fields(MqttSettings)}
    assert shared <= agent
    assert shared <= central
    assert {"tls", "ca_file", "cert_file", "key_file", "keepalive_s", "password"} <= shared


@pytest.mark.parametrize(
    ("example", "cls"), [(AGENT_EXAMPLE, AgentConfig), (CENTRAL_EXAMPLE, CentralConfig)]
)
def test_the_examples_document_every_key(example: Path, cls: type) -> None:
    """Every key appears as `key =` in its section (commented out or not); every secret by its
    environment variable (never as a key)."""
    text = example.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if stripped.startswith("[") and stripped.endswith("]") and " " not in stripped:
            current = stripped.strip("[]")
        sections[current] = sections.get(current, "") + line + "\n"
    missing = []
    for dotted, secret in _keys(cls):
        section, _, key = dotted.rpartition(".")
        body = sections.get(section, "")
        if secret:
            if env_name(section, key) not in body or f"\n{key} =" in body:
                missing.append(f"{dotted} (secret: by its variable, never as a key)")
        elif f"{key} =" not in body and f"[[{dotted}]]" not in text:  # or an array of tables
            missing.append(dotted)
    assert missing == []
