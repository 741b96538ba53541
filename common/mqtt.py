"""The MQTT connection settings the agent and the central side share, and the one way both turn
them into a `Client` (aiomqtt's, made safe to cancel on Python 3.11 and to lose its socket):
MQTT v5, a persistent session, and TLS with a CA, an optional client certificate and key (the
production broker, deploy/mosquitto/, wants one).

The agent's `[mqtt]` section adds the outbox publisher's limits (`agent.mqtt.LinkSettings`) and
the command key; the central's adds its shared-subscription group and Receive Maximum. The keys
below have the same names and meaning on both sides.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.types import PahoSocket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.config import Secret

__all__ = ["Client", "MqttSettings", "check_tls", "client_arguments", "tls_context"]

T = TypeVar("T")

MOVED: Mapping[str, str] = {
    "keepalive": "renamed to keepalive_s",
    "password_env": (
        "removed: the password comes only from the environment, as METERLINK_MQTT_PASSWORD"
    ),
}


class Client(aiomqtt.Client):
    """aiomqtt's client, waiting for CONNACK, SUBACK, PUBACK and the disconnection with
    `asyncio.timeout` instead of `asyncio.wait_for`. Python 3.11's `wait_for` loses a cancellation
    that arrives in the same loop iteration as the awaited answer: it returns the answer and the
    task goes on, its cancel count still at 1 (fixed in 3.12, whose `wait_for` is built on
    `timeout`). Seen: the agent's publisher, told to stop as its PUBACK arrived, kept waiting for
    rows for ever and the link never stopped (a test teardown hung 120 s). It also watches a
    socket on the event loop only while paho still holds it open (below). Use this class, never
    `aiomqtt.Client` directly."""

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 - aiomqtt's signature
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    # paho tells aiomqtt when its socket opens, needs writing or closes; aiomqtt watches the
    # socket's file descriptor on the event loop from the next loop iteration on (`call_soon_
    # threadsafe`: paho may call from the connect thread). When the socket closes in between (the
    # broker reset the connection while a publish asked to write, or a connect was cancelled),
    # aiomqtt's registration then ran on a closed descriptor ("Exception in callback ...
    # add_writer ... Bad file descriptor", a stack trace in the agent's log), or on whatever file
    # the system had since given that number. Here the registration happens only if the socket
    # is still paho's open one when it runs; the callbacks are aiomqtt's.

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: PahoSocket) -> None:
        def read_all() -> None:
            while True:
                client.loop_read()
                # an SSL socket may hold decoded bytes loop_read() did not take
                pending = getattr(client.socket(), "pending", None)
                if pending is None or pending() <= 0:
                    break

        def keepalive() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._watch_while_open(client, sock, self._loop.add_reader, read_all, then=keepalive)

    def _on_socket_register_write(
        self,
        client: mqtt.Client,
        userdata: Any,
        sock: PahoSocket,
    ) -> None:
        self._watch_while_open(client, sock, self._loop.add_writer, client.loop_write)

    def _watch_while_open(
        self,
        client: mqtt.Client,
        sock: PahoSocket,
        watch: Callable[[int, Callable[[], None]], object],
        step: Callable[[], object],
        then: Callable[[], None] | None = None,
    ) -> None:
        """From the loop's next iteration on, run `step` when the socket is ready, if it is
        still paho's open socket then; a step that fails (a broken socket) disconnects."""

        def ready() -> None:
            try:
                step()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            if _still_open(client, sock):
                watch(sock.fileno(), ready)
                if then is not None:
                    then()

        self._loop.call_soon_threadsafe(register)


def _still_open(client: mqtt.Client, sock: PahoSocket) -> bool:
    """Is `sock` still the client's socket, and open? paho forgets a socket before closing it."""
    current = client.socket()
    return current is not None and current is sock and current.fileno() >= 0


