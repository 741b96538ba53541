"""Small asyncio rules the agent and the central side share, whatever they talk to."""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancelled"]


def raise_if_cancelled(error: BaseException) -> None:
    """Re-raise the cancellation an error may be hiding: a cancelled task whose last wait ended
    in an error anyway (an MQTT connection dropped, or aiohttp's own timeout took the cancel for
    its own) must stop, not reconnect or count a database as down. Call it first thing in such
    an `except` block."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
