"""docs/q13762.md keeps up with the code: every registered data-unit class and every deny code of
the table is named there, and the encode example is what the command prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meterlink.cli import main
from protocols.q13762 import DENY_CODES, MESSAGES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "q13762.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted({cls.__name__ for cls in MESSAGES.values()}))
def test_every_data_unit_class_is_documented(name: str) -> None:
    assert f"`{name}`" in DOC or f"`{name}(" in DOC


@pytest.mark.parametrize("code", sorted(DENY_CODES))
def test_every_deny_code_is_documented(code: int) -> None:
    row = DENY_CODES[code]
    if row.name.startswith("vendor_"):
        assert f"{code:02X}H" in DOC
    else:
        assert f"| {code} | {row.name} |" in DOC
    assert f"`{row.error.__name__}`" in DOC


def test_the_encode_examples_are_real(capsys: pytest.CaptureFixture[str]) -> None:
    examples = re.findall(r"^\$ meterlink frame encode (.+)\n([0-9A-F ]+)$", DOC, re.MULTILINE)
    assert len(examples) >= 5
    for args, output in examples:
        assert main(["frame", "encode", *args.split()]) == 0
        assert capsys.readouterr().out.strip() == output


def test_the_decode_examples_are_real(capsys: pytest.CaptureFixture[str]) -> None:
    examples = re.findall(
        r'^\$ meterlink frame decode "([0-9A-F ]+)"(?: \| python3 -m json.tool)?\n'
        r"(\{[^\n]*\}$|\{\n.*?^\}$)",
        DOC,
        re.MULTILINE | re.DOTALL,
    )
    assert len(examples) >= 2
    for hex_text, shown in examples:
        if "…" in shown:
            continue  # an abridged one
        assert main(["frame", "decode", hex_text]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(shown)
