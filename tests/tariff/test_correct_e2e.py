"""Tariff correction orders end to end with real processes: a private Mosquitto, a real
`meterlink agent run`, the simulator on a TCP serial server, the software encryption machine
over HTTP, and the central `Corrector` with its SQLite store. A seeded misprogrammed fleet: a
PARAM_MISMATCH meter and a missing-holiday meter are written back to their plan (the set-up read
back equals the plan, the re-check says OK, the simulator's truth agrees); a write whose MAC is
wrong is refused by the meter and nothing changes; a meter that cannot be written remotely gets
a work order and no security traffic at all."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from central.commands import CommandSender
from central.config import MqttConfig
from central.store import Store, open_store
from central.tariff.check import CheckSettings
from central.tariff.correct import Corrector, SenderChannel, workorder_csv
from central.tariff.plans import PlanBook
from central.tariff.store import TariffStore
from central.topup.hsm import NetworkHsm
from simulators import Fleet, parse_fleet, serve_fleet
from simulators.hsm import serve_hsm
from simulators.meter import Meter
from simulators.tariff import applicable, misprogram
from tests.agent.helpers_mqtt import Collector, eventually
from tests.fixtures.processes import meterlink
from tests.fixtures.services import running_mosquitto

pytestmark = pytest.mark.slow

KEY = "5a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f" * 2
CONCENTRATOR = "c-tariff"
FLEET = """
seed = 17
[tariff]
misprogram_share = 0.5
[[district]]
name = "d"
  [[district.bus]]
  name = "b1"
    [[district.bus.meters]]
    count = 10
    first_address = "000000000001"
    models = { DDZY666 = 1 }
    prepaid = 1.0
    remote = 1.0
    offset_s = 0
    drift_ppm = 0
    [[district.bus.meters]]
    count = 1
    first_address = "000000000901"
    models = { "DDS-2009" = 1 }
    offset_s = 0
    drift_ppm = 0
"""


class CorruptParameterHsm(NetworkHsm):
    """A machine whose parameter MACs the meter does not accept (one MAC bit flipped)."""

    async def parameter_update(
        self, meter: str, random2: bytes, di: int, plain: bytes, *, cipher: bool
    ) -> bytes:
        data = await super().parameter_update(meter, random2, di, plain, cipher=cipher)
        return data[:-1] + bytes([data[-1] ^ 0x01])


@dataclass
class Stack:
    fleet: Fleet
    store: Store
    book: PlanBook
    sender: CommandSender
    hsm_url: str
    tmp: Path
    broker_port: int

    def corrector(self, hsm: NetworkHsm) -> Corrector:
        return Corrector(
            self.store,
            hsm,
            SenderChannel(self.sender),
            CheckSettings(),
            "Asia/Shanghai",
            by="test",
        )


def _esam_meter(fleet: Fleet, defect: str, taken: set[str]) -> Meter:
    """An ESAM meter with `defect`: the seeded fleet's own, else a sound one given it."""
    for wanted in (defect, None):
        for m in fleet.meters():
            t = m.tariff
            if m.esam is None or t is None or t.defect != wanted or m.identity.meter_id in taken:
                continue
            if wanted is None:
                if not applicable(defect, t):
                    continue
                misprogram(t, defect, start=m.now(), reprogram_at=m.now())
            taken.add(m.identity.meter_id)
            return m
    raise AssertionError(f"no ESAM meter can have {defect}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    fleet = parse_fleet(FLEET)
    archive = tmp_path / "archive.json"
    archive.write_text(json.dumps(fleet.archive()))
    store = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="correct")
    book = TariffStore(store).replace_plans(fleet.tariff_plans_toml(), "test")
    with running_mosquitto(tmp_path / "broker") as broker:
        async with (
            serve_fleet(fleet, transport="tcp") as serving,
            serve_hsm(fleet) as (_, hsm_url),
        ):
            endpoint = serving.endpoint("b1")
            assert endpoint.address is not None
            # 1 s: the simulator answers from this test's process, late on a loaded machine
            opts = "parity=N&reply_timeout_ms=1000&byte_gap_ms=100&frame_gap_ms=0&baud=9600"
            url = f"tcp://{endpoint.address[0]}:{endpoint.address[1]}?{opts}"
            agent_config = tmp_path / "agent.toml"
            agent_config.write_text(
                f'[agent]\nconcentrator = "{CONCENTRATOR}"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.2\n'
                f'[metrics]\nlisten = ""\n[[buses]]\nname = "b1"\nurl = "{url}"\n'
                f'[archive]\nfile = "{archive}"\n'
                "[plans.daily]\nenabled = false\n[plans.clock]\nenabled = false\n"
                "[plans.tariff]\nenabled = false\n"
            )
            mqtt = MqttConfig(host="127.0.0.1", port=broker.port, client_id="test-tariff")
            async with (
                Collector(broker, filters=(f"meterlink/v1/{CONCENTRATOR}/status",)) as seen,
                meterlink(
                    ["agent", "run", "--config", str(agent_config)],
                    tmp_path / "agent.log",
                    env={"METERLINK_MQTT_COMMAND_KEY": KEY},
                ) as agent,
                CommandSender(mqtt, bytes.fromhex(KEY)) as sender,
            ):
                await eventually(
                    lambda: any(s.payload["state"] == "online" for s in seen.of("status")),
                    within=30,
                )
                yield Stack(fleet, store, book, sender, hsm_url, tmp_path, broker.port)
                assert await agent.stop() == 0, agent.log()[-3000:]
    store.close()


