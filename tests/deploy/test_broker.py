"""The production broker configuration (deploy/mosquitto/) on a real Mosquitto, with a PKI made
by deploy/mosquitto/make-pki: only the listener's port and the file paths are rewritten
(`meterlink.services.private_broker_config`), so the rules tested are the ones operators install.

What Mosquitto 2.0.11 does, and these tests pin down: a QoS 1 publish the ACL denies is answered
with PUBACK 0x87 *Not authorized* (MQTT v5) and dropped; a subscription to a topic filter the
client may not read is *granted* in the SUBACK, but no message it may not read is delivered."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from common.config import Secret
from common.mqtt import MqttSettings
from tests.agent.helpers_mqtt import eventually
from tests.conftest import REPO
from tests.deploy.broker import NOT_AUTHORIZED, broker_log, peer, production_broker, settings
from tests.fixtures.pki import CENTRAL, Pki, make_pki

A, B = "c-001", "c-002"
KINDS = ("readings", "rounds", "events", "archive", "status", "tariff")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), A, B, passwords=True)


async def test_a_concentrator_writes_and_reads_only_its_own_topics(
    tmp_path: Path, pki: Pki
) -> None:
    with production_broker(tmp_path / "broker", pki) as broker:
        async with (
            peer(settings(broker, pki, CENTRAL)) as central,
            peer(settings(broker, pki, A)) as a,
            peer(settings(broker, pki, B)) as b,
        ):
            shared = [f"$share/g/meterlink/v1/+/{k}" for k in KINDS if k != "archive"]
            assert await central.subscribe(
                *shared, "meterlink/v1/+/archive", "meterlink-replies/#"
            ) == [1] * (len(shared) + 2)
            assert await b.subscribe(f"meterlink/v1/{B}/cmd") == [1]
            # A asks for B's commands, every command and everything: Mosquitto grants the
            # filters (it checks read access per message) ...
            assert await a.subscribe(f"meterlink/v1/{B}/cmd", "meterlink/v1/+/cmd", "#") == [1] * 3

            for kind in KINDS:  # its own tree: taken
                await a.publish(f"meterlink/v1/{A}/{kind}", kind.encode(), retain=kind == "archive")
            await a.publish(f"meterlink-replies/{A}/centre-1", b"reply")
            for kind in KINDS:  # B's tree: refused
                assert await a.refused(f"meterlink/v1/{B}/{kind}") == NOT_AUTHORIZED
            assert await a.refused(f"meterlink/v1/{A}/cmd") == NOT_AUTHORIZED  # no self-commands
            assert await a.refused(f"meterlink/v1/{B}/cmd") == NOT_AUTHORIZED
            assert await a.refused(f"meterlink-replies/{B}/centre-1") == NOT_AUTHORIZED
            assert await a.refused("somewhere/else") == NOT_AUTHORIZED
            # the centre sends commands, and may not write data in a concentrator's name
            await central.publish(f"meterlink/v1/{B}/cmd", b"for B")
            await central.publish(f"meterlink/v1/{A}/cmd", b"for A")
            assert await central.refused(f"meterlink/v1/{A}/readings") == NOT_AUTHORIZED
            await a.publish(f"meterlink/v1/{A}/events", b"last")

            # ... but delivers A only its own command (once per matching filter). The broker
            # routes B's command before it even receives A's, so a leak would have reached A
            # first.
            await eventually(lambda: bool(a.seen) and bool(b.seen))
            assert a.seen[0] == (f"meterlink/v1/{A}/cmd", b"for A")
            assert b.seen == [(f"meterlink/v1/{B}/cmd", b"for B")]
            # the centre reads every kind A may write, and nothing that was refused
            await eventually(lambda: (f"meterlink/v1/{A}/events", b"last") in central.seen)
            assert sorted(central.seen) == sorted(
                [(f"meterlink/v1/{A}/{k}", k.encode()) for k in KINDS]
                + [(f"meterlink-replies/{A}/centre-1", b"reply")]
                + [(f"meterlink/v1/{A}/events", b"last")]
            )
            assert set(a.seen) == {(f"meterlink/v1/{A}/cmd", b"for A")}  # still nothing else


WILL_FORGER = """
import asyncio, sys
from agent.mqtt import _Client
from common.mqtt import MqttSettings, client_arguments
import aiomqtt
async def main():
    s = MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), tls=True, ca_file=sys.argv[2],
                     cert_file=sys.argv[3], key_file=sys.argv[4], session_expiry_s=0)
    will = aiomqtt.Will(sys.argv[5], b"forged offline", qos=1, retain=True)
    async with _Client(**await client_arguments(s, sys.argv[6]), will=will):
        print("up", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_no_session_takeover_and_no_will_on_another_tree(tmp_path: Path, pki: Pki) -> None:
    """A connects with B's client id: the broker makes A's identity its client id
    (use_username_as_clientid), so B's session and the command queued in it stay B's; and a last
    will A sets on B's status is not published when A dies."""
    with production_broker(tmp_path / "broker", pki) as broker:
        b_session = settings(broker, pki, B, session_expiry_s=600)
        async with peer(b_session, f"meterlink-agent-{B}") as b:
            assert await b.subscribe(f"meterlink/v1/{B}/cmd") == [1]
        async with peer(settings(broker, pki, CENTRAL)) as central:
            assert await central.subscribe("meterlink/v1/+/status") == [1]
            await central.publish(f"meterlink/v1/{B}/cmd", b"queued for B")
            # A, with B's client id and a will on B's status, killed (the will is due)
            forger = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WILL_FORGER, str(broker.port), str(pki.ca),
                str(pki.cert(A)), str(pki.key(A)), f"meterlink/v1/{B}/status",
                f"meterlink-agent-{B}", stdout=asyncio.subprocess.PIPE, cwd=REPO,
            )  # fmt: skip
            try:
                assert forger.stdout is not None
                assert await forger.stdout.readline() == b"up\n"
            finally:
                forger.kill()
                await forger.wait()
            # A again: its session is the killed one (same identity, same client id), so the
            # broker settles that connection, will included, before this one is up
            async with peer(settings(broker, pki, A), "anything") as a:
                await a.publish(f"meterlink/v1/{A}/status", b"A online")
            await eventually(lambda: bool(central.seen))
            assert central.seen == [(f"meterlink/v1/{A}/status", b"A online")]
        async with peer(b_session, f"meterlink-agent-{B}") as b:
            await eventually(lambda: bool(b.seen))
            assert b.seen == [(f"meterlink/v1/{B}/cmd", b"queued for B")]


