"""The public Q/GDW 1376.2 vectors (44 real frames, 4 invalid on purpose) and helpers to read
their `expect` fields. A copy is kept in tests/data so a clean clone has them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "vectors" / "q13762-public.json"
LOCAL = REPO / "tests" / "data" / "q13762-public.json"


def load_q13762_vectors() -> list[dict[str, Any]]:
    path = SHARED if SHARED.exists() else LOCAL
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


VECTORS = load_q13762_vectors()
BY_ID = {v["id"]: v for v in VECTORS}
#: valid vectors that are one bare frame
FRAMES = [v for v in VECTORS if v["valid"] and v["kind"] == "1376.2"]
#: valid vectors whose bytes hold a frame among other bytes
STREAMS = [v for v in VECTORS if v["valid"] and v["kind"] == "1376.2-stream"]
INVALID = [v for v in VECTORS if not v["valid"]]


def raw(v: dict[str, Any]) -> bytes:
    return bytes.fromhex(v["hex"])


def frame_bytes(v: dict[str, Any]) -> bytes:
    """The frame itself (a stream vector says which bytes are the frame)."""
    return bytes.fromhex(v["expect"].get("frame_hex", v["hex"]))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for v in vectors]
