"""03H security authentication (State-Grid 费控 extension): remote top-up and its steps.

    request : DI(4) + operator(4) + fields        normal reply 83: DI(4) [+ fields]
                                                  abnormal reply C3: SERR (2 bytes)

Amounts and purchase counts inside 03H are 4-byte binary, low byte first, amounts in fen
(0.01 yuan) — see ``docs/dlt645.md`` (Sources and confidence: UNCONFIRMED against the official
text). MACs, ciphertexts and random numbers come from the utility's encryption machine; this
module only lays them out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntFlag
from typing import Any, ClassVar

import construct as cs

from protocols.dlt645 import _wire
from protocols.dlt645.formats import Digits
from protocols.dlt645.functions import Edition
from protocols.dlt645.messages import (
    _ABNORMAL,
    Message,
    di_bytes,
    flag_names,
    four,
    need,
    read_di,
    register,
)
from protocols.errors import LocalProtocolError, MeterRejection, PayloadError

__all__ = [
    "AccountOpenRequest",
    "AuthEndReply",
    "AuthEndRequest",
    "AuthValidityRequest",
    "DataReadbackReply",
    "DataReadbackRequest",
    "IdentityAuthReply",
    "IdentityAuthRequest",
    "SecurityAck",
    "SecurityErrorFlags",
    "SecurityErrorReply",
    "SecurityRejection",
    "SecurityReply",
    "SecurityRequest",
    "StatusQueryReply",
    "StatusQueryRequest",
    "TopUpRequest",
    "WalletInitRequest",
]

_CODE = {Edition.V2007: 0x03}

DI_IDENTITY_AUTH = 0x070000FF
DI_AUTH_VALIDITY = 0x070001FF
DI_AUTH_END = 0x070002FF
DI_ACCOUNT_OPEN = 0x070101FF
DI_TOP_UP = 0x070102FF
DI_WALLET_INIT = 0x070103FF
DI_DATA_READBACK = 0x078001FF
DI_STATUS_QUERY = 0x078102FF


class SecurityErrorFlags(IntFlag):
    """SERR word of 03H abnormal replies (2 bytes, low byte first)."""

    OTHER = 0x0001
    DUPLICATE_TOP_UP = 0x0002
    ESAM_FAILED = 0x0004
    AUTH_FAILED = 0x0008
    CUSTOMER_MISMATCH = 0x0010
    PURCHASE_COUNT_ERROR = 0x0020
    HOARDING_EXCEEDED = 0x0040
    ADDRESS_ERROR = 0x0080  # firmware extension (数据比对 地址异常)
    REMOTE_LOCKED = 0x0100  # firmware extension (远程安全认证锁住)


class SecurityRejection(MeterRejection):
    def __init__(self, flags: SecurityErrorFlags) -> None:
        names = flag_names(flags)
        super().__init__(
            f"meter rejected 03H: SERR={int(flags):04X} {', '.join(names) or 'no flag set'}",
            int(flags),
            names,
        )
        self.flags = flags
        # a lapsed identity session is cured by authenticating again; nothing else is
        self.retryable = flags == SecurityErrorFlags.AUTH_FAILED


@dataclass(frozen=True, slots=True)
class SecurityErrorReply(Message):
    flags: SecurityErrorFlags
    CODE: ClassVar[dict[Edition, int]] = _CODE
    REPLY: ClassVar[bool] = True
    ABNORMAL: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        if not 0 <= int(self.flags) <= 0xFFFF:
            raise LocalProtocolError(f"SERR word {int(self.flags):#x} does not fit two bytes")
        return int(self.flags).to_bytes(2, "little")

    @property
    def flag_names(self) -> tuple[str, ...]:
        return flag_names(self.flags)

    def error(self) -> SecurityRejection:
        return SecurityRejection(self.flags)


def _security_abnormal(data: bytes, edition: Edition, code: int) -> Message:
    need(data, 2, "03H abnormal reply (SERR)")
    return SecurityErrorReply(SecurityErrorFlags(int.from_bytes(data, "little")))


_ABNORMAL[(Edition.V2007, 0x03)] = _security_abnormal


class _DigitsAdapter(cs.Adapter):  # type: ignore[misc]
    """6-byte BCD digit string, low byte first <-> nameplate-order text."""

    _fmt = Digits(6)

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return self._fmt.decode(obj)

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return self._fmt.encode(obj)


_CUSTOMER = _DigitsAdapter(cs.Bytes(6))


class _Layout(Message):
    """A 03H message whose fields after the DI follow a construct Struct (`LAYOUT`)."""

    DI: ClassVar[int]
    LAYOUT: ClassVar[cs.Construct]
    CODE: ClassVar[dict[Edition, int]] = _CODE

    def payload(self, edition: Edition) -> bytes:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        try:
            body = self.LAYOUT.build(values)
        except (cs.ConstructError, ValueError, TypeError) as exc:
            raise LocalProtocolError(f"{type(self).__name__}: {exc}") from None
        return self.DI.to_bytes(4, "little") + bytes(body)

    @classmethod
    def parse(cls, body: bytes) -> Message:
        need(body, cls.LAYOUT.sizeof(), f"03H {cls.__name__}")
        parsed = cls.LAYOUT.parse(body)
        return cls(**{f.name: parsed[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def _s(*fields: cs.Construct) -> cs.Construct:
    return cs.Struct(*fields)


_OP = "operator" / _wire.OPERATOR


@dataclass(frozen=True, slots=True)
class IdentityAuthRequest(_Layout):
    """身份认证: ciphertext-1, random-1 and the diversification factor (00 00 + meter number)."""

    operator: bytes
    ciphertext: bytes
    random: bytes
    diversification: bytes
    DI: ClassVar[int] = DI_IDENTITY_AUTH
    LAYOUT: ClassVar[cs.Construct] = _s(
        _OP, "ciphertext" / cs.Bytes(8), "random" / cs.Bytes(8), "diversification" / cs.Bytes(8)
    )


@dataclass(frozen=True, slots=True)
class IdentityAuthReply(_Layout):
    random: bytes
    esam_serial: bytes
    DI: ClassVar[int] = DI_IDENTITY_AUTH
    REPLY: ClassVar[bool] = True
    LAYOUT: ClassVar[cs.Construct] = _s("random" / cs.Bytes(4), "esam_serial" / cs.Bytes(8))


class _BcdMinutes(cs.Adapter):  # type: ignore[misc]
    def _decode(self, obj: int, context: Any, path: Any) -> int:
        return int(f"{obj:04x}")

    def _encode(self, obj: int, context: Any, path: Any) -> int:
        if not 0 < obj <= 9999:
            raise ValueError(f"validity of {obj} minutes is not 1..9999")
        return int(str(obj), 16)


@dataclass(frozen=True, slots=True)
class AuthValidityRequest(_Layout):
    """身份认证时效设置: session validity in minutes (BCD, non-zero) with MAC."""

    operator: bytes
    minutes: int
    mac: bytes
    DI: ClassVar[int] = DI_AUTH_VALIDITY
    LAYOUT: ClassVar[cs.Construct] = _s(_OP, "minutes" / _BcdMinutes(cs.Int16ul), "mac" / _wire.MAC)


@dataclass(frozen=True, slots=True)
class AuthEndRequest(_Layout):
    operator: bytes
    DI: ClassVar[int] = DI_AUTH_END
    LAYOUT: ClassVar[cs.Construct] = _s(_OP)


@dataclass(frozen=True, slots=True)
class AuthEndReply(_Layout):
    customer_number: str
    remaining_fen: int
    purchase_count: int
    key_info: bytes
    DI: ClassVar[int] = DI_AUTH_END
    REPLY: ClassVar[bool] = True
    LAYOUT: ClassVar[cs.Construct] = _s(
        "customer_number" / _CUSTOMER,
        "remaining_fen" / _wire.U32,
        "purchase_count" / _wire.U32,
        "key_info" / cs.Bytes(4),
    )


_PURCHASE = _s(
    _OP,
    "amount_fen" / _wire.U32,
    "purchase_count" / _wire.U32,
    "mac1" / _wire.MAC,
    "customer_number" / _CUSTOMER,
    "mac2" / _wire.MAC,
)


@dataclass(frozen=True, slots=True)
class TopUpRequest(_Layout):
    """充值: credit `amount_fen`; `purchase_count` must be the meter's count + 1."""

    operator: bytes
    amount_fen: int
    purchase_count: int
    mac1: bytes
    customer_number: str
    mac2: bytes
    DI: ClassVar[int] = DI_TOP_UP
    LAYOUT: ClassVar[cs.Construct] = _PURCHASE


