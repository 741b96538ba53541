"""Every failure reason of the closed set has its label in the panel (both languages)."""

from __future__ import annotations

from central.panel.i18n import REASONS, reason_label
from protocols.payloads import FailureReason


def test_every_failure_reason_has_a_label() -> None:
    assert {r.value for r in FailureReason} <= set(REASONS)
    assert reason_label("module_busy", "en") == "carrier module busy (module_busy)"
