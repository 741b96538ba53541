"""A vendor encryption machine plugged in through `[topup] hsm = "module:Class"` (the registry
point) whose top-up MACs the meter does not accept: §E #10, ESAM failures that repeat."""

from __future__ import annotations

from central.topup.hsm import NetworkHsm, PurseMacs


class CorruptMacHsm(NetworkHsm):
    async def increase_purse(
        self, meter: str, random2: bytes, *, amount_fen: int, purchase_count: int, customer: str
    ) -> PurseMacs:
        macs = await super().increase_purse(
            meter, random2, amount_fen=amount_fen, purchase_count=purchase_count,
            customer=customer,
        )  # fmt: skip
        data = bytearray(macs.data)
        data[8] ^= 0x01  # MAC1 (after amount and count) no longer matches
        return PurseMacs(bytes(data), macs.mac1, macs.mac2)
