"""The MQTT link's settings (the shared connection settings plus the link's limits), and the
jittered backoff of reconnects and retries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from common.mqtt import MqttSettings

MAX_COMMANDS_IN_FLIGHT: Final = 4
MAX_QUEUED_COMMANDS: Final = 100
PUMPED_KINDS: Final = ("events", "rounds", "readings", "tariff")
"""outbox kinds, in the order of each publisher pass; each backs off on its own"""
DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
MIN_PAYLOAD_BYTES: Final = 4096
"""the learned payload cap never goes below this (a reading or a failed meter is far smaller)"""
PUBLISH_OVERHEAD: Final = 64
"""bytes of a PUBLISH packet besides its topic and payload (fixed header, packet id, our
properties), with room to spare: subtracted from a broker's Maximum Packet Size"""
NO_SUBSCRIBERS: Final = 0x10
"""PUBACK "No matching subscribers": the broker took the message and dropped it, nobody listens.
For the data the centre must get (readings, rounds, events) that is a refusal: after a broker
restart Mosquitto 2.0 restores the central instances' sessions but queues nothing for them
until they reconnect, and says so with this code (found by the soak, docs/reliability.md)."""
TRANSIENT_REFUSALS: Final = frozenset({0x97, NO_SUBSCRIBERS})
"""PUBACK reason codes that say nothing about the message: 0x97 Quota exceeded (a rate limit),
0x10 nobody subscribed yet. Every other failure code counts against the message (see
`OutboxPublisher._strike`)."""


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [b/2, b], b = min(max_s, min_s * 2**attempt).
    Half the spread keeps retries from synchronising across a fleet after a broker restart,
    the floor keeps one agent from retrying in a tight loop."""
    base = min(max_s, min_s * 2 ** min(attempt, 32))
    return rng.uniform(base / 2, base)


@dataclass(frozen=True)
class LinkSettings(MqttSettings):
    """The agent's `[mqtt]` settings: the connection (`common.mqtt.MqttSettings`, shared with
    the central side) plus the limits of the outbox publisher and the command channel."""

    client_id: str = ""
    """stable across restarts so the broker keeps the session; "" = meterlink-agent-<c>"""
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
    publish_timeout_s: float = 30.0
    """a publish without PUBACK in this time drops the connection (its rows are sent again)"""
    idle_poll_s: float = 5.0
    """re-check the outbox this often even without a put (rows written by another process)"""
    response_wait_s: float = 60.0
    """how long a command's reply waits for a connection before it is dropped (and counted)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_payload_bytes < MIN_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be at least {MIN_PAYLOAD_BYTES}")
        if self.dead_letter_after < 1:
            raise ValueError("dead_letter_after must be at least 1")
