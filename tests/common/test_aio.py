"""`common.aio.raise_if_cancelled`: an error that hides a cancellation becomes the cancellation
again; the same error in a task nobody stopped is left to its handler."""

from __future__ import annotations

import asyncio

import pytest

from common.aio import raise_if_cancelled


async def _fails_after_its_wait(started: asyncio.Event, release: asyncio.Event) -> str:
    """Wait, then fail the way a dropped connection does; say what the handler did."""
    try:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            # a library that turns the cancel into its own error (as aiohttp's timeout can)
            raise ConnectionError("connection dropped") from None
        raise ConnectionError("connection dropped")
    except ConnectionError as exc:
        raise_if_cancelled(exc)
        return "handled: would reconnect"


async def test_a_cancelled_task_stops_instead_of_handling_the_error() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_fails_after_its_wait(started, release))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_the_same_error_without_a_cancel_goes_to_its_handler() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_fails_after_its_wait(started, release))
    await started.wait()
    release.set()
    assert await task == "handled: would reconnect"
