"""The tariff correction tables (migration 2 of the tariff schema) on both engines: an order,
its audit trail in order, its end state."""

from __future__ import annotations

from central.store import Store
from central.tariff.correct import CorrectionResult
from central.tariff.store import TariffStore


def test_orders_and_their_audit_on_either_engine(store: Store) -> None:
    tariffs = TariffStore(store)
    order = tariffs.start_correction("c-1", "000000000001", "2026-03-10", "test")
    assert tariffs.start_correction("c-1", "000000000002", "2026-03-10", "test") == order + 1
    tariffs.update_correction(order, items=["04010001"], attempts=1)
    frames = [{"dir": "tx", "hex": "68 01 00"}, {"dir": "rx", "hex": "68 01 00 94"}]
    tariffs.audit_correction(order, "hsm:identity_auth", {"meter": "000000000001"})
    tariffs.audit_correction(order, "reply:security", {"ok": True, "frames": frames, "名": "峰"})
    result = CorrectionResult(order, "c-1", "000000000001", "verified", "PARAM_MISMATCH", "OK")
    result.items, result.attempts = ["04010001"], 1
    tariffs.finish_correction(order, result)
    trail = tariffs.correction_audit(order)
    assert [(seq, kind) for seq, _, kind, _ in trail] == [
        (1, "hsm:identity_auth"),
        (2, "reply:security"),
    ]
    assert trail[1][3]["frames"] == frames
    assert trail[1][3]["名"] == "峰"
    row = tariffs.corrections("000000000001")[0]
    assert row[0] == order
    assert row[4:10] == ("verified", "PARAM_MISMATCH", "OK", "", '["04010001"]', 1)
    assert tariffs.correction_audit(order + 1) == []
