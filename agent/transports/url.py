"""Bus URLs: how a bus is named in the config and on the command line.

    serial:///dev/ttyS2?baud=2400&parity=E       RS-485 (default 2400 8E1)
    tcp://10.0.0.7:4001?baud=2400                transparent serial server (baud = its line speed)
    modbus+rtu:///dev/ttyUSB0?baud=9600&parity=N Modbus RTU
    modbus+tcp://10.0.0.8:502                    Modbus TCP

Timing options (any scheme): reply_timeout_ms (default 500, the standard's Td max),
byte_gap_ms (500, the standard's Tb max), frame_gap_ms (20, quiet time between exchanges),
wakeup (4 FE bytes), echo (0/1: discard our own bytes echoed by the adapter), in_flight (1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = ["SCHEMES", "BusUrl", "BusUrlError"]

SCHEMES = ("serial", "tcp", "modbus+rtu", "modbus+tcp")
_PARITIES = {"N", "E", "O", "M", "S"}
_BAUDS = {300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200}
_INT_OPTIONS = {
    "baud",
    "bytesize",
    "stopbits",
    "reply_timeout_ms",
    "byte_gap_ms",
    "frame_gap_ms",
    "wakeup",
    "echo",
    "in_flight",
    "timeout_ms",
}
_STR_OPTIONS = {"parity"}


class BusUrlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BusUrl:
    scheme: str
    path: str = ""
    """device path for serial schemes"""
    host: str = ""
    port: int = 0
    baud: int = 2400
    parity: str = "E"
    bytesize: int = 8
    stopbits: int = 1
    reply_timeout_ms: int = 500
    byte_gap_ms: int = 500
    frame_gap_ms: int = 20
    wakeup: int = 4
    echo: bool = False
    in_flight: int = 1
    timeout_ms: int = 1000
    """Modbus request timeout"""
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> BusUrl:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise BusUrlError(f"bus URL {text!r}: scheme must be one of {', '.join(SCHEMES)}")
        options: dict[str, object] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if key in _INT_OPTIONS:
                try:
                    options[key] = int(value)
                except ValueError:
                    raise BusUrlError(
                        f"bus URL {text!r}: {key}={value!r} is not a number"
                    ) from None
            elif key in _STR_OPTIONS:
                options[key] = value.upper()
            else:
                known = ", ".join(sorted(_INT_OPTIONS | _STR_OPTIONS))
                raise BusUrlError(f"bus URL {text!r}: unknown option {key!r} (known: {known})")
        if "echo" in options:
            options["echo"] = bool(options["echo"])
        if scheme == "modbus+rtu":
            options.setdefault("parity", "N")
            options.setdefault("baud", 9600)
            options.setdefault("wakeup", 0)
        if scheme == "modbus+tcp":
            options.setdefault("wakeup", 0)
        if scheme in ("serial", "modbus+rtu"):
            if parts.netloc or not parts.path:
                raise BusUrlError(f"bus URL {text!r}: write serial:///dev/ttyS2 (three slashes)")
            url = cls(scheme, path=parts.path, text=text, **options)  # type: ignore[arg-type]
        else:
            if not parts.hostname or parts.port is None:
                raise BusUrlError(f"bus URL {text!r}: needs host:port")
            url = cls(scheme, host=parts.hostname, port=parts.port, text=text, **options)  # type: ignore[arg-type]
        url._check()
        return url

    def _check(self) -> None:
        if self.parity not in _PARITIES:
            raise BusUrlError(f"bus URL {self.text!r}: parity must be one of N E O M S")
        if self.baud not in _BAUDS:
            raise BusUrlError(f"bus URL {self.text!r}: baud {self.baud} is not a standard rate")
        if self.bytesize not in (7, 8) or self.stopbits not in (1, 2):
            raise BusUrlError(f"bus URL {self.text!r}: bytesize 7/8 and stopbits 1/2 only")
        if self.in_flight < 1 or (self.scheme == "serial" and self.in_flight != 1):
            raise BusUrlError(f"bus URL {self.text!r}: RS-485 is half-duplex: in_flight=1")
        for name in ("reply_timeout_ms", "byte_gap_ms", "frame_gap_ms", "wakeup", "timeout_ms"):
            if getattr(self, name) < 0:
                raise BusUrlError(f"bus URL {self.text!r}: {name} cannot be negative")

    @property
    def bits_per_byte(self) -> int:
        """Start bit + data bits + parity bit (unless N) + stop bits: 11 for 8E1."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def wire_time(self, nbytes: int) -> float:
        """Seconds the line needs to carry `nbytes` at this bus's baud and framing."""
        return nbytes * self.bits_per_byte / self.baud

    @property
    def is_modbus(self) -> bool:
        return self.scheme.startswith("modbus")

    def __str__(self) -> str:
        return self.text or self.scheme
