"""Serving a fleet inside the caller's event loop: one endpoint per bus.

    async with serve_fleet(fleet, transport="pty") as serving:
        path = serving.endpoint("485-1").path          # open it with pyserial / the agent
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("485-1").address

DL/T 645 buses are served by `simulators.line`; Modbus buses by pymodbus (TCP, or RTU on a pty
pair bridged to the client's pty); carrier buses by a CCO (`simulators.carrier`), one module per
bus for the whole serving (TCP reconnections reach the same module; it powers up when serving
starts): `serving.module("plc-1")`. Leaving the context closes every pty, socket and task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.bus import Bus
from simulators.carrier.module import CarrierModule
from simulators.carrier.serve import serve_carrier_port
from simulators.fleet import Fleet
from simulators.line import LineOptions, Port, Pty, StreamPort, send_paced, serve_port

__all__ = ["Endpoint", "Serving", "serve_fleet"]


@dataclass
class Endpoint:
    bus: str
    protocol: str
    kind: str
    """"pty" | "tcp" | "serial" """
    path: str | None = None
    address: tuple[str, int] | None = None

    def describe(self) -> str:
        where = self.path if self.path is not None else f"{self.address[0]}:{self.address[1]}"  # type: ignore[index]
        return f"{self.bus} ({self.protocol}) {self.kind} {where}"


@dataclass
class Serving:
    fleet: Fleet
    endpoints: list[Endpoint] = field(default_factory=list)
    modules: dict[str, CarrierModule] = field(default_factory=dict)
    """the CCO of each carrier bus, by bus name"""

    def endpoint(self, bus: str) -> Endpoint:
        for e in self.endpoints:
            if e.bus == bus:
                return e
        raise KeyError(f"bus {bus!r} is not served")

    def module(self, bus: str) -> CarrierModule:
        """The CCO serving a carrier bus (its state, and test hooks: reset, drop, restore)."""
        try:
            return self.modules[bus]
        except KeyError:
            raise KeyError(f"bus {bus!r} is not a served carrier bus") from None


@contextlib.asynccontextmanager
async def serve_fleet(
    fleet: Fleet,
    *,
    transport: str = "pty",
    host: str = "127.0.0.1",
    port: int = 0,
    link: Path | None = None,
    serial: str | None = None,
    timing: bool = False,
    trace: Callable[[str], None] | None = None,
    time_scale: float | None = None,
) -> AsyncIterator[Serving]:
    """Serve every bus of `fleet`. `transport` is "pty", "tcp" or "serial".

    tcp: bus n listens on `port` + n (port 0: any free port each). pty: `link` (optional)
    names a symlink to the first bus's pty, later buses get `link`.<bus name>. serial: only
    a one-bus fleet, on device `serial`. `time_scale` overrides every carrier bus's own
    (drawn latencies and module timers × this; line timing is never scaled).
    """
    serving = Serving(fleet)
    async with contextlib.AsyncExitStack() as stack:
        tasks: set[asyncio.Task[Any]] = set()

        async def _cancel_tasks() -> None:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(_cancel_tasks)
        for bus in fleet.buses:
            if bus.protocol == "carrier":
                module = CarrierModule(bus, time_scale=time_scale, trace=trace)
                stack.push_async_callback(module.close)
                module.start()
                serving.modules[bus.name] = module
        for index, bus in enumerate(fleet.buses):
            options = LineOptions(timing=timing, baud=bus.baud, trace=trace)
            if transport == "tcp":
                bus_port = port + index if port else 0
                endpoint = await _tcp(stack, serving, bus, host, bus_port, options)
            elif transport == "pty":
                bus_link = None
                if link is not None:
                    bus_link = link if index == 0 else link.with_name(f"{link.name}.{bus.name}")
                endpoint = await _pty(stack, tasks, serving, bus, bus_link, options)
            elif transport == "serial":
                if serial is None or len(fleet.buses) != 1:
                    raise ValueError("serial serving takes one device and a one-bus fleet")
                endpoint = await _serial(stack, tasks, serving, bus, serial, options)
            else:
                raise ValueError(f"transport is pty, tcp or serial, not {transport!r}")
            serving.endpoints.append(endpoint)
        yield serving


def _serve_line(
    serving_modules: dict[str, CarrierModule], bus: Bus, port: Port, options: LineOptions
) -> Coroutine[Any, Any, None]:
    """The loop that answers on one open line of `bus`."""
    module = serving_modules.get(bus.name)
    if module is not None:
        return serve_carrier_port(module, port, options)
    return serve_port(bus, port, options)


async def _tcp(
    stack: contextlib.AsyncExitStack,
    serving: Serving,
    bus: Bus,
    host: str,
    port: int,
    options: LineOptions,
) -> Endpoint:
    if bus.protocol == "modbus":
        from simulators.modbus import tcp_server

        if port == 0:
            port = _free_port(host)
        modbus_server = tcp_server(bus, host, port)
        await modbus_server.serve_forever(background=True)
        stack.push_async_callback(modbus_server.shutdown)
        return Endpoint(bus.name, bus.protocol, "tcp", address=(host, port))

    connections: set[asyncio.Task[Any]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        line = StreamPort(reader, writer)
        try:
            await _serve_line(serving.modules, bus, line, options)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # shutting down: end quietly (asyncio's stream callback inspects this task)
            pass
        finally:
            line.close()
            connections.discard(task)

    server = await asyncio.start_server(on_connect, host, port)

    async def _close() -> None:
        server.close()
        for t in list(connections):
            t.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    stack.push_async_callback(_close)
    bound = server.sockets[0].getsockname()
    return Endpoint(bus.name, bus.protocol, "tcp", address=(bound[0], bound[1]))


async def _pty(
    stack: contextlib.AsyncExitStack,
    tasks: set[asyncio.Task[Any]],
    serving: Serving,
    bus: Bus,
    link: Path | None,
    options: LineOptions,
) -> Endpoint:
    client_side = Pty(link)
    stack.callback(client_side.close)
    if bus.protocol == "modbus":
        from simulators.modbus import rtu_server

        server_side = Pty()
        stack.callback(server_side.close)
        server = rtu_server(bus, server_side.path, bus.baud)
        await server.serve_forever(background=True)
        stack.push_async_callback(server.shutdown)
        tasks.add(asyncio.create_task(_bridge(client_side, server_side, None), name="to-modbus"))
        paced = bus.baud if options.timing else None
        tasks.add(asyncio.create_task(_bridge(server_side, client_side, paced), name="from-modbus"))
    else:
        tasks.add(
            asyncio.create_task(
                _serve_line(serving.modules, bus, client_side, options), name=f"pty-{bus.name}"
            )
        )
    return Endpoint(bus.name, bus.protocol, "pty", path=client_side.name)


async def _bridge(source: Port, sink: Port, baud: int | None) -> None:
    while data := await source.read():
        if baud is None:
            await sink.write(data)
        else:
            await send_paced(sink, data, baud)


async def _serial(
    stack: contextlib.AsyncExitStack,
    tasks: set[asyncio.Task[Any]],
    serving: Serving,
    bus: Bus,
    device: str,
    options: LineOptions,
) -> Endpoint:
    if bus.protocol == "modbus":
        from simulators.modbus import rtu_server

        server = rtu_server(bus, device, bus.baud)
        await server.serve_forever(background=True)
        stack.push_async_callback(server.shutdown)
        return Endpoint(bus.name, bus.protocol, "serial", path=device)
    import serial_asyncio_fast

    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=device, baudrate=bus.baud, parity="E", bytesize=8, stopbits=1
    )
    line = StreamPort(reader, writer)
    stack.callback(line.close)
    # the device paces the bytes itself: no emulated timing on a real line
    real = LineOptions(timing=False, baud=bus.baud, trace=options.trace)
    tasks.add(
        asyncio.create_task(
            _serve_line(serving.modules, bus, line, real), name=f"serial-{bus.name}"
        )
    )
    return Endpoint(bus.name, bus.protocol, "serial", path=device)


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
