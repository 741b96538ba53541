"""Helpers of the top-up edge tests: an in-process encryption machine behind the central
adapter's interface, and the agent's command executor wired to a simulated fleet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.archive import ArchiveStore
from agent.commands import CommandExecutor
from agent.config import load_config
from central.topup.hsm import IdentityAuth, PurseMacs, SecurityModule
from protocols.payloads import validate
from simulators import Fleet
from simulators.hsm import HsmService
from tests.agent.simenv import SimAgent, sim_agent


class LocalHsm(SecurityModule):
    """`SecurityModule` over the simulator's machine without HTTP (the network adapter has its
    own tests); same answers as ``meterlink sim hsm``."""

    def __init__(self, fleet: Fleet) -> None:
        self.service = HsmService(fleet)

    async def identity_auth(self, meter: str) -> IdentityAuth:
        a = self.service.identity_auth({"meter": meter})
        return IdentityAuth(
            meter,
            bytes.fromhex(a["random1"]),
            bytes.fromhex(a["ciphertext1"]),
            bytes.fromhex(a["diversification"]),
        )

    def _purse(self, answer: dict[str, Any]) -> PurseMacs:
        return PurseMacs(
            bytes.fromhex(answer["data"]),
            bytes.fromhex(answer["mac1"]),
            bytes.fromhex(answer["mac2"]),
        )

    async def increase_purse(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        return self._purse(
            self.service.increase_purse(
                {"meter": meter, "random2": random2.hex(), "amount_fen": amount_fen,
                 "purchase_count": purchase_count, "customer": customer}
            )
        )  # fmt: skip

    async def open_account(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        return self._purse(
            self.service.open_account(
                {"meter": meter, "random2": random2.hex(), "amount_fen": amount_fen,
                 "purchase_count": purchase_count, "customer": customer}
            )
        )  # fmt: skip

    async def user_control(
        self, meter: str, random2: bytes, esam_serial: bytes, plain: bytes
    ) -> bytes:
        answer = self.service.user_control(
            {"meter": meter, "random2": random2.hex(), "esam_serial": esam_serial.hex(),
             "plain": plain.hex()}
        )  # fmt: skip
        return bytes.fromhex(answer["ciphertext"])

    async def mac_check(self, meter: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        answer = self.service.mac_check(
            {"meter": meter, "random1": random1.hex(), "data": data.hex(), "mac": mac.hex()}
        )
        return bool(answer["valid"])

    async def auth_validity(self, meter: str, random2: bytes, minutes: int) -> bytes:
        answer = self.service.auth_validity(
            {"meter": meter, "random2": random2.hex(), "minutes": minutes}
        )
        return bytes.fromhex(answer["data"])

    async def parameter_update(
        self, meter: str, random2: bytes, di: int, plain: bytes, *, cipher: bool
    ) -> bytes:
        answer = self.service.parameter_update(
            {"meter": meter, "random2": random2.hex(), "di": f"{di:08X}", "plain": plain.hex(),
             "cipher": cipher}
        )  # fmt: skip
        return bytes.fromhex(answer["data"])


class Executor:
    """The agent's `CommandExecutor` on a simulated fleet; every reply is checked against the
    ``meterlink.response/1`` schema as the MQTT link would."""

    def __init__(self, sa: SimAgent, run: CommandExecutor) -> None:
        self.sa = sa
        self.run = run

    async def __call__(
        self, command: str, meter: str | None, args: dict[str, Any]
    ) -> dict[str, Any]:
        cmd: dict[str, Any] = {"command": command, "args": args}
        if meter is not None:
            cmd["meter"] = meter
        reply = await self.run(cmd)
        validate("response", {"schema": "meterlink.response/1", "concentrator": "c-test", **reply})
        return reply


@contextlib.asynccontextmanager
async def security_agent(fleet_toml: str, tmp_path: Path) -> AsyncIterator[Executor]:
    async with sim_agent(fleet_toml, tmp_path) as sa:
        meters = "".join(
            f'[[archive.meters]]\naddress = "{m.identity.meter_id}"\nbus = "{m.identity.bus}"\n'
            f'protocol = "{m.identity.protocol}"\n'
            for m in sa.fleet.meters()
        )
        path = tmp_path / "agent.toml"
        path.write_text(
            f'[agent]\nconcentrator = "c-test"\nstate_dir = "{tmp_path}"\n'
            '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:1"\n' + meters
        )
        store = ArchiveStore(load_config(path))

        async def on_change() -> None:
            return None

        yield Executor(sa, CommandExecutor(sa.ctx, store, on_change))