async def refused_at_connect(s: MqttSettings, caplog: pytest.LogCaptureFixture) -> str:
    """Connect and fail; returns what the TLS layer said (paho logs the broker's TLS alert).
    With TLS 1.3 the broker refuses a client certificate after the handshake, so the attempt
    ends at the CONNACK timeout; that bound is short, nothing here succeeds by waiting."""
    caplog.clear()
    with pytest.raises(aiomqtt.MqttError):
        async with peer(MqttSettings(**{**vars(s), "connect_timeout_s": 2.0})):
            pass
    return caplog.text


async def test_a_client_without_a_valid_certificate_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki", A, B)
    stranger = make_pki(tmp_path / "stranger", A)  # another CA: a certificate that says "c-001"
    kept = tmp_path / "kept"  # B's files, as a stolen concentrator keeps them
    kept.mkdir()
    cert_b, key_b = kept / "b.pem", kept / "b.key"
    cert_b.write_bytes(pki.cert(B).read_bytes())
    key_b.write_bytes(pki.key(B).read_bytes())
    pki.run("--revoke", B)
    with production_broker(tmp_path / "broker", pki) as broker:
        async with peer(settings(broker, pki, A)) as a:  # the control: A's own certificate
            await a.publish(f"meterlink/v1/{A}/status", b"online")

        said = await refused_at_connect(settings(broker, pki, None), caplog)
        assert "TLSV13_ALERT_CERTIFICATE_REQUIRED" in said
        forged = settings(broker, pki, None, cert_file=stranger.cert(A), key_file=stranger.key(A))
        said = await refused_at_connect(forged, caplog)
        assert "TLSV1_ALERT_UNKNOWN_CA" in said
        said = await refused_at_connect(
            settings(broker, pki, None, cert_file=cert_b, key_file=key_b), caplog
        )
        assert "ALERT_CERTIFICATE_REVOKED" in said  # make-pki --revoke: the CRL
        await refused_at_connect(settings(broker, pki, None, tls=False, ca_file=None), caplog)
        assert "wrong version number" in broker_log(broker)  # plain MQTT on the TLS port
        log = broker_log(broker)
        assert "peer did not return a certificate" in log
        assert log.count("certificate verify failed") == 2  # the stranger and the revoked


async def test_the_password_variant_refuses_anonymous_and_wrong_passwords(
    tmp_path: Path, pki: Pki
) -> None:
    with production_broker(tmp_path / "broker", pki, "meterlink-password.conf") as broker:

        def as_user(user: str | None, password: str | None) -> MqttSettings:
            return settings(
                broker,
                pki,
                None,
                username=user,
                password=Secret(password) if password is not None else None,
            )

        # Mosquitto 2.0.11 answers both with CONNACK 0x87 Not authorized (not 0x86)
        for user, password in ((None, None), (A, "wrong"), (A, pki.password(B))):
            with pytest.raises(aiomqtt.MqttCodeError) as err:
                async with peer(as_user(user, password)):
                    pass
            rc = err.value.rc
            assert (rc.value if isinstance(rc, ReasonCode) else rc) == NOT_AUTHORIZED
        async with peer(as_user(A, pki.password(A))) as a:
            await a.publish(f"meterlink/v1/{A}/readings", b"ok")
            assert await a.refused(f"meterlink/v1/{B}/readings") == NOT_AUTHORIZED
