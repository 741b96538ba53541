"""The panel tests' seeded stack (tests/panel/stack.py), once per module that asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.panel.stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("panel-stack")) as s:
        yield s


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return tmp_path
