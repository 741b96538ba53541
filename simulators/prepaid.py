"""03H security authentication on a simulated cost-control (费控) meter: the top-up rules.

Local (本地费控) meters keep the wallet; remote (远程费控) meters have an ESAM but no wallet, so
they answer every purchase with SERR 0001 (FW: ``if( !BDMODE ) break; //远程模式``). Order of
the checks of 开户 / 充值, as the firmware comments give them (topup-tariff.md §A.3 step 4):

1. remote mode → 其它错误 (0001), before anything else;
2. secure operations hung up after `LOCK_AFTER` MAC failures today → 挂起 (0100);
3. no valid identity-authentication session → 身份认证失败 (0008);
4. an opened meter with another customer number → 客户编号不匹配 (0010);
5. 开户 on an opened meter → 其它错误 (0001) (the SERR bit is UNCONFIRMED);
   充值 on a meter never opened → 充值次数错误 (0020);
6. MAC1 (amount, count) and MAC2 (customer, amount, count) → ESAM验证失败 (0004), counted;
7. purchase count: meter + 1 → credit; equal → 重复充值 (0002); else → 充值次数错误 (0020);
8. overdraft paid first, then the hoarding limit (0 = none) → 购电超囤积 (0040), nothing changes.

Status query and data read-back need the session too (their MACs are made with the session's
random-1, as the encryption machine's MAC check takes it); 身份认证失效 answers without one.
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
#: requests a hung-up ESAM refuses (reads and 身份认证失效 still answer)
_LOCKABLE = (
    IdentityAuthRequest,
    AuthValidityRequest,
    TopUpRequest,
    AccountOpenRequest,
    WalletInitRequest,
)


def _refuse(flags: SecurityErrorFlags) -> SecurityErrorReply:
    return SecurityErrorReply(flags)


def handle_security(meter: Meter, message: Message, now: dt.datetime) -> Message:
    esam, wallet = meter.esam, meter.wallet
    if esam is None:
        return _refuse(E.OTHER)
    purchase = isinstance(message, TopUpRequest | AccountOpenRequest | WalletInitRequest)
    if purchase and wallet is None:
        return _refuse(E.OTHER)  # remote mode: no wallet in the meter
    if isinstance(message, _LOCKABLE) and esam.suspended(now):
        return _refuse(E.REMOTE_LOCKED)
    energies = meter.importer.tariffs_at(now)
    remaining = wallet.remaining_fen(energies) if wallet is not None else 0
    count = wallet.purchase_count if wallet is not None else 0
    customer = wallet.customer_number if wallet is not None else meter.identity.customer_number
    if isinstance(message, IdentityAuthRequest):
        random2 = esam.authenticate(
            message.ciphertext, message.random, message.diversification, now
        )
        if random2 is None:
            return _refuse(E.AUTH_FAILED)
        return IdentityAuthReply(random2, esam.serial)
    if isinstance(message, AuthEndRequest):
        esam.end()
        return AuthEndReply(customer, remaining, count, _KEY_INFO)
    if esam.active(now) is None:
        return _refuse(E.AUTH_FAILED)
    if isinstance(message, StatusQueryRequest | DataReadbackRequest):
        mac1 = esam.mac(now, esam_mod.LABEL_WALLET, remaining)
        mac2 = esam.mac(now, esam_mod.LABEL_WALLET, count)
        assert mac1 is not None  # the session is active
        assert mac2 is not None
        if isinstance(message, StatusQueryRequest):
            return StatusQueryReply(remaining, mac1, count, mac2, customer, _KEY_INFO)
        data = remaining.to_bytes(4, "little") + mac1 + count.to_bytes(4, "little") + mac2
        return DataReadbackReply(message.identifier, data)
    if isinstance(message, AuthValidityRequest):
        if not esam.verify(now, message.mac, esam_mod.LABEL_VALIDITY, message.minutes):
            return _refuse(E.ESAM_FAILED)
        esam.session_minutes = message.minutes  # for the next sessions
        return SecurityAck(message.DI)
    if isinstance(message, WalletInitRequest):
        assert wallet is not None
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
    if wallet.opened and message.customer_number != wallet.customer_number:
        return _refuse(E.CUSTOMER_MISMATCH)
    if opening and wallet.opened:
        return _refuse(E.OTHER)
    if not opening and not wallet.opened:
        return _refuse(E.PURCHASE_COUNT_ERROR)
    mac1_ok = esam.verify(
        now, message.mac1, esam_mod.LABEL_TOP_UP, message.amount_fen, message.purchase_count
    )
    mac2_ok = mac1_ok and esam.verify(
        now,
        message.mac2,
        esam_mod.LABEL_CUSTOMER,
        message.customer_number,
        message.amount_fen,
        message.purchase_count,
    )
    if not mac2_ok:
        return _refuse(E.ESAM_FAILED)
    if message.purchase_count == wallet.purchase_count:
        return _refuse(E.DUPLICATE_TOP_UP)
    if message.purchase_count != wallet.purchase_count + 1:
        return _refuse(E.PURCHASE_COUNT_ERROR)
    if wallet.would_hoard(message.amount_fen, meter.importer.tariffs_at(now)):
        return _refuse(E.HOARDING_EXCEEDED)
    if opening:
        wallet.customer_number = message.customer_number
        wallet.opened = True
    meter.book_credit(
        message.amount_fen, message.purchase_count, now, "open" if opening else "remote"
    )
    return SecurityAck(message.DI)
