"""Transport errors: what went wrong on the line, independent of any protocol.

Error classes also inherit the builtin they resemble, so generic code can catch them.
"""

from __future__ import annotations

__all__ = ["BusError", "NoReply", "TransportError", "TruncatedReply"]


class TransportError(Exception):
    """Base of transport failures. `retryable`: another attempt may succeed."""

    retryable = True


class BusError(TransportError, OSError):
    """The line itself failed: port missing or gone, connection refused or dropped."""


class NoReply(TransportError, TimeoutError):
    """Silence for the whole reply window."""


class TruncatedReply(TransportError, TimeoutError):
    """A reply started but stopped (inter-byte gap exceeded or the window closed)."""

    def __init__(self, message: str, received: bytes) -> None:
        super().__init__(message)
        self.received = received