@dataclass(frozen=True, slots=True)
class AccountOpenRequest(_Layout):
    """开户: the first purchase; also writes the customer number."""

    operator: bytes
    amount_fen: int
    purchase_count: int
    mac1: bytes
    customer_number: str
    mac2: bytes
    DI: ClassVar[int] = DI_ACCOUNT_OPEN
    LAYOUT: ClassVar[cs.Construct] = _PURCHASE


@dataclass(frozen=True, slots=True)
class WalletInitRequest(_Layout):
    """钱包初始化: preset amount; the purchase count must be 0."""

    operator: bytes
    preset_fen: int
    mac1: bytes
    purchase_count: int
    mac2: bytes
    DI: ClassVar[int] = DI_WALLET_INIT
    LAYOUT: ClassVar[cs.Construct] = _s(
        _OP,
        "preset_fen" / _wire.U32,
        "mac1" / _wire.MAC,
        "purchase_count" / _wire.U32,
        "mac2" / _wire.MAC,
    )


@dataclass(frozen=True, slots=True)
class DataReadbackRequest(_Layout):
    """数据回抄: the 8-byte read-back identifier (length, offset, file, directory)."""

    operator: bytes
    identifier: bytes
    DI: ClassVar[int] = DI_DATA_READBACK
    LAYOUT: ClassVar[cs.Construct] = _s(_OP, "identifier" / cs.Bytes(8))


