"""The import-linter contracts in pyproject.toml (run by `scripts/check`) really guard the layers:
a copy of the tree with one forbidden import per contract breaks every contract, and the tree as
it is keeps them all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("meterlink", "common", "protocols", "agent", "central", "simulators")
LINT = Path(sys.executable).with_name("lint-imports")

#: file -> the import that breaks one contract
VIOLATIONS = {
    "simulators/clock.py": "import agent.outbox",  # layers: simulators never import agent
    "central/points.py": "import protocols.dlt645",  # central takes only the payload schema
    "protocols/measurements.py": "import asyncio",  # protocols is sans-I/O
    "agent/transports/errors.py": "import protocols.dlt645",  # transports never parse frames
}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_tree(dest: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")


def test_every_contract_catches_its_violation(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    for rel, line in VIOLATIONS.items():
        with (tmp_path / rel).open("a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    out = broken.stdout
    assert "0 kept" in out, out
    for rel, line in VIOLATIONS.items():
        importer = rel.removesuffix(".py").replace("/", ".")
        imported = line.split()[-1]
        assert f"{importer} -> {imported}" in out, (importer, imported, out)
