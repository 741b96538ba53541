"""The software encryption machine over the network: `meterlink sim hsm` (and `serve_hsm` in the
test's loop) driven through the central adapter `NetworkHsm` — every call, the MACs the meters
accept, error codes to reasons, and injected outages (error, hang, dropped connection)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.topup.hsm import (
    HsmRefused,
    HsmUnavailable,
    NetworkHsm,
    SecurityModule,
    load_security_module,
)
from protocols.dlt645 import (
    Done,
    IdentityAuthReply,
    IdentityAuthRequest,
    SecureRemoteControlRequest,
    SecurityAck,
    SecurityRequest,
    StatusQueryReply,
    StatusQueryRequest,
    TopUpRequest,
    WriteRequest,
)
from protocols.dlt645.security import DI_TOP_UP
from protocols.dlt645.tariff import encode_period_table, encode_prices
from protocols.tariff_write import machine_plaintext, writable_items
from protocols.topup import SecurityReason, relay_plaintext
from simulators import Fleet
from simulators.hsm import HsmService, serve_hsm
from tests.fixtures.processes import HsmProcess
from tests.fixtures.services import free_port
from tests.simulators.conftest import FLEET, PREPAID, START, DirectMaster, make_fleet

OP = b"\0\0\0\0"


@pytest.fixture
async def machine() -> AsyncIterator[tuple[Fleet, HsmService, NetworkHsm]]:
    fleet = make_fleet()
    async with serve_hsm(fleet) as (service, url), NetworkHsm(url, timeout_s=5) as hsm:
        yield fleet, service, hsm


async def test_every_call_makes_what_the_meter_accepts(
    machine: tuple[Fleet, HsmService, NetworkHsm],
) -> None:
    fleet, _, hsm = machine
    meter = fleet.meter(PREPAID)
    wallet = meter.wallet
    assert wallet is not None
    direct = DirectMaster(fleet.bus("b1"))
    auth = await hsm.identity_auth(PREPAID)
    assert auth.diversification == b"\0\0" + bytes.fromhex(PREPAID)[::-1]
    _, reply = await direct.one(PREPAID, SecurityRequest(0x070000FF, OP, auth.data))
    assert isinstance(reply, IdentityAuthReply)
    random2, serial = reply.random, reply.esam_serial
    n = wallet.purchase_count
    macs = await hsm.increase_purse(
        PREPAID, random2, amount_fen=4200, purchase_count=n + 1, customer=wallet.customer_number
    )
    # `data` is the request's layout after DI + operator: the codec reads it back
    request = TopUpRequest.parse(OP + macs.data)
    assert isinstance(request, TopUpRequest)
    assert (request.amount_fen, request.purchase_count, request.mac1, request.mac2) == (
        4200,
        n + 1,
        macs.mac1,
        macs.mac2,
    )
    _, ack = await direct.one(PREPAID, SecurityRequest(DI_TOP_UP, OP, macs.data))
    assert isinstance(ack, SecurityAck)
    assert wallet.purchase_count == n + 1
    # read-back MACs check out with random-1; forged data does not
    _, status = await direct.one(PREPAID, StatusQueryRequest(OP))
    assert isinstance(status, StatusQueryReply)
    count = status.purchase_count.to_bytes(4, "little")
    assert await hsm.mac_check(PREPAID, auth.random1, count, status.mac2)
    assert not await hsm.mac_check(PREPAID, auth.random1, count, status.mac1)
    # relay ciphertext (UserControl) for this ESAM serial
    cipher = await hsm.user_control(
        PREPAID, random2, serial, relay_plaintext("trip", START + dt.timedelta(minutes=5))
    )
    _, done = await direct.one(PREPAID, SecureRemoteControlRequest(cipher))
    assert meter.relay.open, done
    assert len(await hsm.auth_validity(PREPAID, random2, 30)) == 6
    opening = await hsm.open_account(
        PREPAID, random2, amount_fen=1, purchase_count=1, customer="123"
    )
    assert opening.data[-10:-4] == bytes.fromhex("000000000123")[::-1]


async def test_errors_are_typed_with_their_reasons(
    machine: tuple[Fleet, HsmService, NetworkHsm],
) -> None:
    _, service, hsm = machine
    with pytest.raises(HsmRefused) as refused:
        await hsm.increase_purse(
            PREPAID, b"\0" * 3, amount_fen=1, purchase_count=1, customer="1"
        )  # random-2 is 4 bytes
    assert (refused.value.code, refused.value.reason) == (165, SecurityReason.HSM_ENCRYPT_FAILED)
    assert not refused.value.retryable
    with pytest.raises(HsmRefused):
        await hsm.identity_auth("not-a-meter")
    for code, reason, kind in (
        (171, SecurityReason.HSM_FAULT, HsmRefused),
        (167, SecurityReason.HSM_MAC_FAILED, HsmRefused),
        (161, SecurityReason.HSM_PERMISSION, HsmRefused),
        (160, SecurityReason.HSM_UNAVAILABLE, HsmUnavailable),
        (4242, SecurityReason.HSM_ERROR, HsmRefused),
    ):
        service.fail(code, calls=1)
        with pytest.raises(kind) as failed:
            await hsm.identity_auth(PREPAID)
        assert (failed.value.code, failed.value.reason) == (code, reason)
    assert (await hsm.identity_auth(PREPAID)).random1  # the outage lasted one call each


async def test_outage_hang_and_dropped_connections(
    machine: tuple[Fleet, HsmService, NetworkHsm],
) -> None:
    _, service, hsm = machine
    # long enough for a served call on a loaded machine; each hang costs it
    async with NetworkHsm(hsm.url, timeout_s=1.5) as quick:
        service.fail(mode="hang")
        with pytest.raises(HsmUnavailable) as hung:
            await quick.identity_auth(PREPAID)
        assert hung.value.reason is SecurityReason.HSM_UNAVAILABLE
        assert hung.value.retryable
        service.fail(mode="close")
        with pytest.raises(HsmUnavailable):
            await quick.identity_auth(PREPAID)
        service.heal()
        assert (await quick.identity_auth(PREPAID)).ciphertext1
        # an outage of one call: that call hangs till its timeout, the next one is served
        service.fail(mode="hang", calls=1)
        with pytest.raises(HsmUnavailable):
            await quick.identity_auth(PREPAID)
        assert (await quick.identity_auth(PREPAID)).ciphertext1
    assert service.failures["identity-auth"] == 3


async def test_nobody_listening_is_unavailable() -> None:
    async with NetworkHsm(f"http://127.0.0.1:{free_port()}", timeout_s=2) as hsm:
        with pytest.raises(HsmUnavailable) as down:
            await hsm.identity_auth(PREPAID)
    assert down.value.code == 160


def test_the_registry_point() -> None:
    hsm = load_security_module("network", {"url": "http://127.0.0.1:1"})
    assert isinstance(hsm, NetworkHsm)
    same = load_security_module(
        "central.topup.hsm:NetworkHsm", {"url": "http://h:1", "timeout_s": 3}
    )
    assert isinstance(same, NetworkHsm)
    assert same.timeout_s == 3
    vendor = load_security_module(f"{__name__}:VendorMachine", {"label": "x"})
    assert isinstance(vendor, VendorMachine)
    with pytest.raises(ValueError, match="module:Class"):
        load_security_module("central.topup.hsm")
    with pytest.raises(ValueError, match="not a SecurityModule"):
        load_security_module("central.topup.hsm:IdentityAuth")
    with pytest.raises(ValueError, match="unexpected keyword"):
        load_security_module("network", {"url": "http://h:1", "port": 3})
    with pytest.raises(ImportError):
        load_security_module("no_such_vendor.hsm:Machine")
    with pytest.raises(ValueError, match="http"):
        NetworkHsm("127.0.0.1:1")


class VendorMachine(SecurityModule):
    """What a vendor adapter looks like: the abstract calls, nothing else required."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def identity_auth(self, meter: str) -> Any:
        raise HsmUnavailable("not wired")

    async def increase_purse(self, meter: str, random2: bytes, **kw: Any) -> Any:
        raise HsmUnavailable("not wired")

    async def open_account(self, meter: str, random2: bytes, **kw: Any) -> Any:
        raise HsmUnavailable("not wired")

    async def user_control(
        self, meter: str, random2: bytes, esam_serial: bytes, plain: bytes
    ) -> bytes:
        raise HsmUnavailable("not wired")

    async def mac_check(self, meter: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        raise HsmUnavailable("not wired")


async def test_sim_hsm_process_with_an_outage(tmp_path: Path) -> None:
    """`meterlink sim hsm` as its own process: it serves the fleet file's key, and an outage
    injected over its control endpoint turns into typed errors for the adapter."""
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    fleet = make_fleet()
    direct = DirectMaster(fleet.bus("b1"))
    async with HsmProcess.serving(fleet_file, tmp_path) as process:
        async with NetworkHsm(process.url, timeout_s=10) as hsm:
            auth = await hsm.identity_auth(PREPAID)
            _, reply = await direct.one(
                PREPAID,
                IdentityAuthRequest(OP, auth.ciphertext1, auth.random1, auth.diversification),
            )
            assert isinstance(reply, IdentityAuthReply)  # the same key as the fleet's meters
            async with aiohttp.ClientSession() as http:
                async with http.put(
                    f"{process.url}/v1/control/outage", json={"code": 171, "calls": 2}
                ) as r:
                    assert r.status == 200
                for _ in range(2):
                    with pytest.raises(HsmRefused) as fault:
                        await hsm.identity_auth(PREPAID)
                    assert fault.value.reason is SecurityReason.HSM_FAULT
                assert (await hsm.identity_auth(PREPAID)).random1
                async with http.get(f"{process.url}/v1/control/stats") as r:
                    stats = await r.json()
                assert (stats["calls"]["identity-auth"], stats["failures"]["identity-auth"]) == (
                    4,
                    2,
                )
        assert await process.process.stop() == 0


async def test_parameter_update_makes_writes_the_meter_takes(
    machine: tuple[Fleet, HsmService, NetworkHsm],
) -> None:
    fleet, _, hsm = machine
    meter = fleet.meter(PREPAID)
    assert meter.tariff is not None
    direct = DirectMaster(fleet.bus("b1"))
    auth = await hsm.identity_auth(PREPAID)
    _, reply = await direct.one(PREPAID, SecurityRequest(0x070000FF, OP, auth.data))
    assert isinstance(reply, IdentityAuthReply)
    setup = meter.tariff.programmed
    items = writable_items(setup)
    # 二类 (level 98): a daily table, ciphertext + MAC
    table = 0x04020001
    periods = tuple(reversed(setup.sets[1].tables[1]))
    value = encode_period_table(periods)
    data = await hsm.parameter_update(
        PREPAID, reply.random, table, machine_plaintext(table, value), cipher=True
    )
    _, done = await direct.one(PREPAID, WriteRequest(table, b"\x98\0\0\0", data, OP))
    assert isinstance(done, Done), done
    assert meter.tariff.programmed.sets[1].tables[1][: len(periods)] == periods
    # 一类 (level 99): the backup prices, plaintext + MAC (the machine gets the APDU 04D6840414)
    if setup.prices_backup is not None:
        prices = encode_prices([p + 1 for p in setup.prices_backup])
        data = await hsm.parameter_update(PREPAID, reply.random, 0x040502FF, prices, cipher=False)
        assert data[: len(prices)] == prices
        _, done = await direct.one(PREPAID, WriteRequest(0x040502FF, b"\x99\0\0\0", data, OP))
        assert isinstance(done, Done), done
        assert items[0x040502FF] != encode_prices(meter.tariff.programmed.prices_backup or ())
    # a plaintext whose length disagrees with the APDU's LC is refused by the machine (165)
    with pytest.raises(HsmRefused):
        await hsm.parameter_update(PREPAID, reply.random, 0x040502FF, b"\1\2", cipher=False)
