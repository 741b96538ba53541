"""Signing and checking of commands to the agent (``meterlink/v1/<c>/cmd``). Pure: stdlib only,
no clock of its own (callers pass ``now``), no I/O, so the centre signs with the same code the
agent verifies with.

A command is authenticated by ``signature`` = HMAC-SHA256 (lower-case hex) with the
concentrator's command key over the canonical JSON of the payload without ``signature``:
``json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
UTF-8. For payloads of strings, integers, booleans and null this equals RFC 8785 (JCS); keep
floats out of command arguments (number formatting differs between languages).

Freshness: ``issued_at`` within ±`MAX_SKEW_S` of the agent's clock, and ``nonce`` unused in
the last `NONCE_TTL_S` (which must be at least twice the skew so that a command cannot be
replayed after its nonce was forgotten but while its ``issued_at`` is still accepted).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Protocol

__all__ = [
    "MAX_SKEW_S",
    "NONCE_TTL_S",
    "CommandRejected",
    "NonceCache",
    "NonceMemory",
    "canonical_json",
    "check_fresh",
    "key_bytes",
    "new_command",
    "sign_command",
    "verify_command",
    "verify_signature",
]

MAX_SKEW_S: Final = 300.0
NONCE_TTL_S: Final = 600.0


class CommandRejected(ValueError):
    """A command that is not authentic or not fresh; the message says which check failed."""


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: `payload` without ``signature``, keys sorted at every
    level, no whitespace, UTF-8."""
    body = {k: v for k, v in payload.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def key_bytes(text: str) -> bytes:
    """A command key as configured (an environment variable on both sides): hex digits are the
    key's bytes, anything else its UTF-8 encoding."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()


def _mac(payload: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(payload), hashlib.sha256).hexdigest()


def sign_command(payload: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of `payload` with ``signature`` set (any previous signature is replaced)."""
    if not key:
        raise ValueError("empty command key")
    signed = {k: v for k, v in payload.items() if k != "signature"}
    signed["signature"] = _mac(signed, key)
    return signed


def verify_signature(payload: Mapping[str, Any], key: bytes) -> None:
    """Raise `CommandRejected` unless ``signature`` is the HMAC of the payload under `key`."""
    if not key:
        raise CommandRejected("no command key configured")
    given = payload.get("signature")
    if not isinstance(given, str):
        raise CommandRejected("no signature")
    if not hmac.compare_digest(given.encode("ascii", "replace"), _mac(payload, key).encode()):
        raise CommandRejected("bad signature")


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise CommandRejected("issued_at missing")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandRejected(f"issued_at {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise CommandRejected(f"issued_at {text!r} has no UTC offset")
    return when


def check_fresh(
    payload: Mapping[str, Any], *, now: datetime, max_skew_s: float = MAX_SKEW_S
) -> None:
    """Raise `CommandRejected` unless ``issued_at`` is within ±`max_skew_s` of `now` (aware)."""
    skew = (_parse_time(payload.get("issued_at")) - now).total_seconds()
    if abs(skew) > max_skew_s:
        raise CommandRejected(
            f"issued_at is {skew:+.0f} s from the agent's clock (limit ±{max_skew_s:.0f} s)"
        )


def verify_command(
    payload: Mapping[str, Any], key: bytes, *, now: datetime, max_skew_s: float = MAX_SKEW_S
) -> None:
    """Signature first (an unauthenticated sender learns nothing else), then freshness.
    Replay protection needs memory: pair this with a `NonceCache`."""
    verify_signature(payload, key)
    check_fresh(payload, now=now, max_skew_s=max_skew_s)


class NonceMemory(Protocol):
    """Where a verifier remembers the nonces it accepted (`NonceCache` in memory; the agent's is
    on disk, so that a restart does not forget them)."""

    def check_and_remember(self, nonce: Any, *, now: float) -> None:
        """Raise `CommandRejected` if `nonce` was seen within the TTL; remember it otherwise."""
        ...


class NonceCache:
    """Nonces seen within the last `ttl_s` seconds of a monotonic clock the caller supplies.

    Bounded: when `capacity` live nonces are held, new commands are refused (fail closed)
    rather than forgetting a nonce that could still be replayed."""

    def __init__(self, *, ttl_s: float = NONCE_TTL_S, capacity: int = 65536) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            nonce, at = next(iter(self._seen.items()))
            if now - at < self.ttl_s:
                break
            del self._seen[nonce]

    def check_and_remember(self, nonce: Any, *, now: float) -> None:
        """Raise `CommandRejected` if `nonce` was seen within the TTL; remember it otherwise."""
        if not isinstance(nonce, str) or not nonce:
            raise CommandRejected("nonce missing")
        self._expire(now)
        if nonce in self._seen:
            raise CommandRejected("nonce already used")
        if len(self._seen) >= self.capacity:
            raise CommandRejected("too many recent commands to track their nonces")
        self._seen[nonce] = now


def new_command(
    command: str,
    *,
    concentrator: str,
    key: bytes,
    now: datetime,
    meter: str | None = None,
    args: Mapping[str, Any] | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A signed ``meterlink.cmd/1`` payload, as the centre sends it."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    payload: dict[str, Any] = {
        "schema": "meterlink.cmd/1",
        "concentrator": concentrator,
        "command": command,
        "issued_at": now.isoformat(timespec="seconds"),
        "nonce": nonce if nonce is not None else secrets.token_hex(16),
    }
    if meter is not None:
        payload["meter"] = meter
    if args is not None:
        payload["args"] = dict(args)
    return sign_command(payload, key)
