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


def test_order_service_examples_and_the_openapi_file() -> None:
    """docs/topup.md's request examples are what the API accepts; docs/topup-openapi.yaml
    names every route the service serves."""
    from central.topup.api import make_app, validate_relay, validate_topup

    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "topup.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- topup-example: (\w+) -->\s*```json\n(.*?)```", text, re.S))
    assert set(blocks) == {"topup", "relay"}
    assert validate_topup(json.loads(blocks["topup"]))["amount_fen"] == 5000
    assert validate_relay(json.loads(blocks["relay"]))["action"] == "trip"
    spec = (docs / "topup-openapi.yaml").read_text(encoding="utf-8")
    app = make_app(object(), [b"t"], default_deadline_s=1, max_deadline_s=1)  # type: ignore[arg-type]
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for route in routes:
        assert f"  {route}:\n" in spec, route
