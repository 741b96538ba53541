"""The `meterlink frame` contract: one JSON object per frame on stdout, one stderr line and exit
1 per bad frame, exit 2 for input that is not hex; `encode` builds the constructed vectors byte
for byte. Run in-process through `meterlink.cli.main` and once as the installed command."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterlink.cli import main
from tests.conftest import load_vectors

VECTORS = {v["id"]: v for v in load_vectors()}
KEYS = {
    "edition",
    "address",
    "control",
    "direction",
    "abnormal",
    "follow_up",
    "function",
    "length",
    "di",
    "data",
    "values",
    "error",
}
METERLINK = Path(sys.executable).with_name("meterlink")


def _decode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    code = main(["frame", "decode", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_decode_prints_one_json_object_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, objects, err = _decode(capsys, VECTORS["V04"]["hex"])
    assert (code, err) == (0, "")
    (obj,) = objects
    assert set(obj) >= KEYS
    assert {k: obj[k] for k in KEYS} == {
        "edition": "2007",
        "address": "652022122018",
        "control": "91",
        "direction": "reply",
        "abnormal": False,
        "follow_up": False,
        "function": "read",
        "length": 10,
        "di": "0201FF00",
        "data": "00 FF 01 02 00 00 00 00 94 23",
        "values": {
            "voltage_a_v": {"value": 0.0, "unit": "V"},
            "voltage_b_v": {"value": 0.0, "unit": "V"},
            "voltage_c_v": {"value": 239.4, "unit": "V"},
        },
        "error": None,
    }


def test_several_frames_in_one_string(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(
        ["FE FE", VECTORS["V14"]["hex"], "00 16", VECTORS["V20"]["hex"], VECTORS["C08"]["hex"]]
    )
    code, objects, err = _decode(capsys, text)
    assert (code, err) == (0, "")
    assert [o["edition"] for o in objects] == ["2007", "1997", "2007"]
    assert objects[0]["values"] == {"energy_import_total_kwh": {"value": 112280.26, "unit": "kWh"}}
    assert objects[1]["di"] == "B611"
    assert objects[1]["values"] == {"voltage_a_v": {"value": 100, "unit": "V"}}
    assert objects[2]["abnormal"] is True
    assert objects[2]["error"] == {"code": 0x20, "flags": ["purchase_count_error"]}


def test_hex_may_be_split_over_arguments_and_read_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, objects, _ = _decode(capsys, "68AAAAAAAAAAAA68", "1104", "33333433", "AE16")
    assert code == 0
    assert objects[0]["address"] == "AAAAAAAAAAAA"
    monkeypatch.setattr(sys, "stdin", io.StringIO(VECTORS["V19"]["hex"] + "\n"))
    code, objects, _ = _decode(capsys, "-")
    assert code == 0
    assert objects[0]["di"] == "B611"


def test_a_bad_checksum_is_one_stderr_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, err = _decode(capsys, VECTORS["N01"]["hex"])
    assert code == 1
    assert objects == []
    assert len(err.splitlines()) == 1
    assert "ChecksumError: checksum found 85, computed 80" in err


def test_a_bad_frame_does_not_hide_the_good_ones(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join([VECTORS["V15"]["hex"], VECTORS["N01"]["hex"], VECTORS["V14"]["hex"]])
    code, objects, err = _decode(capsys, text)
    assert code == 1
    assert [o["control"] for o in objects] == ["11", "91"]
    assert "checksum found 85, computed 80" in err


@pytest.mark.parametrize("text", ["zz", "68 1", "not hex at all"])
def test_input_that_is_not_hex_exits_2(capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, objects, err = _decode(capsys, text)
    assert code == 2
    assert objects == []
    assert "not hex" in err


def test_forcing_the_edition(capsys: pytest.CaptureFixture[str]) -> None:
    # 08H has the same layout in both editions; inferred as 2007, forced to 1997
    code, objects, _ = _decode(capsys, VECTORS["C04"]["hex"])
    assert (code, objects[0]["edition"]) == (0, "2007")
    code, objects, _ = _decode(capsys, "--edition", "1997", VECTORS["C04"]["hex"])
    assert (code, objects[0]["edition"]) == (0, "1997")
    assert objects[0]["message"] == {"type": "BroadcastTimeRequest", "time": "2024-05-06T07:08:09"}


def test_a_frame_that_does_not_fit_its_function_is_printed_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a 1997 read request forced to 2007: the frame is fine, its data field is not a 2007 read
    code, objects, err = _decode(capsys, "--edition", "2007", VECTORS["V19"]["hex"])
    assert code == 1
    assert objects[0]["function"] == "unknown_01"
    assert "no message layout" in objects[0]["payload_error"]
    assert err.splitlines() == [f"meterlink frame: {objects[0]['payload_error']}"]


@pytest.mark.parametrize(
    ("vector", "args"),
    [
        (
            "C01",
            ["--meter", "123456789012", "--relay", "trip", "--valid-until", "2099-01-01T00:00:00"],
        ),
        ("C04", ["--time-sync", "2024-05-06T07:08:09"]),
        ("C05", ["--meter", "123456789012", "--read", "balance_yuan"]),
        ("C05", ["--meter", "123456789012", "--read", "00900200"]),
        ("V19", ["--edition", "1997", "--meter", "3", "--read", "B611", "--wakeup", "0"]),
        ("V13", ["--read-address"]),
    ],
)
def test_encode_reproduces_the_vectors(
    capsys: pytest.CaptureFixture[str], vector: str, args: list[str]
) -> None:
    assert main(["frame", "encode", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.strip() == VECTORS[vector]["hex"]


@pytest.mark.parametrize(
    "args",
    [
        ["--meter", "12345678901234", "--read", "00010000"],
        ["--read", "no_such_measurement"],
        ["--baud", "1234"],
        ["--edition", "1997", "--read-address"],
    ],
)
def test_encode_refuses_bad_requests(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["frame", "encode", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("meterlink frame encode: ")


def test_the_installed_command() -> None:
    decoded = subprocess.run(
        [str(METERLINK), "frame", "decode", VECTORS["V14"]["hex"], VECTORS["N01"]["hex"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert decoded.returncode == 1
    assert json.loads(decoded.stdout)["values"]["energy_import_total_kwh"]["value"] == 112280.26
    assert decoded.stderr.count("\n") == 1
    assert "checksum found 85, computed 80" in decoded.stderr

    encoded = subprocess.run(
        [str(METERLINK), "frame", "encode", "--time-sync", "2024-05-06T07:08:09"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert encoded.stdout.strip() == VECTORS["C04"]["hex"]

    not_hex = subprocess.run(
        [str(METERLINK), "frame", "decode", "xyz"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not_hex.returncode == 2
