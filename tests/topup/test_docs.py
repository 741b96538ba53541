"""The `security` examples of docs/mqtt.md are what the schema and the agent accept."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from agent.config import MeterConfig
from agent.security import SecurityCommand
from protocols.commands import new_command
from protocols.payloads import validate

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
METER = MeterConfig(bus="b1", address="000000000001", meter="000000000001")


def test_security_argument_examples_validate() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- security-example: args -->\s*```json\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        args = json.loads(block)
        command = new_command(
            "security",
            concentrator="c-001",
            key=b"k",
            now=dt.datetime(2026, 3, 10, 10, 0, tzinfo=dt.UTC),
            meter="000000000001",
            args=args,
        )
        validate("cmd", command)
        # and the agent's own per-step checks take it
        steps, options = SecurityCommand(lambda: dt.datetime.now(dt.UTC)).plan(METER, args)
        assert [s.op.value for s in steps] == [s["op"] for s in args["steps"]]
        assert options["session"].hex().upper() == args["session"]
