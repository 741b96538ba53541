"""The vocabulary of remote top-up and 费控 relay execution, shared by the agent (which runs the
03H / 1CH steps), the central side (which decides what to do next) and the simulated encryption
machine. Pure: no I/O, and no import of `protocols.dlt645` (the central side may use this
module; it may not use the codec).

* `SecurityReason` — the closed set of reasons a security step or an encryption-machine call
  can fail with, beside the communication reasons of `protocols.payloads.FailureReason`. The
  order service branches on these values, never on `detail` text.
* `serr_reason` — the meter's SERR word (03H abnormal reply, 2 bytes) to one reason.
* `hsm_reason` — an encryption-machine (密码机) error code to one reason.
* `StepOp` — the steps of the agent's ``security`` command (docs/mqtt.md).
* `relay_plaintext` — N1..N8 of a 1CH command, the plaintext the encryption machine encrypts.

Sources: docs/dlt645.md §3.6-3.7 and the top-up reference (topup-tariff.md §A.3, §A.5, §A.7).
"""

from __future__ import annotations

import datetime as dt
from enum import IntEnum, StrEnum
from typing import Final

__all__ = [
    "DATA_LENGTHS",
    "HSM_ERRORS",
    "PURCHASE_READBACK_ITEMS",
    "SERR_BITS",
    "SESSION_OPS",
    "WRITE_DATA_MAX",
    "WRITE_LEVELS",
    "WRITE_OPS",
    "RelayCommand",
    "SecurityReason",
    "StepOp",
    "hsm_reason",
    "relay_plaintext",
    "serr_reason",
    "serr_reasons",
]


class SecurityReason(StrEnum):
    """Why a security step (03H, secure 1CH) or an encryption-machine call failed.

    A closed set, additive only. Communication failures of a step (no reply, checksum …) use
    `protocols.payloads.FailureReason` instead; a step's ``reason`` is always a value of one of
    the two sets (or ``invalid`` for a command the agent could not accept as given).
    """

    # --- the meter's SERR word (03H abnormal reply C3, 2 bytes, low byte first) ---------------
    OTHER = "security_other"
    """SERR bit0 其它错误; also what a remote-prepaid (远程费控) meter answers to 03H top-up"""
    DUPLICATE_TOP_UP = "duplicate_top_up"
    """SERR bit1 重复充值: the meter's purchase count already equals the request's. Never
    success by itself: confirm by read-back (count, last amount, last time)"""
    ESAM_FAILED = "esam_failed"
    """SERR bit2 ESAM验证失败: a MAC did not verify (stale session, wrong key state, wrong meter)"""
    AUTH_FAILED = "auth_failed"
    """SERR bit3 身份认证失败: identity authentication refused, or the session expired"""
    CUSTOMER_MISMATCH = "customer_mismatch"
    """SERR bit4 客户编号不匹配: the meter holds another customer number (archive error)"""
    PURCHASE_COUNT_ERROR = "purchase_count_error"
    """SERR bit5 充值次数错误: count neither meter + 1 nor equal; also 充值 on an unopened meter"""
    HOARDING_EXCEEDED = "hoarding_exceeded"
    """SERR bit6 购电超囤积: the credit would take the balance over the hoarding limit"""
    ADDRESS_ERROR = "address_error"
    """SERR bit7 地址异常 (firmware extension)"""
    METER_SUSPENDED = "meter_suspended"
    """SERR bit8 (high byte bit0) 远程安全认证锁住 / 电表挂起: 200 MAC failures; until midnight"""
    # --- 1CH secure remote control ---------------------------------------------------------------
    RELAY_REFUSED = "relay_refused"
    """1CH abnormal reply (DC, ERR 04): ciphertext did not verify, command expired, no session,
    trip while keep-power (the meter does not say which)"""
    # --- 14H secure write (tariff correction) ------------------------------------------------
    WRITE_REFUSED = "write_refused"
    """14H abnormal reply (D4, ERR 04 密码错/未授权) to a level-98/99 write: the MAC or the
    ciphertext did not verify, no session, the wrong level for the item's class, a read-only
    item (the meter does not say which)"""
    WRITE_INVALID = "write_invalid"
    """14H abnormal reply with another ERR (其它错误 …): the meter would not take the value"""
    # --- the agent refused the step: nothing was sent ------------------------------------------
    DEADLINE_PASSED = "deadline_passed"
    """the command's ``not_after`` had passed when the step's turn came"""
    NO_SESSION = "no_session"
    """the step carries session-bound bytes but the agent holds no identity authentication
    for this meter (never run here, failed, ended, or forgotten by an agent restart)"""
    SESSION_SUPERSEDED = "session_superseded"
    """the step's ``session`` (random-2) is not the meter's latest authentication: a newer
    one voided the MACs it carries"""
    SESSION_EXPIRED = "session_expired"
    """the authentication the step belongs to is older than its validity (5 min by default)"""
    NOT_SENT = "not_sent"
    """an earlier step failed, so this state-changing step was not sent"""
    # --- the encryption machine (密码机) ------------------------------------------------------
    HSM_UNAVAILABLE = "hsm_unavailable"
    """160 连接密码机失败, 168 服务器已断开连接, no answer in time: nothing computed; try later"""
    HSM_PERMISSION = "hsm_permission"
    """161 操作权限不够, 1107 USBKey 权限不正确: configuration, not transient"""
    HSM_ENCRYPT_FAILED = "hsm_encrypt_failed"
    """165 密码机加密数据失败 (also: input the machine would not take)"""
    HSM_MAC_FAILED = "hsm_mac_failed"
    """167 计算 MAC 失败"""
    HSM_FAULT = "hsm_fault"
    """171 密码机故障"""
    HSM_ERROR = "hsm_error"
    """any other encryption-machine code"""
    READBACK_MAC_INVALID = "readback_mac_invalid"
    """read-back data whose MAC the encryption machine did not accept (MacCheck false)"""


