"""The agent's MQTT link; see `agent.mqtt.link`."""

from __future__ import annotations

from agent.mqtt.link import MIN_PAYLOAD_BYTES as MIN_PAYLOAD_BYTES
from agent.mqtt.link import LinkStats, MqttLink, MqttSettings, PublishRefused, backoff_delay
from agent.mqtt.link import _Client as _Client
from agent.mqtt.link import _report_parts as _report_parts

__all__ = ["LinkStats", "MqttLink", "MqttSettings", "PublishRefused", "backoff_delay"]
