"""`meterlink frame` with Q/GDW 1376.2 frames: every public vector through `decode` (one JSON
object with the documented keys, the inner 645 frames as `decode` prints 645 frames, a bad
inner checksum reported inside, a bad outer frame one stderr line and exit 1), 645 and 1376.2
frames mixed with garbage in one input, and the carrier forms of `encode` decoded back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterlink.cli import main
from protocols.q13762 import Deny, NodeAddress, UpInfo, to_frame
from tests.protocols.q13762_data import BY_ID, FRAMES, INVALID, STREAMS, ids

KEYS = {
    "protocol",
    "dir",
    "prm",
    "comm_mode",
    "seq",
    "afn",
    "fn",
    "src",
    "dst",
    "data",
    "deny",
    "fields",
    "inner",
}
METERLINK = Path(sys.executable).with_name("meterlink")
V14 = "68 01 00 00 00 00 00 68 91 08 33 33 34 33 59 B3 55 44 DC 16"  # a 645 read reply


def _decode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    code = main(["frame", "decode", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def _encode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["frame", "encode", *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err


@pytest.mark.parametrize("v", FRAMES + STREAMS, ids=ids(FRAMES + STREAMS))
def test_every_valid_vector(capsys: pytest.CaptureFixture[str], v: dict[str, Any]) -> None:
    code, objects, err = _decode(capsys, v["hex"])
    assert (code, err) == (0, "")
    (obj,) = objects
    assert set(obj) >= KEYS
    e = v["expect"]
    assert obj["protocol"] == "1376.2"
    assert {k: obj[k] for k in ("dir", "prm", "comm_mode", "seq", "afn", "fn", "data")} == {
        k: e[k] for k in ("dir", "prm", "comm_mode", "seq", "afn", "fn", "data")
    }
    assert (obj["src"], obj["dst"]) == (e.get("src"), e.get("dst"))
    assert obj["deny"] is None
    assert isinstance(obj["fields"], dict)
    if "inner_645" not in e:
        assert obj["inner"] == []
        return
    inner = obj["inner"][0]
    assert (inner["protocol"], inner["address"], inner["control"], inner["data"]) == (
        "645",
        e["inner_645_meter"],
        e["inner_645_C"],
        e["inner_645_data_minus33"],
    )
    if e["inner_645_cs_ok"]:
        # exactly the object `frame decode` prints for the 645 frame on its own
        code, alone, _ = _decode(capsys, e["inner_645"])
        assert code == 0
        assert inner == alone[0]
    else:
        assert inner["error"] == {
            "type": "ChecksumError",
            "message": "checksum found ED, computed F0",
        }


@pytest.mark.parametrize("v", INVALID, ids=ids(INVALID))
def test_a_bad_outer_frame_is_one_stderr_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], v: dict[str, Any]
) -> None:
    code, objects, err = _decode(capsys, v["hex"])
    assert code == 1
    assert len(err.splitlines()) == 1
    assert err.startswith("meterlink frame: ")
    assert ("ChecksumError" if "CS" in v["why"] and v["id"] != "QP42" else "FramingError") in err
    # nothing on stdout, not even the 645 frame a bad 1376.2 frame carries (QP27)
    assert objects == []


def test_the_inner_checksum_error_does_not_fail_the_outer_frame(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, objects, err = _decode(capsys, BY_ID["QP37"]["hex"])
    assert (code, err) == (0, "")
    (inner,) = objects[0]["inner"]
    assert inner["di"] == "04000102"
    assert inner["function"] == "read"
    assert inner["error"]["type"] == "ChecksumError"


def test_645_and_1376_frames_mixed_with_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(
        ["FE FE 00", V14, "00 68 16 FF", BY_ID["QP22"]["hex"], "FE FE FE FE", V14, "16 16"]
    )
    text += " " + BY_ID["QP44"]["hex"]
    code, objects, err = _decode(capsys, text)
    assert (code, err) == (0, "")
    assert [(o["protocol"], o.get("afn") or o.get("function")) for o in objects] == [
        ("645", "read"),
        ("1376.2", "F1"),
        ("645", "read"),
        ("1376.2", "03"),
    ]
    assert objects[0]["values"] == {"energy_import_total_kwh": {"value": 112280.26, "unit": "kWh"}}
    assert objects[3]["fields"]["max_frame_len"] == 1103


def test_a_bad_frame_does_not_hide_its_neighbours(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join([BY_ID["QP01"]["hex"], BY_ID["QP35"]["hex"], V14])
    code, objects, err = _decode(capsys, text)
    assert code == 1
    assert [(o["protocol"], o.get("address")) for o in objects] == [
        ("1376.2", None),
        ("645", "000000000001"),
    ]
    assert "ChecksumError: checksum found 40, computed 43" in err


def test_a_deny(capsys: pytest.CaptureFixture[str]) -> None:
    meter = NodeAddress.parse("000000003304")
    main_node = NodeAddress.parse("049999888888")
    frame = to_frame(Deny(109), UpInfo(seq=0x6B), src=meter, dst=main_node)
    code, (obj,), _ = _decode(capsys, frame.to_bytes().hex())
    assert code == 0
    assert (obj["dir"], obj["prm"], obj["afn"], obj["fn"], obj["deny"]) == ("up", 0, "00", 2, 109)
    assert (obj["src"], obj["dst"], obj["seq"]) == ("000000003304", "049999888888", 0x6B)
    assert obj["fields"]["kind"] == "concurrency_exceeded"
    assert obj["fields"]["retryable"] is True


def test_looking_for_one_protocol_only(capsys: pytest.CaptureFixture[str]) -> None:
    text = BY_ID["QP22"]["hex"]
    code, objects, _ = _decode(capsys, "--protocol", "645", text)
    assert code == 0
    assert [(o["protocol"], o["di"]) for o in objects] == [("645", "00010000")]  # the inner one
    code, objects, _ = _decode(capsys, "--protocol", "1376.2", V14)
    assert code == 1


def test_a_data_unit_that_does_not_fit_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    # AFN10 F1 up (node count) with 3 bytes instead of 4
    frame = "68 12 00 C3 00 00 00 00 00 01 10 01 00 01 00 02 D8 16"
    code, (obj,), err = _decode(capsys, frame)
    assert code == 1
    assert "ends early" in obj["payload_error"]
    assert err.splitlines() == [f"meterlink frame: {obj['payload_error']}"]


# --- encode ---------------------------------------------------------------------------------
def test_encode_reproduces_a_concurrent_read_capture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _encode(
        capsys,
        "--carrier", "hplc", "--main-node", "049999888888", "--seq", "0x6B",
        "--meter", "000000003304", "--read", "00010000",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == BY_ID["QP22"]["hex"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (
            ["--carrier", "point", "--main-node", "049999888888", "--meter", "3304",
             "--read", "00010000", "--seq", "9", "--comm-mode", "1"],
            {"afn": "13", "fn": 1, "seq": 9, "comm_mode": 1, "src": "049999888888",
             "dst": "000000003304", "message": "MonitorRequest"},
        ),
        (
            ["--carrier", "hplc", "--main-node", "049999888888", "--meter", "3304",
             "--read", "energy_import_total_kwh", "--read", "0201FF00", "--wakeup", "4"],
            {"afn": "F1", "fn": 1, "message": "ConcurrentRead"},
        ),
        (
            ["--carrier", "hplc", "--main-node", "BEBEBEBEBE01", "--meter", "3304",
             "--edition", "1997", "--read", "9010"],
            {"afn": "F1", "src": "BEBEBEBEBE01", "message": "ConcurrentRead"},
        ),
        (["--nodes", "1", "25", "--seq", "7"],
         {"afn": "10", "fn": 2, "seq": 7, "src": None, "message": "QueryNodes"}),
        (["--node-count"], {"afn": "10", "fn": 1, "message": "QueryNodeCount"}),
        (["--module-info"], {"afn": "03", "fn": 10, "message": "QueryModuleInfo"}),
        (["--add-node", "000000003304", "3305:1997", "3306:698"],
         {"afn": "11", "fn": 1, "message": "AddNodes"}),
        (["--delete-node", "000000003304"], {"afn": "11", "fn": 2, "message": "DeleteNodes"}),
        (["--router", "pause"], {"afn": "12", "fn": 2, "message": "RouterPause"}),
        (["--router", "resume"], {"afn": "12", "fn": 3, "message": "RouterResume"}),
        (["--set-main-node", "049999888888"], {"afn": "05", "fn": 1, "message": "SetMainNode"}),
    ],
)  # fmt: skip
def test_encode_carrier_forms_decode_back(
    capsys: pytest.CaptureFixture[str], args: list[str], expect: dict[str, Any]
) -> None:
    code, out, err = _encode(capsys, *args)
    assert (code, err) == (0, "")
    code, (obj,), err = _decode(capsys, out)
    assert (code, err) == (0, "")
    assert {k: obj[k] for k in expect} == expect
    assert (obj["protocol"], obj["dir"], obj["prm"]) == ("1376.2", "down", 1)


def test_encoded_reads_carry_the_645_requests(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _encode(
        capsys,
        "--carrier", "hplc", "--main-node", "049999888888", "--meter", "000000003304",
        "--read", "energy_import_total_kwh", "--read", "0201FF00", "--wakeup", "4",
    )  # fmt: skip
    _, (obj,), _ = _decode(capsys, out)
    assert [(i["protocol"], i["address"], i["di"]) for i in obj["inner"]] == [
        ("645", "000000003304", "00010000"),
        ("645", "000000003304", "0201FF00"),
    ]
    assert obj["fields"]["frame"].startswith("FE FE FE FE 68")
    _, out, _ = _encode(
        capsys, "--carrier", "point", "--main-node", "1", "--meter", "3304",
        "--edition", "1997", "--read", "9010",
    )  # fmt: skip
    _, (obj,), _ = _decode(capsys, out)
    assert obj["fields"]["protocol"] == 1
    assert (obj["inner"][0]["edition"], obj["inner"][0]["di"]) == ("1997", "9010")


def test_encoded_archive_commands(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _encode(capsys, "--add-node", "000000003304", "3305:1997", "3306:transparent")
    _, (obj,), _ = _decode(capsys, out)
    assert obj["fields"]["nodes"] == [
        {"addr": "000000003304", "protocol": 2},
        {"addr": "000000003305", "protocol": 1},
        {"addr": "000000003306", "protocol": 0},
    ]
    _, out, _ = _encode(capsys, "--nodes", "26", "5")
    _, (obj,), _ = _decode(capsys, out)
    assert obj["fields"] == {"start_seq": 26, "count": 5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--carrier", "hplc", "--meter", "3304", "--read", "00010000"], "--main-node"),
        (["--carrier", "hplc", "--main-node", "1", "--read", "00010000"], "--meter"),
        (["--carrier", "point", "--main-node", "1", "--meter", "3304", "--read", "00010000",
          "--read", "00020000"], "one --read"),
        (["--carrier", "hplc", "--nodes", "1", "2"], "--carrier goes with --read"),
        (["--meter", "3304", "--read", "00010000", "--read", "00020000"], "--carrier hplc"),
        (["--add-node", "3304:9"], "node protocol"),
        (["--carrier", "hplc", "--main-node", "1", "--meter", "AAAAAAAAAAAA",
          "--read", "00010000"], "one meter"),
        (["--nodes", "1", "300"], "QueryNodes"),
    ],
)  # fmt: skip
def test_encode_refuses_bad_carrier_requests(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _encode(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("meterlink frame encode: ")
    assert message in err


def test_encode_help_documents_the_carrier_forms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["frame", "encode", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--carrier", "--main-node", "--nodes", "--add-node", "--seq", "AFN F1 F1"):
        assert flag in out


def test_the_installed_command() -> None:
    encoded = subprocess.run(
        [str(METERLINK), "frame", "encode", "--carrier", "point", "--main-node", "049999888888",
         "--meter", "000000003304", "--read", "00010000"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    decoded = subprocess.run(
        [str(METERLINK), "frame", "decode", "-"],
        input=encoded.stdout + " " + BY_ID["QP27"]["hex"] + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert decoded.returncode == 1
    first = json.loads(decoded.stdout.splitlines()[0])
    assert (first["protocol"], first["afn"], first["inner"][0]["di"]) == (
        "1376.2",
        "13",
        "00010000",
    )
    assert decoded.stderr.count("\n") == 1
    assert "checksum found 61, computed 62" in decoded.stderr
    assert len(decoded.stdout.splitlines()) == 1  # the bad frame: stderr only
