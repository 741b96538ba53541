"""The MQTT link's settings and limits, and the jittered backoff of reconnects and retries."""

from __future__ import annotations

import os
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PASSWORD_ENV: Final = "METERLINK_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a secret
MAX_COMMANDS_IN_FLIGHT: Final = 4
MAX_QUEUED_COMMANDS: Final = 100
PUMPED_KINDS: Final = ("events", "rounds", "readings")
"""outbox kinds, in the order of each publisher pass; each backs off on its own"""
DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
MIN_PAYLOAD_BYTES: Final = 4096
"""the learned payload cap never goes below this (a reading or a failed meter is far smaller)"""
PUBLISH_OVERHEAD: Final = 64
"""bytes of a PUBLISH packet besides its topic and payload (fixed header, packet id, our
properties), with room to spare: subtracted from a broker's Maximum Packet Size"""
TRANSIENT_REFUSALS: Final = frozenset({0x97})
"""PUBACK reason codes that say nothing about the message: 0x97 Quota exceeded (a rate limit).
Every other failure code counts against the message (see `OutboxPublisher._strike`)."""


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [b/2, b], b = min(max_s, min_s * 2**attempt).
    Half the spread keeps retries from synchronising across a fleet after a broker restart,
    the floor keeps one agent from retrying in a tight loop."""
    base = min(max_s, min_s * 2 ** min(attempt, 32))
    return rng.uniform(base / 2, base)


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    """stable across restarts so the broker keeps the session; "" = meterlink-agent-<c>"""
    username: str | None = None
    password: str | None = None
    """None: taken from the environment variable named by `password_env`, if set"""
    password_env: str = PASSWORD_ENV
    tls: bool = False
    ca_file: str | Path | None = None
    """None: the system trust store"""
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    tls_insecure: bool = False
    """skip the host name check (the chain is still verified); for brokers addressed by IP"""
    keepalive: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stable_after_s: float = 60.0
    """a connection that lasted this long resets the backoff to `reconnect_min_s`"""
    batch_size: int = 500
    """readings per `readings` message, at most"""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    """largest payload published: readings batches are cut, round reports split into parts to
    stay under it; set it to at most the broker's limit (Mosquitto ``message_size_limit``)"""
    dead_letter_after: int = 5
    """refusals of one message (see `OutboxPublisher._strike`) before the next message of its
    kind is tried: if the broker takes that one, the refused rows go to the dead-letter table"""
    session_expiry_s: int = 86400
    """the broker keeps our subscription and queued commands this long while we are away"""
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 30.0
    """a publish without PUBACK in this time drops the connection (its rows are sent again)"""
    idle_poll_s: float = 5.0
    """re-check the outbox this often even without a put (rows written by another process)"""
    response_wait_s: float = 60.0
    """how long a command's reply waits for a connection before it is dropped (and counted)"""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_payload_bytes < MIN_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be at least {MIN_PAYLOAD_BYTES}")
        if self.dead_letter_after < 1:
            raise ValueError("dead_letter_after must be at least 1")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_min_s must be > 0 and <= reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password
        return os.environ.get(self.password_env) or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None without TLS). Reads the files: call it off the event loop."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        context.check_hostname = not self.tls_insecure
        return context
