"""One time source for a whole run: the real clock, or an accelerated one shared by processes.

Production reads the real clock. A test or a soak sets ``METERLINK_CLOCK`` (or passes
``meterlink --clock SPEC``) and every process of the run (simulator, agent, central) sees the
same simulated time:

- ``<iso-epoch>@<speed>[@<anchor>]``: simulated time is ``epoch`` at the real Unix time
  ``anchor`` and runs ``speed`` times faster than real time. Without an anchor the first
  process to read it fixes it (now) and exports the anchored spec to its children, so they
  share the instant. ``2026-03-02T10:00:00+08:00@1`` is a fixed-start clock at real speed.
- ``file:<path>``: the spec is read from a file, and read again when the file changes: a test
  steps a running process's clock (a concentrator whose clock jumps) by rewriting the file.

Sleeping, timeouts and backoffs measured in simulated seconds last ``seconds / speed`` real
seconds; `monotonic()` is in simulated seconds and never goes back, even when the clock is
stepped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from pathlib import Path

__all__ = [
    "ENV",
    "AcceleratedClock",
    "Clock",
    "ClockSpecError",
    "FileClock",
    "current",
    "install",
    "parse",
]

ENV = "METERLINK_CLOCK"


class ClockSpecError(ValueError):
    """A clock spec that cannot be read: says what was expected."""


class Clock:
    """The real clock (the default): wall time, the monotonic clock, asyncio sleeps."""

    speed = 1.0

    def time(self) -> float:
        """Unix seconds, now."""
        return time.time()

    def now(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        """Now as an aware datetime in `tz` (UTC when not given)."""
        return dt.datetime.fromtimestamp(self.time(), tz if tz is not None else dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)

    def real_seconds(self, seconds: float) -> float:
        """How long `seconds` of this clock's time last in real time."""
        return seconds / self.speed

    @property
    def spec(self) -> str | None:
        """What to put in ``METERLINK_CLOCK`` for a child to share this clock (None: real)."""
        return None


class AcceleratedClock(Clock):
    """Simulated time: `epoch` at the real Unix time `anchor`, running `speed` times fast."""

    def __init__(self, epoch: dt.datetime, speed: float, anchor: float | None = None) -> None:
        if epoch.tzinfo is None:
            raise ClockSpecError(f"clock epoch {epoch.isoformat()} has no UTC offset")
        if not speed > 0:
            raise ClockSpecError(f"clock speed must be > 0, got {speed}")
        self.epoch = epoch
        self.speed = speed
        self.anchor = time.time() if anchor is None else anchor
        self._mono_real = time.monotonic()
        self._mono_base = 0.0

    def time(self) -> float:
        return self.epoch.timestamp() + (time.time() - self.anchor) * self.speed

    def monotonic(self) -> float:
        return self._mono_base + (time.monotonic() - self._mono_real) * self.speed

    def retime(self, epoch: dt.datetime, speed: float, anchor: float) -> None:
        """Step to another epoch/speed; monotonic time carries on from where it is."""
        self._mono_base, self._mono_real = self.monotonic(), time.monotonic()
        self.epoch, self.speed, self.anchor = epoch, speed, anchor

    @property
    def spec(self) -> str:
        return f"{self.epoch.isoformat()}@{self.speed:g}@{self.anchor:.6f}"


class FileClock(AcceleratedClock):
    """An accelerated clock whose spec lives in a file, re-read when the file changes."""

    CHECK_EVERY_S = 0.05  # real seconds between looks at the file

    def __init__(self, path: Path) -> None:
        self.path = path
        epoch, speed, anchor = self._read()
        super().__init__(epoch, speed, anchor)
        self._checked = time.monotonic()
        self._stamp = self._mtime()

    def _mtime(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return 0

    def _read(self) -> tuple[dt.datetime, float, float]:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClockSpecError(f"clock file {self.path}: {exc.strerror}") from None
        epoch, speed, anchor = _fields(text)
        if anchor is None:
            raise ClockSpecError(f"clock file {self.path}: the spec needs its @anchor")
        return epoch, speed, anchor

    def _follow(self) -> None:
        if time.monotonic() - self._checked < self.CHECK_EVERY_S:
            return
        self._checked = time.monotonic()
        stamp = self._mtime()
        if stamp != self._stamp:
            self._stamp = stamp
            # a half-written file: keep the time we have, look again next time
            with contextlib.suppress(ClockSpecError):
                self.retime(*self._read())

    def time(self) -> float:
        self._follow()
        return super().time()

    @property
    def spec(self) -> str:
        return f"file:{self.path}"


def _fields(text: str) -> tuple[dt.datetime, float, float | None]:
    parts = text.split("@")
    if len(parts) not in (2, 3):
        raise ClockSpecError(
            f"clock spec {text!r}: expected <iso-epoch>@<speed>[@<unix-anchor>],"
            " e.g. 2026-03-02T10:00:00+08:00@600, or file:<path>"
        )
    try:
        epoch = dt.datetime.fromisoformat(parts[0])
    except ValueError:
        raise ClockSpecError(
            f"clock spec {text!r}: epoch {parts[0]!r} is not an ISO date-time"
        ) from None
    if epoch.tzinfo is None:
        raise ClockSpecError(f"clock spec {text!r}: the epoch needs a UTC offset (+08:00, Z)")
    try:
        speed = float(parts[1])
        anchor = float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ClockSpecError(f"clock spec {text!r}: speed and anchor are numbers") from None
    if not speed > 0 or speed != speed or speed == float("inf"):
        raise ClockSpecError(f"clock spec {text!r}: speed must be a positive number")
    return epoch, speed, anchor


def parse(spec: str | None) -> Clock:
    """A clock from a spec (see the module doc); None or empty: the real clock."""
    if not spec:
        return Clock()
    if spec.startswith("file:"):
        return FileClock(Path(spec.removeprefix("file:")))
    epoch, speed, anchor = _fields(spec)
    return AcceleratedClock(epoch, speed, anchor)


_current: Clock | None = None


def current() -> Clock:
    """This process's clock: the one installed, else the one ``METERLINK_CLOCK`` names."""
    global _current
    if _current is None:
        install(parse(os.environ.get(ENV)))
        assert _current is not None
    return _current


def install(clock: Clock) -> Clock:
    """Make `clock` this process's clock and export it to the children it starts."""
    global _current
    _current = clock
    if clock.spec is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = clock.spec
    return clock
