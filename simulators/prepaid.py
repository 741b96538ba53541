"""03H security authentication on a simulated cost-control meter: the top-up rules.

Order of the checks, as the 2013 rules and the firmware comments describe them: a valid
identity-authentication session, an opened account, the customer number, the MACs (simulated
ESAM), then the purchase count (meter count + 1; equal = duplicate top-up, anything else =
purchase-count error), then the hoarding limit.
"""

from __future__ import annotations

import datetime as dt

from protocols.dlt645 import (
    AccountOpenRequest,
    AuthEndReply,
    AuthEndRequest,
    AuthValidityRequest,
    DataReadbackReply,
    DataReadbackRequest,
    IdentityAuthReply,
    IdentityAuthRequest,
    Message,
    SecurityAck,
    SecurityErrorFlags,
    SecurityErrorReply,
    StatusQueryReply,
    StatusQueryRequest,
    TopUpRequest,
    WalletInitRequest,
)
from simulators import esam as esam_mod
from simulators.meter import Meter

__all__ = ["handle_security"]

_KEY_INFO = b"\x00\x00\x00\x00"
E = SecurityErrorFlags


def _refuse(flags: SecurityErrorFlags) -> SecurityErrorReply:
    return SecurityErrorReply(flags)


def handle_security(meter: Meter, message: Message, now: dt.datetime) -> Message:
    esam, wallet = meter.esam, meter.wallet
    if esam is None or wallet is None:
        return _refuse(E.OTHER)
    energies = meter.importer.tariffs_at(now)
    if isinstance(message, IdentityAuthRequest):
        random2 = esam.authenticate(
            message.ciphertext, message.random, message.diversification, now
        )
        if random2 is None:
            return _refuse(E.AUTH_FAILED)
        return IdentityAuthReply(random2, esam.serial)
    if isinstance(message, AuthEndRequest):
        esam.end()
        return AuthEndReply(
            wallet.customer_number,
            wallet.remaining_fen(energies),
            wallet.purchase_count,
            _KEY_INFO,
        )
    if isinstance(message, StatusQueryRequest):
        remaining = wallet.remaining_fen(energies)
        return StatusQueryReply(
            remaining,
            esam.mac(now, esam_mod.LABEL_WALLET, remaining),
            wallet.purchase_count,
            esam.mac(now, esam_mod.LABEL_WALLET, wallet.purchase_count),
            wallet.customer_number,
            _KEY_INFO,
        )
    if isinstance(message, DataReadbackRequest):
        remaining = wallet.remaining_fen(energies)
        data = (
            remaining.to_bytes(4, "little")
            + esam.mac(now, esam_mod.LABEL_WALLET, remaining)
            + wallet.purchase_count.to_bytes(4, "little")
            + esam.mac(now, esam_mod.LABEL_WALLET, wallet.purchase_count)
        )
        return DataReadbackReply(message.identifier, data)
    if esam.active(now) is None:
        return _refuse(E.AUTH_FAILED)
    if isinstance(message, AuthValidityRequest):
        if not esam.verify(now, message.mac, esam_mod.LABEL_VALIDITY, message.minutes):
            return _refuse(E.ESAM_FAILED)
        esam.session_minutes = message.minutes
        return SecurityAck(message.DI)
    if isinstance(message, WalletInitRequest):
        ok = esam.verify(
            now, message.mac1, esam_mod.LABEL_WALLET, message.preset_fen
        ) and esam.verify(now, message.mac2, esam_mod.LABEL_WALLET, message.purchase_count)
        if not ok:
            return _refuse(E.ESAM_FAILED)
        if message.purchase_count != 0:
            return _refuse(E.PURCHASE_COUNT_ERROR)
        wallet.set_balance(message.preset_fen, energies)
        wallet.purchase_count = 0
        wallet.total_fen = 0
        wallet.records.clear()
        wallet.opened = False
        return SecurityAck(message.DI)
    if isinstance(message, TopUpRequest | AccountOpenRequest):
        return _purchase(meter, message, now)
    return _refuse(E.OTHER)


def _purchase(
    meter: Meter, message: TopUpRequest | AccountOpenRequest, now: dt.datetime
) -> Message:
    esam, wallet = meter.esam, meter.wallet
    assert esam is not None
    assert wallet is not None
    opening = isinstance(message, AccountOpenRequest)
    if not opening and not wallet.opened:
        return _refuse(E.OTHER)
    if not (opening and not wallet.opened) and message.customer_number != wallet.customer_number:
        return _refuse(E.CUSTOMER_MISMATCH)
    mac1_ok = esam.verify(
        now, message.mac1, esam_mod.LABEL_TOP_UP, message.amount_fen, message.purchase_count
    )
    mac2_ok = esam.verify(
        now,
        message.mac2,
        esam_mod.LABEL_CUSTOMER,
        message.customer_number,
        message.amount_fen,
        message.purchase_count,
    )
    if not (mac1_ok and mac2_ok):
        return _refuse(E.ESAM_FAILED)
    if message.purchase_count == wallet.purchase_count:
        return _refuse(E.DUPLICATE_TOP_UP)
    if message.purchase_count != wallet.purchase_count + 1:
        return _refuse(E.PURCHASE_COUNT_ERROR)
    energies = meter.importer.tariffs_at(now)
    if wallet.would_hoard(message.amount_fen, energies):
        return _refuse(E.HOARDING_EXCEEDED)
    if opening:
        wallet.customer_number = message.customer_number
        wallet.opened = True
    wallet.credit(message.amount_fen, message.purchase_count, energies, now)
    meter.tick()
    return SecurityAck(message.DI)