@dataclass(frozen=True)
class MqttSettings:
    """How to reach and log in to the broker. Secrets come from the environment only
    (`common.config`): ``METERLINK_MQTT_PASSWORD``."""

    config_moved: ClassVar[Mapping[str, str]] = MOVED

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    """stable across restarts, so the broker keeps the session; each side has its default.
    The production broker replaces it with the client's identity (use_username_as_clientid)"""
    username: str | None = None
    """not needed with client certificates (the broker takes the certificate's name)"""
    password: Secret | None = None
    tls: bool = False
    ca_file: Path | None = None
    """the CA the broker's certificate must chain to; None: the system trust store"""
    cert_file: Path | None = None
    """client certificate (PEM), with `key_file`: the identity the broker's ACL knows"""
    key_file: Path | None = None
    """its private key (PEM, unencrypted, readable only by the service user)"""
    tls_insecure: bool = False
    """skip the check that the broker's certificate names `host` (the chain is still verified
    against `ca_file`); only for a broker reached by an address its certificate does not list"""
    keepalive_s: int = 60
    session_expiry_s: int = 86400
    """the broker keeps our subscriptions and queued messages this long while we are away"""
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if not 1 <= self.keepalive_s <= 65535:
            raise ValueError("keepalive_s must be 1..65535")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise ValueError("session_expiry_s must be 0..4294967295")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_min_s must be > 0 and <= reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.tls and (
            self.ca_file is not None or self.cert_file is not None or self.tls_insecure
        ):
            raise ValueError("ca_file, cert_file, key_file and tls_insecure need tls = true")


def tls_context(s: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context of `s` (None without TLS): TLS 1.2 or later, the broker's certificate
    verified against `ca_file` (and its name against `host` unless `tls_insecure`), our
    certificate presented when there is one. Reads the files: call it off the event loop.
    Raises `OSError` (`ssl.SSLError` included) naming what is wrong with them."""
    if not s.tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file) if s.ca_file is not None else None
        )
    except OSError as exc:
        raise type(exc)(f"ca_file {s.ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.cert_file is not None and s.key_file is not None:
        try:
            context.load_cert_chain(str(s.cert_file), str(s.key_file))
        except OSError as exc:
            raise type(exc)(f"cert_file {s.cert_file} / key_file {s.key_file}: {exc}") from None
    context.check_hostname = not s.tls_insecure
    return context


def check_tls(s: MqttSettings, section: str) -> tuple[bool, str]:
    """Load the TLS files of `s` as a connection would (for the ``check`` commands): whether
    they work, and a line saying what was checked or what is wrong (a daemon would keep
    retrying, logging the same error, until the files are fixed)."""
    if not s.tls:
        return True, f"{section}: no TLS (plain MQTT to {s.host}:{s.port})"
    try:
        tls_context(s)
    except OSError as exc:
        return False, f"{section}: PROBLEM: TLS files: {exc}; no connection until this is fixed"
    who = f"client certificate {s.cert_file}" if s.cert_file else "no client certificate"
    trust = s.ca_file or "the system trust store"
    return True, f"{section}: TLS to {s.host}:{s.port}, broker checked against {trust}, {who}"


async def client_arguments(
    s: MqttSettings, identifier: str, **connect_properties: int
) -> dict[str, Any]:
    """Keyword arguments for `Client` (or a subclass): MQTT v5, Clean Start off with a
    Session Expiry Interval, keepalive, timeout, credentials and TLS context. Extra CONNECT
    properties by name (``ReceiveMaximum=1000``). The TLS files are read (in a thread) on every
    call, so renewed certificates are taken at the next reconnect."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = s.session_expiry_s
    for name, value in connect_properties.items():
        setattr(properties, name, value)
    return {
        "hostname": s.host,
        "port": s.port,
        "identifier": identifier,
        "username": s.username,
        "password": s.password.reveal() if s.password else None,
        "protocol": aiomqtt.ProtocolVersion.V5,
        "clean_start": False,
        "properties": properties,
        "keepalive": s.keepalive_s,
        "timeout": s.connect_timeout_s,
        "tls_context": await asyncio.to_thread(tls_context, s) if s.tls else None,
    }
