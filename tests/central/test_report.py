"""`meterlink central report` in its three formats, from the shared ledger in either store."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from central.ledger import Ledger
from central.store import Store, open_store
from meterlink.cli import main
from tests.central import scenario
from tests.central.scenario import DAY, M
from tests.central.test_coverage import apply


@pytest.fixture
def conf(tmp_path: Path, store_url: str) -> Path:
    store = open_store(store_url)
    apply(Ledger(store), scenario.messages())
    store.close()
    path = tmp_path / "central.toml"
    path.write_text(f'[store]\nurl = "{store_url}"\n')
    return path


def report(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["central", "report", "--config", str(conf), *args]) == 0
    return capsys.readouterr().out


def test_table_for_the_latest_day(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = report(conf, capsys)
    assert f"data day {DAY}" in out
    assert (
        "fleet: 11/14 read = 78.57% (BELOW the 98% target); timely 71.43%, complete 71.43%" in out
    )
    assert "concentrator  c-002                       4        3   75.00" in out
    assert "route_failure" in out
    assert "(>= 3 days): 3 meters" in out
    assert f"  {M[9]}   c-001          west         acme              3 no_reply" in out


def test_json_and_a_lower_streak_threshold(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(report(conf, capsys, "--day", DAY, "--format", "json", "--min-days", "1"))
    assert data["meets_threshold"] is False
    fleet = data["scopes"][0]
    assert (fleet["expected"], fleet["read"], fleet["failed"]) == (14, 11, 3)
    assert fleet["failed_by_reason"] == {"no_reply": 1, "route_failure": 1, "unexplained": 1}
    streaks = {s["meter"]: s for s in data["consecutive_failures"]}
    assert streaks[M[9]]["last_success"] == "2026-11-21"
    assert streaks[M[10]]["last_success"] is None


def test_csv_for_one_concentrator(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = report(conf, capsys, "--day", DAY, "--concentrator", "c-001", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:6] == ["day", "scope", "key", "expected", "read", "rate"]
    assert rows[1][:6] == [DAY, "fleet", "c-001", "10", "8", "80.00"]
    assert [DAY, "fleet", "c-001", "unexplained", "1"] in rows


def test_no_ledger_yet_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "central.toml"
    path.write_text(f'[store]\nurl = "sqlite://{tmp_path}/none.sqlite3"\n')
    assert main(["central", "report", "--config", str(path)]) == 1
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()


def test_an_empty_store_has_no_day_yet(
    store: Store, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "central.toml"
    path.write_text(f'[store]\nurl = "{store_url}"\n')
    assert main(["central", "report", "--config", str(path)]) == 1
    assert "the ledger has no data day yet" in capsys.readouterr().err
