"""Every command the README shows, given bad input, ends in one clear line on stderr that says
what to change, and a non-zero exit code — never a traceback."""

from __future__ import annotations

import logging
import os
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterlink.cli import main
from tests.fixtures.services import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FLEET = REPO / "simulators" / "fleets" / "example.toml"


@pytest.fixture
def pty_path() -> Iterator[str]:
    """A raw pseudo-terminal nobody answers on (its other end stays open)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`agent run` in this process sets up the daemon's logging; leave none behind."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    return code, err


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing said on stderr"
    return lines[-1]


def _bad_config(tmp: Path) -> Path:
    blocked = tmp / "not-a-dir"
    blocked.write_text("a file where the state directory should be")
    path = tmp / "agent.toml"
    path.write_text(
        f'[agent]\nconcentrator = "c"\nstate_dir = "{blocked}/state"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntls = false\n[metrics]\nlisten = ""\n'
        '[[buses]]\nname = "b"\nurl = "tcp://127.0.0.1:9"\n'
    )
    return path


def _bad_key_fleet(tmp: Path) -> Path:
    path = tmp / "fleet.toml"
    path.write_text("seed = 1\nseeed = 2\n")
    return path


CASES = {
    # id: (argv builder, exit code, words the line must contain)
    "frame decode not hex": (lambda t, p, c: ["frame", "decode", "zz"], 2, "not hex"),
    "frame encode bad address": (
        lambda t, p, c: ["frame", "encode", "--meter", "abc", "--read", "00010000"],
        2,
        "address 'abc'",
    ),
    "sim fleet missing file": (
        lambda t, p, c: ["sim", "fleet", "--archive", "--fleet", str(t / "nope.toml")],
        78,
        "No such file",
    ),
    "sim fleet unknown key": (
        lambda t, p, c: ["sim", "fleet", "--archive", "--fleet", str(_bad_key_fleet(t))],
        78,
        "seeed",
    ),
    "sim serve bad tcp": (
        lambda t, p, c: ["sim", "serve", "--fleet", str(EXAMPLE_FLEET), "--tcp", "127.0.0.1:x"],
        2,
        "HOST:PORT",
    ),
    "sim serve record dir missing": (
        lambda t, p, c: [
            "sim",
            "serve",
            "--fleet",
            str(EXAMPLE_FLEET),
            "--record",
            str(t / "no" / "r.jsonl"),
        ],
        2,
        "--record",
    ),
    "sim serve credits dir missing": (
        lambda t, p, c: [
            "sim",
            "serve",
            "--fleet",
            str(EXAMPLE_FLEET),
            "--credits",
            str(t / "no" / "c.jsonl"),
        ],
        2,
        "--credits",
    ),
    "sim hsm fleet missing": (
        lambda t, p, c: ["sim", "hsm", "--fleet", str(t / "nope.toml")],
        78,
        "No such file",
    ),
    "sim hsm listen address unusable": (
        lambda t, p, c: ["sim", "hsm", "--fleet", str(EXAMPLE_FLEET), "--listen", "256.0.0.1:1"],
        1,
        "meterlink sim:",
    ),
    "agent check missing config": (
        lambda t, p, c: ["agent", "check", "--config", str(t / "nope.toml")],
        78,
        "no such file",
    ),
    "agent run unusable state_dir": (
        lambda t, p, c: ["agent", "run", "--config", str(_bad_config(t))],
        78,
        "state_dir",
    ),
    "read even parity on a pty": (
        lambda t, p, c: ["read", "--bus", f"serial://{p}?baud=2400", "--meter", "1", "00010000"],
        1,
        "pseudo-terminals accept only parity=N",
    ),
    "read unknown scheme": (
        lambda t, p, c: ["read", "--bus", "foo://x", "--meter", "1", "00010000"],
        2,
        "scheme must be one of",
    ),
    "read nobody listening": (
        lambda t, p, c: ["read", "--bus", f"tcp://127.0.0.1:{c}", "--meter", "1", "00010000"],
        1,
        "cannot connect",
    ),
    "read modbus without a model": (
        lambda t, p, c: ["read", "--bus", f"modbus+tcp://127.0.0.1:{c}", "--meter", "1"],
        2,
        "--model",
    ),
    "scan nobody listening": (
        lambda t, p, c: ["scan", "--bus", f"tcp://127.0.0.1:{c}"],
        1,
        "cannot connect",
    ),
    "scan a modbus bus": (
        lambda t, p, c: ["scan", "--bus", f"modbus+tcp://127.0.0.1:{c}"],
        2,
        "Modbus",
    ),
    "carrier info nobody listening": (
        lambda t, p, c: ["carrier", "info", "--bus", f"carrier+tcp://127.0.0.1:{c}"],
        1,
        "cannot connect",
    ),
    "carrier read even parity on a pty": (
        lambda t, p, c: ["carrier", "read", "--bus", f"carrier://{p}", "--meter", "1", "00010000"],
        1,
        "pseudo-terminals accept only parity=N",
    ),
    "read through a carrier module nobody answers": (
        lambda t, p, c: [
            "read",
            "--bus",
            f"carrier://{p}?parity=N&command_timeout_ms=100",
            "--meter",
            "1",
            "00010000",
        ],
        1,
        "carrier module not answering",
    ),
    "carrier sync without an archive": (
        lambda t, p, c: ["carrier", "sync", "--bus", f"carrier://{p}"],
        2,
        "--config",
    ),
    "carrier on a serial bus": (
        lambda t, p, c: ["carrier", "nodes", "--bus", f"serial://{p}"],
        2,
        "is not a carrier bus",
    ),
    "central report missing config": (
        lambda t, p, c: ["central", "report", "--config", str(t / "nope.toml")],
        78,
        "no such file",
    ),
    "demo missing fleet": (
        lambda t, p, c: ["demo", "--fleet", str(t / "nope.toml"), "--workdir", str(t / "w")],
        78,
        "No such file",
    ),
    "demo bad broker address": (lambda t, p, c: ["demo", "--mqtt", "nohost"], 2, "HOST:PORT"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_clear_line(
    case: str, tmp_path: Path, pty_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build, expected_code, words = CASES[case]
    code, err = _run(build(tmp_path, pty_path, free_port()), capsys)
    assert "Traceback" not in err, err
    line = _last_line(err)
    assert code == expected_code, err
    assert words in line, err
    assert line.startswith("meterlink"), err
    usage = expected_code == 2 and "error: argument" in line  # argparse prints usage above
    if not usage:
        assert len([x for x in err.splitlines() if x.strip()]) == 1, err
