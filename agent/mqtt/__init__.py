"""The agent's one MQTT v5 connection: publishes the outbox, keeps the retained status and archive
up to date, and carries signed commands (request/response with correlation data).

Delivery is at-least-once: a row leaves the outbox only after the broker's PUBACK for the
message that carried it (or, for good, to the dead-letter table; see below).
``aiomqtt.Client.publish(qos=1)`` returns when paho's ``on_publish`` fires, which for QoS 1
happens in ``_handle_pubackcomp`` on receipt of the PUBACK (aiomqtt 2.5.1, paho-mqtt 2.2) --
but aiomqtt drops the PUBACK's MQTT v5 reason code, so a broker that
refuses a message (Mosquitto answers ``0x87 Not authorized`` when an ACL denies the topic) looks
like a success. `_Client` keeps that reason code, and a refused message keeps its rows. To tie a
PUBACK to its publish without aiomqtt's internals, QoS 1 publishes on one connection go one at a
time (a lock): the reason recorded is the one for the only publish in flight. Batches of up to
`LinkSettings.batch_size` readings keep that cheap.

aiomqtt does not fail pending publishes when the connection drops; the command listener sees the
disconnect, which ends the connection's task group, and every publish also has a timeout.

Each outbox kind (events, round reports, readings) is published on its own: a refused message
backs off its kind only (`_KindState`), so an ACL that denies one topic or one bad message never
holds up the others. What the broker will not take:

- a refusing PUBACK: 0x97 Quota exceeded only delays; any other code counts as a strike against
  the message. A readings batch is halved until the reading the broker objects to is alone.
  After `LinkSettings.dead_letter_after` strikes of one message, the next message of its kind is
  sent first (a probe). Taken: the struck message gets a last try, and failing that its rows go
  to the dead-letter table (counted, logged, an ``outbox_dead_letter`` event). Refused too: it
  is the topic (an ACL), so every row stays and the kind keeps backing off.
- size: no payload exceeds `LinkSettings.max_payload_bytes` (nor the Maximum Packet Size a
  broker announces in its CONNACK): readings batches are cut by bytes, a round report too large
  for one message is sent in parts (``part``: index, of, failed_total). Mosquitto's
  ``message_size_limit`` answers a larger PUBLISH by closing the connection, not with a PUBACK:
  when the connection dies twice in a row under the same message, the link halves its payload
  cap (`MqttLink.payload_cap`) if the message can be split, else counts a strike against it.

Layout: `settings` (LinkSettings, limits, backoff), `client` (`_Client`, sending, counters),
`messages` (outbox rows as payloads under the size caps), `publisher` (`OutboxPublisher`),
`commands` (`CommandChannel`), `retained` (status, last will, archive) and `link` (`MqttLink`,
which composes the others).
"""

from __future__ import annotations

from agent.mqtt.client import LinkStats, PublishRefused
from agent.mqtt.client import _Client as _Client
from agent.mqtt.link import MqttLink
from agent.mqtt.messages import _report_parts as _report_parts
from agent.mqtt.settings import MIN_PAYLOAD_BYTES as MIN_PAYLOAD_BYTES
from agent.mqtt.settings import LinkSettings, backoff_delay

__all__ = ["LinkSettings", "LinkStats", "MqttLink", "PublishRefused", "backoff_delay"]