#: SERR bit -> reason, in order of precedence when a word has several bits set: what the meter
#: checks first (lock-out, address, session, MACs …) explains the refusal best
SERR_BITS: Final[tuple[tuple[int, SecurityReason], ...]] = (
    (0x0100, SecurityReason.METER_SUSPENDED),
    (0x0080, SecurityReason.ADDRESS_ERROR),
    (0x0008, SecurityReason.AUTH_FAILED),
    (0x0004, SecurityReason.ESAM_FAILED),
    (0x0010, SecurityReason.CUSTOMER_MISMATCH),
    (0x0020, SecurityReason.PURCHASE_COUNT_ERROR),
    (0x0002, SecurityReason.DUPLICATE_TOP_UP),
    (0x0040, SecurityReason.HOARDING_EXCEEDED),
    (0x0001, SecurityReason.OTHER),
)
_KNOWN_BITS = sum(bit for bit, _ in SERR_BITS)


def serr_reasons(word: int) -> tuple[SecurityReason, ...]:
    """Every reason a SERR word carries, most significant first (`SERR_BITS`); bits without a
    meaning (9–15) and a word with no bit set give `SecurityReason.OTHER`."""
    out = [reason for bit, reason in SERR_BITS if word & bit]
    if (word & ~_KNOWN_BITS & 0xFFFF or not word) and SecurityReason.OTHER not in out:
        out.append(SecurityReason.OTHER)
    return tuple(out)


def serr_reason(word: int) -> SecurityReason:
    """The one reason of a SERR word (the first of `serr_reasons`)."""
    return serr_reasons(word)[0]


#: encryption-machine error codes (State-Grid encryption-service client API) -> reason, text
HSM_ERRORS: Final[dict[int, tuple[SecurityReason, str]]] = {
    160: (SecurityReason.HSM_UNAVAILABLE, "连接密码机失败 (connection to the machine failed)"),
    161: (SecurityReason.HSM_PERMISSION, "操作权限不够 (insufficient rights)"),
    165: (SecurityReason.HSM_ENCRYPT_FAILED, "密码机加密数据失败 (encryption failed)"),
    167: (SecurityReason.HSM_MAC_FAILED, "计算 MAC 失败 (MAC computation failed)"),
    168: (SecurityReason.HSM_UNAVAILABLE, "服务器已断开连接 (server disconnected)"),
    171: (SecurityReason.HSM_FAULT, "密码机故障 (machine fault)"),
    1107: (SecurityReason.HSM_PERMISSION, "USBKey 权限不正确 (USB key rights)"),
}


def hsm_reason(code: int) -> SecurityReason:
    """The reason of an encryption-machine error code (unknown codes: `HSM_ERROR`)."""
    entry = HSM_ERRORS.get(code)
    return entry[0] if entry is not None else SecurityReason.HSM_ERROR


