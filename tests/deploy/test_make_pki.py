"""deploy/mosquitto/make-pki: idempotent, refuses ids the ACL could not hold, keeps the ACL's
central rights in step with the central identities, revokes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.pki import CENTRAL, MAKE_PKI, make_pki


def test_a_second_run_keeps_what_exists_and_adds_what_is_new(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "c-001")
    ca, cert = pki.ca.read_bytes(), pki.cert("c-001").read_bytes()
    assert "made 1 client certificate" in pki.run("c-001", "c-002")
    assert pki.ca.read_bytes() == ca
    assert pki.cert("c-001").read_bytes() == cert
    assert pki.cert("c-002").exists()
    assert pki.key("c-002").stat().st_mode & 0o077 == 0  # keys are private
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(pki.cert("c-002")), "-noout", "-subject"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert subject.strip() == "subject=CN = c-002"  # the identity the broker's ACL sees
    acl = (tmp_path / "acl").read_text()
    assert "pattern write meterlink/v1/%u/readings" in acl
    assert f"\nuser {CENTRAL}\ntopic read meterlink/v1/#\n" in acl


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["c/1"], "a concentrator id is letters, digits"),
        (["meterlink-central-9"], "meterlink-central* names central instances"),
        (["--central", "central-2"], "a central instance is meterlink-central<suffix>"),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_ids_the_acl_could_not_hold_are_refused(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [str(MAKE_PKI), "--dir", str(tmp_path), "--server-ip", "127.0.0.1", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "ca.pem").exists()  # checked before anything is made


def test_revoking_lists_the_certificate_and_drops_its_rights(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "c-001")
    pki.run("--central", "meterlink-central-2")
    assert "user meterlink-central-2" in (tmp_path / "acl").read_text()
    serial = subprocess.run(
        ["openssl", "x509", "-in", str(pki.cert("meterlink-central-2")), "-noout", "-serial"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=")[1]  # fmt: skip
    pki.run("--revoke", "meterlink-central-2")
    assert not pki.cert("meterlink-central-2").exists()
    assert "user meterlink-central-2" not in (tmp_path / "acl").read_text()
    assert f"user {CENTRAL}" in (tmp_path / "acl").read_text()
    crl = subprocess.run(
        ["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"Serial Number: {serial}" in crl
