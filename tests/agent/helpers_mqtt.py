"""Helpers for the MQTT link tests: a validating subscriber, a command requester (the centre's
side of MQTT v5 request/response), a link runner, and a subprocess entry point for the
last-will test (``python -m tests.agent.helpers_mqtt PORT OUTBOX``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import LinkSettings, MqttLink
from agent.outbox import Outbox
from common.aio import raise_if_cancelled
from common.mqtt import Client
from protocols.payloads import PayloadInvalid, kind_of_topic, validate
from tests.fixtures.services import Mosquitto, free_port

CONCENTRATOR = "c-001"
KEY = bytes.fromhex("5f1e" * 16)
REPLY_TOPIC = "centre/replies/test"


def reading(n: int) -> dict[str, Any]:
    """A valid reading; distinct n give distinct (meter, item, data_time)."""
    return {
        "meter": f"{n // 336:012d}",
        "item": "daily_freeze",
        "plan": "daily",
        "data_time": f"2026-{1 + n // 28 % 12:02d}-{1 + n % 28:02d}T00:00:00+08:00",
        "read_at": "2026-11-26T00:20:01+08:00",
        "values": {"energy_import_total_kwh": {"value": round(n * 0.01, 2), "unit": "kWh"}},
    }


def fat_reading(n: int, values: int = 20) -> dict[str, Any]:
    """A valid reading of about 1 KB (`values` values): a few hundred make a large batch."""
    return {
        **reading(n),
        "values": {
            f"register_{i:02d}_kwh": {"value": round(n * 0.01 + i, 2), "unit": "kWh"}
            for i in range(values)
        },
    }


def big_round_report(failed: int) -> dict[str, Any]:
    """A daily round report listing `failed` meters, each with a long detail (as the agent's
    plans write them, up to 200 characters): about 300 bytes per failed meter."""
    return {
        "plan": "daily",
        "round_id": "c-001:daily:2026-11-25:round1",
        "data_day": "2026-11-25",
        "final": True,
        "started_at": "2026-11-26T00:05:00+08:00",
        "ended_at": "2026-11-26T00:31:00+08:00",
        "duration_s": 1560.0,
        "expected": failed + 10,
        "read": 10,
        "failed_by_reason": {"no_reply": failed},
        "failed": [
            {
                "meter": f"{100000 + i:012d}",
                "reason": "no_reply",
                "attempts": 3,
                "detail": f"no reply within 2000 ms on rs485-{i % 4} " + "x" * 150,
                "last_attempt_at": "2026-11-26T00:30:12+08:00",
            }
            for i in range(failed)
        ],
        "bus_busy_s": {f"rs485-{b}": 612.4 for b in range(4)},
    }


def reading_key(r: dict[str, Any]) -> tuple[str, str, str]:
    return (r["meter"], r["item"], r["data_time"])


ARCHIVE = {
    "version": 3,
    "updated_at": "2026-11-26T00:00:00+08:00",
    "meters": [{"meter": "000000000001", "protocol": "dlt645-2007", "bus": "rs485-1"}],
}


def archive_and_plans(archive: Path, backfill_days: int = 0) -> str:
    """An agent config's archive and plans: the daily plan all day with short retry spacing, the
    clock plan off."""
    return f"""[archive]
file = "{archive}"
[plans.daily]
start = "00:00"
deadline = "23:59"
retry_spacing_minutes = 0.02
backfill_days = {backfill_days}
[plans.clock]
enabled = false
"""


def daily_agent_config(tmp: Path, port: int, urls: dict[str, str], archive: Path) -> Path:
    """`tmp/agent.toml`: the agent on a broker at 127.0.0.1:PORT, its buses by name, its archive
    and plans (`archive_and_plans`, no backfill)."""
    buses = "".join(f'[[buses]]\nname = "{name}"\nurl = "{url}"\n' for name, url in urls.items())
    path = tmp / "agent.toml"
    path.write_text(
        f"""