class StepOp(StrEnum):
    """The steps of the agent's ``security`` command, one meter exchange each (``read`` one per
    item). ``data`` is what follows DI + operator code in the request, relayed verbatim."""

    AUTH = "auth"  # 03H 07 00 00 FF 身份认证: data = ciphertext-1 (8) + random-1 (8) + factor (8)
    AUTH_VALIDITY = "auth_validity"  # 03H 07 00 01 FF 时效设置: data = minutes (2, BCD) + MAC (4)
    OPEN = "open"  # 03H 07 01 01 FF 开户: data = amount + count + MAC1 + customer + MAC2 (22)
    TOPUP = "topup"  # 03H 07 01 02 FF 充值: same layout as open (22)
    STATUS = "status"  # 03H 07 81 02 FF 状态查询: no data
    READBACK = "readback"  # 03H 07 80 01 FF 数据回抄: data = read-back identifier (8)
    AUTH_END = "auth_end"  # 03H 07 00 02 FF 身份认证失效: no data; ends the session
    READ = "read"  # 11H plain reads of `items` (DIs or measurement names)
    RELAY = "relay"  # 1CH level 98: data = ciphertext (20) from the encryption machine
    WRITE = "write"  # 14H level 98/99 of `di`: data = ciphertext / plaintext + MAC (machine's)


#: steps whose bytes were computed for one identity authentication (its random-2): the agent
#: sends them only inside that authentication's session (docs/mqtt.md "security")
SESSION_OPS: Final = frozenset(
    {StepOp.AUTH_VALIDITY, StepOp.OPEN, StepOp.TOPUP, StepOp.RELAY, StepOp.WRITE}
)
#: steps that change the meter's state; after a failed step they are not sent (reads still are)
WRITE_OPS: Final = frozenset(
    {
        StepOp.AUTH,
        StepOp.AUTH_VALIDITY,
        StepOp.OPEN,
        StepOp.TOPUP,
        StepOp.RELAY,
        StepOp.AUTH_END,
        StepOp.WRITE,
    }
)
#: longest ``data`` of a ``write`` step: what fits a 14H frame after DI, password and operator
WRITE_DATA_MAX: Final = 255 - 12
#: password levels a ``write`` step takes (99: plaintext + MAC, 98: ciphertext + MAC)
WRITE_LEVELS: Final = (0x98, 0x99)
#: exact length of ``data`` per step (steps not listed take no data)
DATA_LENGTHS: Final[dict[StepOp, int]] = {
    StepOp.AUTH: 24,
    StepOp.AUTH_VALIDITY: 6,
    StepOp.OPEN: 22,
    StepOp.TOPUP: 22,
    StepOp.READBACK: 8,
    StepOp.RELAY: 20,
}

#: plain reads that settle a top-up: purchase count, last purchase amount and time, remaining
#: amount, running status word 3 (relay, mode, session bits), session minutes left
PURCHASE_READBACK_ITEMS: Final = (
    "03330201",
    "03330301",
    "03330101",
    "00900200",
    "04000503",
    "02800022",
)


class RelayCommand(IntEnum):
    """N1 of a 1CH command (the same codes as `protocols.dlt645.RelayAction`)."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    DIRECT_CLOSE = 0x1C
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    KEEP_POWER = 0x3A
    KEEP_POWER_RELEASE = 0x3B


def _bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def relay_plaintext(action: RelayCommand | str, valid_until: dt.datetime) -> bytes:
    """N1..N8 of a 1CH command: action, 00, valid-until as ss mm hh DD MM YY (BCD).

    `valid_until` is the meter's local time (a naive date-time, or an aware one already in the
    meter's zone: the offset is dropped). This is the plaintext the encryption machine's
    UserControl call encrypts into the 20 bytes of a level-98 1CH."""
    command = RelayCommand[action.upper()] if isinstance(action, str) else RelayCommand(action)
    if not 2000 <= valid_until.year <= 2099:
        raise ValueError(f"valid-until year {valid_until.year} outside 2000-2099")
    fields = (
        valid_until.second,
        valid_until.minute,
        valid_until.hour,
        valid_until.day,
        valid_until.month,
        valid_until.year - 2000,
    )
    return bytes((int(command), 0x00, *(_bcd(f) for f in fields)))
