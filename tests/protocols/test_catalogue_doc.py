"""docs/dlt645-catalogue.md is generated from the catalogue and must not go stale."""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocols.dlt645 import Edition, all_items

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "dlt645-catalogue.md"


def test_the_catalogue_doc_is_up_to_date() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "gen-catalogue-doc"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _di(di: int, edition: Edition) -> str:
    width = 4 if edition is Edition.V2007 else 2
    return " ".join(f"{di >> (8 * i) & 0xFF:02X}" for i in reversed(range(width)))


def test_every_item_without_a_tariff_or_history_index_has_its_own_row() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 150
    for item in all_items():
        if item.history is None and not item.name.split()[-1].isdigit():
            row = next((r for r in rows if r.startswith(f"| `{_di(item.di, item.edition)}` |")), "")
            assert row, f"no row for {item.di_hex} {item.name}"
            assert f"| {item.name} |" in row
            assert item.fields[0].measurement in row
