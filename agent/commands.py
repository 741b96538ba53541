"""Execute commands from the centre: read now (点抄), time sync, relay control, raw frames,
archive updates, a tariff set-up read now, and the 03H / 1CH security steps of remote top-up
(`agent.security`). The MQTT link authenticates them and carries the reply; this module turns a
verified command into bus work (ahead of plan work) and a reply with the decoded result and the
raw frames exchanged."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.archive import ArchiveStore, ArchiveUpdateError
from agent.config import MeterConfig, TariffPlan
from agent.dlt645 import Dlt645Client, reason_of
from agent.plans.clock import read_meter_clock
from agent.plans.context import PlanContext, edition_of
from agent.plans.tariff import TariffPlanner
from agent.poller import PRIORITY_COMMAND
from agent.security import SecurityCommand, SecurityRefused, StepsFailed
from protocols.dlt645 import (
    BROADCAST,
    Address,
    BroadcastTimeRequest,
    RelayAction,
    RemoteControlRequest,
    SecureRemoteControlRequest,
    describe,
    format_di,
    hex_spaced,
    parse_item,
    values_of,
)
from protocols.errors import LocalProtocolError

__all__ = ["CommandExecutor", "CommandRefused"]

log = logging.getLogger(__name__)


class CommandRefused(ValueError):
    """A command that cannot be executed as given (unknown meter, bad argument)."""


def _frames(frames: list[tuple[str, bytes]]) -> list[dict[str, str]]:
    return [{"dir": d, "hex": hex_spaced(b)} for d, b in frames]


def _hex(value: Any, name: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(str(value).replace(" ", ""))
    except ValueError:
        raise CommandRefused(f"{name}: not hex") from None
    if size is not None and len(raw) != size:
        raise CommandRefused(f"{name}: {size} bytes expected, got {len(raw)}")
    return raw


class CommandExecutor:
    def __init__(
        self,
        ctx: PlanContext,
        archive: ArchiveStore,
        on_archive_change: Callable[[], Awaitable[None]],
        *,
        tariff: TariffPlan | None = None,
    ) -> None:
        self.ctx = ctx
        self.tariff = TariffPlanner(tariff or TariffPlan(), ctx)
        """the ``tariff`` command reads a set-up now, as the tariff plan would"""
        self.archive = archive
        self.on_archive_change = on_archive_change
        self.security = SecurityCommand(ctx.clock.now)
        """the ``security`` command and the identity authentications it ran, per meter"""

    async def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        name = str(command.get("command"))
        reply: dict[str, Any] = {"command": name}
        if "meter" in command:
            reply["meter"] = command["meter"]
        frames: list[tuple[str, bytes]] = []
        args = command.get("args") or {}
        try:
            handler = getattr(self, f"_cmd_{name}", None)
            if handler is None:
                raise CommandRefused(f"unknown command {name!r}")
            result = await handler(command, args, frames)
        except StepsFailed as exc:
            reply.update(ok=False, reason=exc.reason, detail=exc.detail, result=exc.result)
        except (CommandRefused, SecurityRefused, ArchiveUpdateError, LocalProtocolError) as exc:
            reply.update(ok=False, reason="invalid", detail=str(exc))
        except Exception as exc:
            reason, detail = reason_of(exc)
            reply.update(ok=False, reason=reason.value, detail=detail)
        else:
            reply.update(ok=True, result=result)
        reply["frames"] = _frames(frames)
        log.info(
            "command %s: %s",
            name,
            "ok" if reply["ok"] else reply.get("reason"),
            extra={"meter": command.get("meter")},
        )
        return reply

    def _meter(self, command: dict[str, Any]) -> MeterConfig:
        mid = command.get("meter")
        meter = self.archive.current.get(str(mid)) if mid is not None else None
        if meter is None:
            raise CommandRefused(f"meter {mid!r} is not in this concentrator's archive")
        if meter.protocol == "modbus":
            raise CommandRefused("only DL/T 645 meters take this command")
        return meter

    async def _on_bus(self, bus: str, job: Callable[[Dlt645Client], Awaitable[Any]]) -> Any:
        return await self.ctx.poller_for(bus).submit(job, priority=PRIORITY_COMMAND)

    async def _cmd_read(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        meter = self._meter(command)
        edition = edition_of(meter.protocol)
        items = args.get("items")
        if not isinstance(items, list) or not items:
            raise CommandRefused("args.items: a non-empty list of DIs (hex) or measurement names")
        dis = [parse_item(str(i), edition) for i in items]
        assert meter.address is not None
        address = Address.parse(meter.address)

        async def job(client: Dlt645Client) -> dict[str, Any]:
            out: dict[str, Any] = {}
            # a carrier module takes the items in one exchange; elsewhere one read at a time
            packed = await client.read_many(address, dis, edition) if client.packs_reads else None
            for n, (item, di) in enumerate(zip(items, dis, strict=True)):
                key = format_di(di, edition)
                try:
                    result = (
                        packed[n] if packed is not None else await client.read(address, di, edition)
                    )
                    if isinstance(result, Exception):
                        raise result
                except Exception as exc:
                    reason, detail = reason_of(exc)
                    out[key] = {"item": item, "error": {"reason": reason.value, "detail": detail}}
                    continue
                frames.extend(result.frames)
                out[key] = {"item": item, "values": values_of(di, result.value, edition)}
            return out

        return {"items": await self._on_bus(meter.bus, job)}

    async def _cmd_time_sync(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        """Broadcast 08H on a bus (args.bus, or the meter's bus) and read the meter's clock back."""
        meter = self._meter(command) if "meter" in command else None
        bus = meter.bus if meter else str(args.get("bus", ""))
        if bus not in self.ctx.pollers:
            raise CommandRefused("time_sync needs a meter or args.bus naming a bus")
        when = args.get("time")
        now = self.ctx.clock.now()
        target = dt.datetime.fromisoformat(when) if when else now

        async def job(client: Dlt645Client) -> dict[str, Any]:
            await client.call(
                BROADCAST,
                BroadcastTimeRequest(target.replace(tzinfo=None, microsecond=0)),
                frames=frames,
            )
            if meter is None:
                return {"bus": bus, "sent": target.isoformat(timespec="seconds")}
            assert meter.address is not None
            meter_time, offset = await read_meter_clock(
                client, Address.parse(meter.address), edition_of(meter.protocol), self.ctx.clock.now
            )
            return {
                "bus": bus,
                "sent": target.isoformat(timespec="seconds"),
                "meter_time": meter_time.isoformat(),
                "offset_s": round(offset, 3),
            }

        return await self._on_bus(bus, job)

    async def _cmd_relay(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        meter = self._meter(command)
        assert meter.address is not None
        address = Address.parse(meter.address)
        operator = _hex(args.get("operator", "00000000"), "operator", 4)
        message: RemoteControlRequest | SecureRemoteControlRequest
        if "ciphertext" in args:
            message = SecureRemoteControlRequest(
                _hex(args["ciphertext"], "ciphertext", 20),
                _hex(args.get("password", "98000000"), "password", 4),
                operator,
            )
        else:
            try:
                action = RelayAction[str(args.get("action", "")).upper()]
            except KeyError:
                names = ", ".join(a.name.lower() for a in RelayAction)
                raise CommandRefused(f"args.action must be one of {names}") from None
            until = args.get("valid_until")
            valid_until = (
                dt.datetime.fromisoformat(until)
                if until
                else self.ctx.clock.now() + dt.timedelta(minutes=10)
            )
            message = RemoteControlRequest(
                action,
                valid_until.replace(tzinfo=None, microsecond=0),
                _hex(args.get("password", "02000000"), "password", 4),
                operator,
            )

        async def job(client: Dlt645Client) -> dict[str, Any]:
            await client.call(address, message, frames=frames)
            status = await client.read(address, 0x04000503)  # running status word 3: relay bits
            frames.extend(status.frames)
            word = status.measurements[0]
            return {"status_word_3": word.as_json(), "relay_open": "relay_open" in word.flags}

        return await self._on_bus(meter.bus, job)

    async def _cmd_raw(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        """Technician pass-through: send these bytes on a bus, return what came back, decoded."""
        bus = str(args.get("bus") or (self._meter(command).bus if "meter" in command else ""))
        if bus not in self.ctx.pollers:
            raise CommandRefused("raw needs args.bus (or a meter) naming a bus")
        raw = _hex(args.get("hex", ""), "hex")
        if not raw:
            raise CommandRefused("args.hex: the frame to send")

        async def job(client: Dlt645Client) -> dict[str, Any]:
            frames.append(("tx", raw))
            # RS-485: the bytes on the line; a carrier bus carries one 645 request to its meter
            received, sink = await client.raw_exchange(raw)
            frames.append(("rx", received))
            return {
                "replies": [describe(f) for f in sink.frames],
                "errors": [f"{type(e).__name__}: {e}" for e in sink.errors],
            }

        return await self._on_bus(bus, job)

    async def _cmd_security(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        """03H security steps and level-98 1CH, relayed verbatim (agent.security)."""
        meter = self._meter(command)
        return await self.security.run(
            meter, args, frames, lambda job: self._on_bus(meter.bus, job)
        )

    async def _cmd_tariff(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        """Read the meter's tariff set-up now (ahead of plan work), publish it as a ``tariff``
        payload (reason ``command``) and reply with it."""
        meter = self._meter(command)
        if meter.protocol != "dlt645-2007":
            raise CommandRefused("only DL/T 645-2007 meters keep a tariff set-up")
        return await self.tariff.read_now(meter, "command", priority=PRIORITY_COMMAND)

    async def _cmd_archive_update(
        self, command: dict[str, Any], args: dict[str, Any], frames: list[tuple[str, bytes]]
    ) -> Any:
        archive = self.archive.apply_update(args)
        await self.on_archive_change()
        return {"version": archive.version, "meters": len(archive.meters)}
