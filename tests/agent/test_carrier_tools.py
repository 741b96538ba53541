"""`meterlink read` on a carrier bus and `meterlink carrier info|nodes|sync|read`, as a
technician runs them (real processes), against the scripted module."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.agent.fake_cco import FakeCco, meters


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterlink", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, url: str, archived: list[str]) -> Path:
    meters = "".join(f'[[archive.meters]]\naddress = "{a}"\nbus = "plc"\n' for a in archived)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nconcentrator = "c-1"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[buses]]\nname = "plc"\nurl = "{url}"\n{meters}',
        encoding="utf-8",
    )
    return path


async def test_meterlink_read_through_a_module_that_does_not_know_the_meter() -> None:
    fleet = meters(3)
    cco = FakeCco(fleet)
    async with cco.serving() as url:
        code, out, err = await _cli(
            "read", "--bus", url, "--meter", "000000000002", "00010000", "voltage_a_v", "--trace"
        )
    assert code == 0, err
    energy = fleet["000000000002"].values()["energy_import_total_kwh"]
    lines = out.splitlines()
    (line,) = [ln for ln in lines if ln.startswith("00010000  energy_import_total_kwh = ")]
    assert float(line.split("= ")[1].split()[0]) == pytest.approx(energy)
    assert any(ln.startswith("02010100  voltage_a_v = ") for ln in lines)
    assert list(cco.archive) == ["000000000002"]  # added first: the module did not know it
    assert "-> 68 " in err  # --trace: the 1376.2 frames on the line
    assert cco.counts["RouterResume"] == 1  # routing paused for the read, resumed after


async def test_carrier_info_prints_the_module_figures() -> None:
    cco = FakeCco(meters(1), max_frame_len=1103, monitor_timeout_s=40)
    async with cco.serving() as url:
        code, out, err = await _carrier("info", "--bus", url)
    assert code == 0, err
    assert "max frame length   1103 bytes" in out
    assert "monitor timeout    40 s" in out
    assert "main node          BEBEBEBEBE01" in out
    assert "learnt from deny 109" in out


async def _carrier(*args: str) -> tuple[int, str, str]:
    return await _cli("carrier", *args)


async def test_carrier_nodes_beside_the_archive_and_a_sync(tmp_path: Path) -> None:
    fleet = meters(4)
    archived = list(fleet)[:3]
    cco = FakeCco(fleet, joined={"000000000001"})
    cco.archive.update(dict.fromkeys(["000000000001", "000000000002", "000000009999"], 2))
    async with cco.serving() as url:
        config = _config(tmp_path, url, archived)
        code, out, err = await _carrier("nodes", "--bus", url, "--config", str(config))
        assert code == 0, err
        assert "3 nodes in the module" in out
        assert "000000000001  2007         phase 1  hops 1  quality 12  archived" in out
        assert "000000000002  2007         unknown: never heard" in out
        assert (
            "000000009999  2007         unknown: never heard (no phase, no signal quality)  EXTRA"
            in out
        )
        assert "000000000003  MISSING: archived, not in the module" in out
        assert "summary: 2 archived, 1 extra, 1 missing, 2 unknown (never heard)" in out

        code, out, err = await _carrier("sync", "--bus", url, "--config", str(config), "--dry-run")
        assert code == 0, err
        assert "would add 1 and delete 1 nodes (dry run)" in out
        assert set(cco.archive) == {"000000000001", "000000000002", "000000009999"}

        code, out, err = await _carrier("sync", "--bus", url, "--config", str(config))
        assert code == 0, err
        assert "added 1, deleted 1" in out
        assert set(cco.archive) == set(archived)

        code, out, err = await _cli("scan", "--bus", url, "--config", str(config))
        assert code == 0, err
        assert "summary: 3 archived, 0 extra, 0 missing, 2 unknown" in out


async def test_carrier_read_and_bad_use() -> None:
    fleet = meters(1)
    cco = FakeCco(fleet)
    cco.archive.update(dict.fromkeys(fleet, 2))
    async with cco.serving() as url:
        code, out, err = await _carrier(
            "read", "--bus", url, "--meter", "000000000001", "energy_import_total_kwh", "--json"
        )
        assert code == 0, err
        assert '"energy_import_total_kwh"' in out
    code, _out, err = await _carrier("info", "--bus", "tcp://127.0.0.1:1")
    assert code == 2
    assert "is not a carrier bus" in err
    cco = FakeCco(fleet, vanish=True)
    async with cco.serving() as url:
        code, _out, err = await _carrier("info", "--bus", f"{url}?command_timeout_ms=100")
    assert code == 1
    assert "carrier module not answering" in err