@dataclass(frozen=True, slots=True)
class DataReadbackReply(Message):
    """Identifier, then the data read back with its MAC(s). `wallet()` splits the wallet file."""

    identifier: bytes
    data: bytes
    CODE: ClassVar[dict[Edition, int]] = _CODE
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        if len(self.identifier) != 8:
            raise LocalProtocolError("read-back identifier is 8 bytes")
        return DI_DATA_READBACK.to_bytes(4, "little") + self.identifier + self.data

    @classmethod
    def parse(cls, body: bytes) -> Message:
        need(body, 8, "03H data read-back reply", exact=False)
        return cls(body[:8], body[8:])

    def wallet(self) -> tuple[int, int]:
        """(remaining_fen, purchase_count) of a wallet-file read-back.

        The wallet file reads back as remaining (4) + MAC (4) + purchase count (4) + MAC (4).
        """
        if len(self.data) != 16:
            raise PayloadError(f"wallet read-back has 16 data bytes, got {len(self.data)}")
        return int.from_bytes(self.data[:4], "little"), int.from_bytes(self.data[8:12], "little")


@dataclass(frozen=True, slots=True)
class StatusQueryRequest(_Layout):
    operator: bytes
    DI: ClassVar[int] = DI_STATUS_QUERY
    LAYOUT: ClassVar[cs.Construct] = _s(_OP)


@dataclass(frozen=True, slots=True)
class StatusQueryReply(_Layout):
    """状态查询: the ESAM wallet (remaining, count, each with MAC), customer no., key info."""

    remaining_fen: int
    mac1: bytes
    purchase_count: int
    mac2: bytes
    customer_number: str
    key_info: bytes
    DI: ClassVar[int] = DI_STATUS_QUERY
    REPLY: ClassVar[bool] = True
    LAYOUT: ClassVar[cs.Construct] = _s(
        "remaining_fen" / _wire.U32,
        "mac1" / _wire.MAC,
        "purchase_count" / _wire.U32,
        "mac2" / _wire.MAC,
        "customer_number" / _CUSTOMER,
        "key_info" / cs.Bytes(4),
    )


@dataclass(frozen=True, slots=True)
class SecurityAck(Message):
    """A normal 83 reply that only echoes the DI (top-up, account opening, wallet init …)."""

    di: int
    CODE: ClassVar[dict[Edition, int]] = _CODE
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return di_bytes(self.di, edition)


@dataclass(frozen=True, slots=True)
class SecurityRequest(Message):
    """A 03H request whose DI has no typed layout here (e.g. key update): kept as bytes.

    Also usable to relay any 03H request verbatim; decoding gives the typed class when the DI
    has one (`TopUpRequest` …)."""

    di: int
    operator: bytes
    body: bytes
    CODE: ClassVar[dict[Edition, int]] = _CODE

    def payload(self, edition: Edition) -> bytes:
        return di_bytes(self.di, edition) + four(self.operator, "operator code") + self.body


@dataclass(frozen=True, slots=True)
class SecurityReply(Message):
    """A normal 83 reply whose DI has no typed reply layout, kept as bytes. Decoding gives the
    typed class when there is one, and `SecurityAck` when nothing follows the DI."""

    di: int
    body: bytes
    CODE: ClassVar[dict[Edition, int]] = _CODE
    REPLY: ClassVar[bool] = True

    def payload(self, edition: Edition) -> bytes:
        return di_bytes(self.di, edition) + self.body


_REQUESTS: dict[int, type[_Layout]] = {
    c.DI: c
    for c in (
        IdentityAuthRequest,
        AuthValidityRequest,
        AuthEndRequest,
        TopUpRequest,
        AccountOpenRequest,
        WalletInitRequest,
        DataReadbackRequest,
        StatusQueryRequest,
    )
}
_REPLIES: dict[int, Any] = {
    DI_IDENTITY_AUTH: IdentityAuthReply,
    DI_AUTH_END: AuthEndReply,
    DI_DATA_READBACK: DataReadbackReply,
    DI_STATUS_QUERY: StatusQueryReply,
}


@register(_CODE, reply=False)
def _security_request(data: bytes, edition: Edition) -> Message:
    di = read_di(data, edition)
    cls = _REQUESTS.get(di)
    if cls is None:
        need(data, 8, "03H request", exact=False)
        return SecurityRequest(di, data[4:8], data[8:])
    parsed: Message = cls.parse(data[4:])
    return parsed


@register(_CODE, reply=True)
def _security_reply(data: bytes, edition: Edition) -> Message:
    di = read_di(data, edition)
    body = data[4:]
    if not body:
        return SecurityAck(di)
    cls = _REPLIES.get(di)
    if cls is None:
        return SecurityReply(di, body)
    parsed: Message = cls.parse(body)
    return parsed