async def test_corrections_through_the_whole_path(stack: Stack) -> None:
    fleet = stack.fleet
    taken: set[str] = set()
    boundary = _esam_meter(fleet, "wrong_boundary", taken)
    holiday = _esam_meter(fleet, "missing_holiday", taken)
    refused = _esam_meter(fleet, "wrong_boundary", taken)
    old = fleet.meter("000000000901")
    assert old.tariff is not None
    if old.tariff.defect is None:
        misprogram(old.tariff, "wrong_boundary", start=old.now(), reprogram_at=old.now())
    tariffs = TariffStore(stack.store)

    async with NetworkHsm(stack.hsm_url, timeout_s=10) as hsm:
        corrector = stack.corrector(hsm)
        for meter, before in ((boundary, "PARAM_MISMATCH"), (holiday, "PARAM_MISMATCH")):
            assert meter.tariff is not None
            mid = meter.identity.meter_id
            plan = stack.book.get(meter.tariff.plan.name)
            assert plan is not None
            counters = dict(meter.tariff.programmed.event_counters)
            r = await corrector.correct(CONCENTRATOR, mid, plan, model="DDZY666")
            checks = [b for _, _, k, b in tariffs.correction_audit(r.id) if k == "check"]
            assert (r.state, r.outcome_before, r.outcome_after) == ("verified", before, "OK"), (
                r,
                checks,
                meter.tariff.detail,
            )
            assert r.items
            # the meter holds its plan now, and the simulator's truth says so
            assert meter.tariff.executes_plan(meter.now())
            assert fleet.tariff_truth(meter.now().date())[mid].outcome == "OK"
            moved = meter.tariff.programmed.event_counters
            assert any(moved[k] > v for k, v in counters.items())
            # the audit trail: machine calls and every command with its raw frames
            trail = tariffs.correction_audit(r.id)
            kinds = [k for _, _, k, _ in trail]
            assert kinds.count("hsm:parameter_update") == len(r.items)
            assert "hsm:identity_auth" in kinds
            writes = [b for _, _, k, b in trail if k == "reply:security" and "write" in str(b)]
            assert writes
            frames = [f for b in writes for f in b["frames"]]
            assert {f["dir"] for f in frames} == {"tx", "rx"}
            assert tariffs.corrections(mid)[0][4] == "verified"
            # the set-up read after the writes is the one stored (the next day's check sees it)
            last = [b for _, _, k, b in trail if k == "reply:tariff"][-1]["result"]["setup"]
            assert tariffs.setups_until(2**40, 0, CONCENTRATOR)[(CONCENTRATOR, mid)][-1] == last
        if holiday.tariff is not None:
            assert any(di.startswith("040300") or di == "04000205" for di in r.items)

    # a machine whose MACs the meter does not accept: refused, nothing written, not retried
    assert refused.tariff is not None
    assert refused.esam is not None
    before = refused.tariff.programmed
    failures = refused.esam.mac_failures
    async with CorruptParameterHsm(stack.hsm_url, timeout_s=10) as bad:
        plan = stack.book.get(refused.tariff.plan.name)
        assert plan is not None
        r = await stack.corrector(bad).correct(
            CONCENTRATOR, refused.identity.meter_id, plan, model="DDZY666"
        )
    assert (r.state, r.attempts) == ("refused", 1), r
    assert "write_refused" in r.reason
    assert refused.tariff.programmed is before
    assert refused.esam.mac_failures == failures + 1
    assert refused.tariff.defect == "wrong_boundary"

    # old firmware: a work order, and no security command, no machine call
    async with NetworkHsm(stack.hsm_url, timeout_s=10) as hsm:
        plan = stack.book.get(old.tariff.plan.name)
        assert plan is not None
        before = old.tariff.programmed
        r = await stack.corrector(hsm).correct(CONCENTRATOR, "000000000901", plan, model="DDS-2009")
    assert r.state == "workorder", r
    assert r.workorder is not None
    assert r.workorder[0] == "000000000901"
    kinds = {k for _, _, k, _ in tariffs.correction_audit(r.id)}
    assert kinds <= {"command:tariff", "reply:tariff", "check"}, kinds
    assert old.tariff.programmed is before
    text = workorder_csv([r.workorder])
    assert text.splitlines()[0] == "meter,concentrator,outcome,why_not_remote,to_write"
    assert "000000000901" in text.splitlines()[1]