[agent]
concentrator = "{CONCENTRATOR}"
state_dir = "{tmp / "state"}"
log_format = "json"
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[metrics]
listen = ""
{buses}
{archive_and_plans(archive)}""",
        encoding="utf-8",
    )
    return path


def props(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


async def eventually(predicate: Callable[[], bool], within: float = 20.0) -> None:
    """Wait for `predicate`; the limit only keeps a broken test from hanging."""
    async with asyncio.timeout(within):
        # polling: the predicates look at counters and lists no event is tied to
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@dataclass
class Seen:
    topic: str
    kind: str
    payload: dict[str, Any]
    retain: bool
    size: int = 0
    """payload bytes as received"""


@dataclass
class Collector:
    """Subscribes to the concentrator's topics and validates every payload it receives.
    `persistent`: an MQTT v5 session that outlives disconnects (needs a broker with
    persistence to outlive a restart), reconnecting on its own."""

    broker: Mosquitto
    client_id: str = "collector"
    persistent: bool = False
    filters: tuple[str, ...] = ("meterlink/v1/#",)
    seen: list[Seen] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    subscribed: int = 0
    _task: asyncio.Task[None] | None = None

    def of(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind]

    def readings(self) -> list[dict[str, Any]]:
        return [r for s in self.of("readings") for r in s.payload["readings"]]

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run(), name=f"collector-{self.client_id}")
        await eventually(lambda: self.subscribed > 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        first = True
        while True:
            connect = props(PacketTypes.CONNECT)
            if self.persistent:
                connect.SessionExpiryInterval = 600
            try:
                async with Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=first or not self.persistent,
                    properties=connect,
                ) as client:
                    first = False
                    for f in self.filters:
                        await client.subscribe(f, qos=1)
                    self.subscribed += 1
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError as exc:
                raise_if_cancelled(exc)
                await asyncio.sleep(0.05)

    def _take(self, message: aiomqtt.Message) -> None:
        name = message.topic.value
        where = kind_of_topic(name)
        kind = where[1] if where is not None else "other"
        assert isinstance(message.payload, bytes)
        try:
            payload = json.loads(message.payload)
        except ValueError:
            self.invalid.append(f"{name}: not JSON: {message.payload[:40]!r}")
            return
        if where is not None:
            try:
                validate(kind, payload)
            except PayloadInvalid as exc:
                self.invalid.append(f"{name}: {exc}")
        self.seen.append(Seen(name, kind, payload, bool(message.retain), len(message.payload)))


@dataclass
class Reply:
    payload: dict[str, Any]
    correlation: bytes | None


class Requester:
    """The centre: publishes commands with a response topic and correlation data."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.replies: list[Reply] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, broker: Mosquitto) -> AsyncIterator[Requester]:
        async with Client(
            broker.host, broker.port, identifier="centre", protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            me = cls(client)
            await client.subscribe(REPLY_TOPIC, qos=1)
            task = asyncio.create_task(me._collect())
            try:
                yield me
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _collect(self) -> None:
        async for message in self.client.messages:
            p = message.properties
            correlation = getattr(p, "CorrelationData", None) if p is not None else None
            assert isinstance(message.payload, bytes)
            self.replies.append(Reply(json.loads(message.payload), correlation))

    async def send(
        self,
        payload: dict[str, Any] | bytes,
        correlation: bytes | None,
        *,
        response_topic: str | None = REPLY_TOPIC,
    ) -> None:
        p = props(PacketTypes.PUBLISH)
        if response_topic is not None:
            p.ResponseTopic = response_topic
        if correlation is not None:
            p.CorrelationData = correlation
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(f"meterlink/v1/{CONCENTRATOR}/cmd", data, qos=1, properties=p)

    async def request(self, payload: dict[str, Any] | bytes, correlation: bytes) -> Reply:
        await self.send(payload, correlation)
        await eventually(lambda: any(r.correlation == correlation for r in self.replies))
        return next(r for r in self.replies if r.correlation == correlation)


async def echo_handler(command: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": {"echo": command.get("args", {})}}


def settings_for(broker: Mosquitto, **overrides: Any) -> LinkSettings:
    base = LinkSettings(
        host=broker.host,
        port=broker.port,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        batch_size=50,
        publish_timeout_s=10.0,
        idle_poll_s=1.0,
        response_wait_s=10.0,
    )
    return replace(base, **overrides)


def make_link(
    broker: Mosquitto,
    outbox: Outbox,
    *,
    key: bytes | None = KEY,
    handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = echo_handler,
    archive: Callable[[], dict[str, Any]] = lambda: dict(ARCHIVE),
    **overrides: Any,
) -> MqttLink:
    return MqttLink(
        settings_for(broker, **overrides),
        outbox,
        CONCENTRATOR,
        archive_provider=archive,
        status_provider=lambda: {"version": "test", "archive_version": ARCHIVE["version"]},
        command_handler=handler,
        command_key=key,
    )


@contextlib.asynccontextmanager
async def running(link: MqttLink, *, wait_connected: bool = True) -> AsyncIterator[MqttLink]:
    task = asyncio.create_task(link.run(), name="link-under-test")
    try:
        if wait_connected:
            await eventually(lambda: link.connected and link.stats.published.get("status", 0) > 0)
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def local_mosquitto(
    workdir: Path,
    *,
    persistence: bool = False,
    acl: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[Mosquitto]:
    acl_file = None
    if acl is not None:
        acl_file = workdir / "acl"
        acl_file.write_text(acl)
    broker = Mosquitto(workdir, free_port(), persistence, acl_file=acl_file, extra=extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(workdir: Path) -> Pki:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("meterlink test CA"))
        .issuer_name(name("meterlink test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server = leaf(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client = leaf("meterlink-agent-c-001", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(
        ca=write_cert(ca, workdir / "ca.pem"),
        server_cert=write_cert(server, workdir / "server.pem"),
        server_key=write_key(server_key, workdir / "server.key"),
        client_cert=write_cert(client, workdir / "client.pem"),
        client_key=write_key(client_key, workdir / "client.key"),
    )


async def _serve_link(port: int, db: Path) -> None:
    """Run a link until killed; print "up" once the online status is acknowledged."""
    outbox = await Outbox.open(db)
    broker = Mosquitto(db.parent, port)
    link = make_link(broker, outbox, key=None, keepalive_s=5)
    task = asyncio.create_task(link.run())
    await eventually(lambda: link.stats.published.get("status", 0) > 0)
    sys.stdout.write("up\n")
    sys.stdout.flush()
    await task


if __name__ == "__main__":
    asyncio.run(_serve_link(int(sys.argv[1]), Path(sys.argv[2])))
