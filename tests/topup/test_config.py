"""`[topup]` is strictly validated like the rest of the central configuration; its secrets come
only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import load
from common.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_example_and_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINK_TOPUP_TOKENS", "a-token, another ,")
    cfg = load(REPO / "deploy" / "central.example.toml")
    assert cfg.topup.listen == "127.0.0.1:8490"
    assert cfg.topup.esam_failures_per_order == 2
    assert cfg.topup.token_list() == [b"a-token", b"another"]
    assert "a-token" not in repr(cfg.topup)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[topup]\nlisten = 'nowhere'\n", "listen"),
        ("[topup]\nconcurency = 4\n", "did you mean concurrency"),
        ("[topup]\ntokens = 'in-the-file'\n", "METERLINK_TOPUP_TOKENS"),
        ("[topup]\nwebhook_secret = 's'\n", "METERLINK_TOPUP_WEBHOOK_SECRET"),
        ("[topup]\nesam_failures_per_meter_day = 200\n", "locks at 200"),
        ("[topup]\ntls_cert = '/x.pem'\n", "tls_cert and tls_key"),
        ("[topup]\nremote_restore = 'open'\n", "remote_restore"),
        ("[topup]\ntimezone = 'Mars/Base'\n", "timezone"),
        ("[topup]\nmax_deadline_s = 10.0\n", "max_deadline_s"),
        ("[topup]\nwebhook_url = 'ftp://x'\n", "webhook_url"),
    ],
)
def test_bad_keys_are_refused_by_name(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "central.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load(path)
