"""Bus URLs: how a bus is named in the config and on the command line.

    serial:///dev/ttyS2?baud=2400&parity=E       RS-485 (default 2400 8E1)
    tcp://10.0.0.7:4001?baud=2400                transparent serial server (baud = its line speed)
    modbus+rtu:///dev/ttyUSB0?baud=9600&parity=N Modbus RTU
    modbus+tcp://10.0.0.8:502                    Modbus TCP
    carrier:///dev/ttyS4?mode=hplc               a carrier module (CCO, Q/GDW 1376.2), 9600 8E1
    carrier+tcp://10.0.0.9:4002?mode=point       a carrier module behind a serial server

Timing options (any scheme): reply_timeout_ms (default 500, the standard's Td max),
byte_gap_ms (500, the standard's Tb max), frame_gap_ms (20, quiet time between exchanges),
wakeup (4 FE bytes), echo (0/1: discard our own bytes echoed by the adapter), in_flight (1).

Only a medium that pairs replies with requests may have more than one exchange in flight: a
carrier module (1376.2 SEQ). RS-485 and a transparent serial server carry one half-duplex line.

Carrier options (see docs/carrier.md): mode (hplc | point | router), in_flight (the window of
concurrent AFN F1 F1 requests, default 5, learnt down from deny 109), frames_per_request (645
frames packed in one request, default 6, learnt down from deny 110), main_node (the address to
set with AFN05 F1; default: keep the module's), command_timeout_ms (10000, commands to the
module itself), read_timeout_ms (0: the module's own monitor timeout from AFN03 F10),
busy_wait_s (300: how long a read waits for a busy / forming network), idle_resume_s (30:
routing is resumed after this long without a concentrator-led read), router_wait_s (7200: how
long a router-led request waits for the module to ask for its meter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = ["MODES", "SCHEMES", "BusUrl", "BusUrlError"]

SCHEMES = ("serial", "tcp", "modbus+rtu", "modbus+tcp", "carrier", "carrier+tcp")
MODES = ("hplc", "point", "router")
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
    "frames_per_request",
    "command_timeout_ms",
    "read_timeout_ms",
    "busy_wait_s",
    "idle_resume_s",
    "router_wait_s",
}
_STR_OPTIONS = {"parity", "mode", "main_node"}
_CARRIER_OPTIONS = {
    "mode",
    "main_node",
    "frames_per_request",
    "command_timeout_ms",
    "read_timeout_ms",
    "busy_wait_s",
    "idle_resume_s",
    "router_wait_s",
}


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
    mode: str = ""
    """carrier: hplc (AFN F1 F1, concurrent), point (AFN13 F1, one at a time), router (AFN14)"""
    main_node: str = ""
    """carrier: the main-node address to set (12 hex digits); "" keeps the module's"""
    frames_per_request: int = 6
    command_timeout_ms: int = 10_000
    read_timeout_ms: int = 0
    busy_wait_s: int = 300
    idle_resume_s: int = 30
    router_wait_s: int = 7200
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
                options[key] = value.lower() if key == "mode" else value.upper()
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
        carrier_only = sorted(_CARRIER_OPTIONS & options.keys())
        if scheme.startswith("carrier"):
            # a CCO's serial line: 9600 8E1; 645 frames inside carry no FE preamble (the module
            # sends its own on the power line); the concurrent window starts at 5 (§10 of the
            # reference: the concentrator default) and is learnt down from deny 109
            options.setdefault("baud", 9600)
            options.setdefault("wakeup", 0)
            options.setdefault("mode", "hplc")
            options.setdefault("in_flight", 5 if options["mode"] == "hplc" else 1)
        elif carrier_only:
            raise BusUrlError(
                f"bus URL {text!r}: {', '.join(carrier_only)} only for carrier:// buses"
            )
        if scheme in ("serial", "modbus+rtu", "carrier"):
            if parts.netloc or not parts.path:
                raise BusUrlError(f"bus URL {text!r}: write {scheme}:///dev/ttyS2 (three slashes)")
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
        if self.in_flight < 1:
            raise BusUrlError(f"bus URL {self.text!r}: in_flight must be at least 1")
        if self.in_flight != 1 and not (self.is_carrier and self.mode == "hplc"):
            if self.is_carrier:
                raise BusUrlError(
                    f"bus URL {self.text!r}: mode={self.mode} reads one meter at a time:"
                    " in_flight=1 (only mode=hplc has concurrent requests)"
                )
            medium = {"serial": "RS-485 is half-duplex", "tcp": "a serial server carries one"
                      " half-duplex RS-485 line"}.get(self.scheme, "this bus")  # fmt: skip
            raise BusUrlError(
                f"bus URL {self.text!r}: {medium}: in_flight=1 (only a carrier module pairs"
                " replies with their requests, so only carrier:// buses take in_flight > 1)"
            )
        if self.is_carrier:
            self._check_carrier()
        names = (
            "reply_timeout_ms", "byte_gap_ms", "frame_gap_ms", "wakeup", "timeout_ms",
            "command_timeout_ms", "read_timeout_ms", "busy_wait_s", "idle_resume_s",
            "router_wait_s",
        )  # fmt: skip
        for name in names:
            if getattr(self, name) < 0:
                raise BusUrlError(f"bus URL {self.text!r}: {name} cannot be negative")

    def _check_carrier(self) -> None:
        if self.mode not in MODES:
            raise BusUrlError(f"bus URL {self.text!r}: mode must be one of {', '.join(MODES)}")
        if self.main_node and not re.fullmatch(r"[0-9A-F]{1,12}", self.main_node):
            raise BusUrlError(
                f"bus URL {self.text!r}: main_node={self.main_node!r}: up to 12 hex digits"
            )
        if not 1 <= self.frames_per_request <= 32:
            raise BusUrlError(f"bus URL {self.text!r}: frames_per_request must be 1..32")
        if self.in_flight > 255:
            raise BusUrlError(f"bus URL {self.text!r}: in_flight above 255 (SEQ is one byte)")
        if self.command_timeout_ms < 100:
            raise BusUrlError(f"bus URL {self.text!r}: command_timeout_ms below 100")

    @property
    def bits_per_byte(self) -> int:
        """Start bit + data bits + parity bit (unless N) + stop bits: 11 for 8E1."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def wire_time(self, nbytes: int) -> float:
        """Seconds the line needs to carry `nbytes` at this bus's baud and framing."""
        return nbytes * self.bits_per_byte / self.baud

    @property
    def is_carrier(self) -> bool:
        return self.scheme.startswith("carrier")

    @property
    def is_modbus(self) -> bool:
        return self.scheme.startswith("modbus")

    def __str__(self) -> str:
        return self.text or self.scheme
