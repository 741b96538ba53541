"""Backends over asyncio streams: RS-485 serial ports and TCP transparent serial servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios

import serial
import serial_asyncio_fast

from agent.transports.base import ByteTransport
from agent.transports.errors import BusError
from agent.transports.url import BusUrl

__all__ = ["SerialTransport", "TcpTransport"]

_CHUNK = 4096


class _StreamTransport(ByteTransport):
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise BusError(f"{self.url}: not open")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, serial.SerialException) as exc:
            raise BusError(f"{self.url}: write failed: {exc}") from exc

    async def _read(self, wait: float) -> bytes:
        reader = self._reader
        if reader is None:
            raise BusError(f"{self.url}: not open")
        try:
            # StreamReader cannot say "bytes available"; a 1 ms wait stands in for timeout 0
            async with asyncio.timeout(max(wait, 0.001)):
                data = await reader.read(_CHUNK)
        except TimeoutError:
            return b""
        except (OSError, serial.SerialException) as exc:
            raise BusError(f"{self.url}: read failed: {exc}") from exc
        if not data:
            raise BusError(f"{self.url}: connection closed by the other end")
        return data

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, serial.SerialException):
                await writer.wait_closed()


class SerialTransport(_StreamTransport):
    """A local serial port (RS-485 adapter), default 2400 8E1."""

    async def _open(self) -> None:
        u = self.url
        try:
            self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                url=u.path,
                baudrate=u.baud,
                parity=u.parity,
                bytesize=u.bytesize,
                stopbits=u.stopbits,
            )
        except termios.error as exc:
            # the driver refused the line settings (tcsetattr EINVAL): say which and what to do
            raise BusError(f"{u}: cannot open {u.path}: {_refused_settings(u.path, u)}") from exc
        except (OSError, serial.SerialException, ValueError) as exc:
            raise BusError(f"{u}: cannot open {u.path}: {exc}") from exc


def _refused_settings(path: str, u: BusUrl) -> str:
    framing = f"{u.baud} baud {u.bytesize}{u.parity}{u.stopbits}"
    if os.path.realpath(path).startswith("/dev/pts/") and u.parity != "N":
        return (
            f"cannot set {_PARITY_NAMES.get(u.parity, u.parity)} parity on this device;"
            " pseudo-terminals accept only parity=N (add &parity=N to the bus URL)"
        )
    return f"the device refuses {framing}; check baud, parity, bytesize and stopbits in the URL"


_PARITY_NAMES = {"E": "even", "O": "odd", "M": "mark", "S": "space"}


class TcpTransport(_StreamTransport):
    """A transparent serial server (TCP <-> RS-485); `baud` in the URL is its line speed."""

    async def _open(self) -> None:
        u = self.url
        try:
            async with asyncio.timeout(max(u.timeout_ms, 1000) / 1000 * 5):
                self._reader, self._writer = await asyncio.open_connection(u.host, u.port)
        except (OSError, TimeoutError) as exc:
            raise BusError(f"{u}: cannot connect to {u.host}:{u.port}: {exc}") from exc