async def test_the_command_line(stack: Stack) -> None:
    """`meterlink central tariff correct` with the archive in the ledger: one meter corrected,
    one on the work-order CSV, the orders and their audit in the store."""
    import asyncio
    import datetime as dt
    import os
    import sys

    from central.ledger import Ledger
    from central.points import Converted, convert

    fleet = stack.fleet
    taken: set[str] = set()
    fixable = _esam_meter(fleet, "wrong_boundary", taken)
    old = fleet.meter("000000000901")
    assert old.tariff is not None
    if old.tariff.defect is None:
        misprogram(old.tariff, "wrong_boundary", start=old.now(), reprogram_at=old.now())
    out = Converted()
    since = fleet.world.now() - dt.timedelta(days=1)
    convert("archive", {"concentrator": CONCENTRATOR, "version": 1,
                        "updated_at": since.replace(tzinfo=fleet.world.tz).isoformat(),
                        "meters": fleet.archive()}, out)  # fmt: skip
    Ledger(stack.store).apply(out, [])
    config = stack.tmp / "central.toml"
    config.write_text(
        f'[store]\nurl = "sqlite://{stack.tmp}/store.sqlite3"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {stack.broker_port}\nclient_id = "cli-central"\n'
        f'[topup]\nhsm_url = "{stack.hsm_url}"\n'
    )
    csv_path = stack.tmp / "wo.csv"
    mid = fixable.identity.meter_id
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterlink", "central", "tariff", "correct", "--config", str(config),
        "--meter", mid, "--meter", "000000000901", "--workorders", str(csv_path), "--by", "test",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "METERLINK_MQTT_COMMAND_KEY": KEY},
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    text = stdout.decode()
    assert proc.returncode == 0, (text, stderr.decode())
    lines = text.splitlines()
    assert f"{mid} ({CONCENTRATOR}): verified [PARAM_MISMATCH -> OK]" in lines[0], text
    assert "000000000901" in lines[1]
    assert ": workorder [" in lines[1]
    assert lines[2] == f"1 work orders in {csv_path}"
    rows = csv_path.read_text(encoding="utf-8-sig").splitlines()
    assert rows[0] == "meter,concentrator,outcome,why_not_remote,to_write"
    assert rows[1].startswith(f"000000000901,{CONCENTRATOR},")
    assert fixable.tariff is not None
    assert fixable.tariff.executes_plan(fixable.now())
    print(text)
    # the next check of the day (what the consumer's tariff job runs) says OK for it
    from central.tariff.check import CheckSettings as Settings
    from central.tariff.day import check_day

    tariffs = TariffStore(stack.store)
    day = fleet.world.now().date().isoformat()
    result = check_day(Ledger(stack.store), tariffs, stack.book, day, Settings(), "Asia/Shanghai")
    verdicts = {o.meter: o.outcome for o in result.outcomes}
    assert verdicts[mid] == "OK", verdicts
    assert verdicts["000000000901"] != "OK"


async def test_the_panel_action(stack: Stack) -> None:
    """An operator's ``tariff.correct`` on the panel: the order runs, the action is audited."""
    import datetime as dt

    import aiohttp

    from central.config import CentralConfig
    from central.ledger import Ledger
    from central.panel.app import running
    from central.panel.auth import Users
    from central.points import Converted, convert
    from common.config import build
    from meterlink.services import free_port
    from protocols.commands import key_bytes
    from tests.panel.test_access import Client

    fleet = stack.fleet
    meter = _esam_meter(fleet, "missing_holiday", set())
    mid = meter.identity.meter_id
    out = Converted()
    since = fleet.world.now() - dt.timedelta(days=1)
    convert("archive", {"concentrator": CONCENTRATOR, "version": 1,
                        "updated_at": since.replace(tzinfo=fleet.world.tz).isoformat(),
                        "meters": fleet.archive()}, out)  # fmt: skip
    Ledger(stack.store).apply(out, [])
    Users(stack.store).add("otto", "operator", "operator-password-1")
    cfg = build(CentralConfig, {
        "mqtt": {"host": "127.0.0.1", "port": stack.broker_port, "client_id": "panel-correct"},
        "influx": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1.0},
        "store": {"url": f"sqlite://{stack.tmp}/store.sqlite3"},
        "panel": {"listen": f"127.0.0.1:{free_port()}", "command_timeout_s": 60.0},
        "topup": {"hsm_url": stack.hsm_url},
    }, env_prefix="METERLINK", environ={})  # fmt: skip
    urls: list[str] = []
    async with (
        running(cfg, stack.store, key_bytes(KEY), urls.append),
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        client = Client(urls[0].rstrip("/"), http)
        await client.log_in("otto", "operator-password-1")
        token = await client.csrf()
        async with http.post(
            f"{client.base}/actions/tariff.correct",
            data={"csrf": token, "concentrator": CONCENTRATOR, "meter": mid},
            headers={"Accept": "application/json"},
        ) as r:
            reply = await r.json()
    assert reply["ok"], reply
    assert f"{mid}: verified [PARAM_MISMATCH -> OK]" in reply["summary"]
    assert meter.tariff is not None
    assert meter.tariff.executes_plan(meter.now())
    audit = stack.store.rows(
        "SELECT user_name, outcome FROM panel_audit WHERE action = ?", ("tariff.correct",)
    )
    assert audit == [("otto", "ok")]
    assert TariffStore(stack.store).corrections(mid)[0][12] == "otto"
