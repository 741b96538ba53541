"""A scripted far end for transport tests: a pty (or TCP socket) whose other side answers
each request with whatever the test scripts — a reply, silence, a torn or corrupted reply, an
echo. Built on the codec; the full field behaviour is the simulator's job (simulators/)."""

from __future__ import annotations

import array
import fcntl
import os
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from protocols.dlt645 import Frame, FrameDecoder

Script = Callable[[Frame], list[tuple[float, bytes]]]
"""request -> [(delay seconds, bytes to send)]"""


class PtyFarEnd:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the master never sees EIO between test opens
        self.requests: list[Frame] = []
        self.sent = 0
        """how many scripted writes went out (tests wait on it instead of sleeping)"""
        self._sent_changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import select

        decoder = FrameDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for event in decoder.feed(data):
                if isinstance(event, Frame) and not event.control.reply:
                    self.requests.append(event)
                    for delay, out in self.script(event):
                        if self._stop.wait(delay):
                            return
                        os.write(self.master, out)
                        with self._sent_changed:
                            self.sent += 1
                            self._sent_changed.notify_all()

    def wait_sent(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` scripted writes went out (AssertionError after `timeout`)."""
        with self._sent_changed:
            assert self._sent_changed.wait_for(lambda: self.sent >= count, timeout), self.sent

    def wait_delivered(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` bytes wait to be read on the line's side the transport opened. A
        write to the pty's master reaches that side later (the kernel moves it in a worker), so
        "sent" is not yet "there". Call it without yielding to the event loop in between, or the
        transport may have taken the bytes already."""
        deadline = time.monotonic() + timeout
        waiting = array.array("i", [0])
        while True:
            fcntl.ioctl(self._slave, termios.FIONREAD, waiting)
            if waiting[0] >= count:
                return
            assert time.monotonic() < deadline, f"{waiting[0]} of {count} bytes delivered"
            time.sleep(0.001)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self._slave)


@contextmanager
def pty_far_end(script: Script) -> Iterator[PtyFarEnd]:
    end = PtyFarEnd(script)
    end._thread.start()
    try:
        yield end
    finally:
        end.close()
