"""How a simulated meter answers a DL/T 645 request that reached it.

`respond()` takes a decoded request frame and gives the reply frames, or none (silence). It
decides only what the meter says; whether the bus delivers it (faults, collisions) is the
bus's business. Requests are decoded with `protocols.dlt645.from_frame`; replies are built
with `to_frame`; values come from the catalogue through `Meter.read`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from protocols.dlt645 import (
    Address,
    BroadcastTimeRequest,
    ChangeBaudRequest,
    Done,
    Edition,
    ErrorFlags,
    ErrorFlags1997,
    ErrorReply,
    FollowUpReply,
    Frame,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayAction,
    RemoteControlRequest,
    RereadRequest,
    SecureRemoteControlRequest,
    SecurityErrorFlags,
    SecurityErrorReply,
    SecurityRequest,
    TerminalOutputReply,
    TerminalOutputRequest,
    WriteRequest,
    from_frame,
    lookup,
    to_frame,
)
from protocols.dlt645.formats import ClockField
from protocols.dlt645.security import (
    DI_ACCOUNT_OPEN,
    DI_AUTH_END,
    DI_AUTH_VALIDITY,
    DI_DATA_READBACK,
    DI_IDENTITY_AUTH,
    DI_STATUS_QUERY,
    DI_TOP_UP,
    DI_WALLET_INIT,
)
from protocols.dlt645.tariff import is_tariff_di
from protocols.errors import RemoteProtocolError, ValueFormatError
from protocols.tariff_write import LEVEL_CIPHER, LEVEL_PLAIN, first_class, meter_value, read_only
from simulators.meter import Meter
from simulators.prepaid import handle_security

__all__ = ["Reply", "abnormal_instead", "respond", "target_of"]

#: 03H DI -> the name injected faults use for it (`simulators.faults.INJECTED_TARGETS`)
_SECURITY_TARGETS = {
    DI_IDENTITY_AUTH: "auth",
    DI_AUTH_VALIDITY: "auth_validity",
    DI_AUTH_END: "auth_end",
    DI_ACCOUNT_OPEN: "open",
    DI_TOP_UP: "topup",
    DI_WALLET_INIT: "wallet_init",
    DI_DATA_READBACK: "readback",
    DI_STATUS_QUERY: "status",
}
_CREDITING = {DI_TOP_UP: "top-up credited", DI_ACCOUNT_OPEN: "account opened and credited"}

SYNC_WINDOW = dt.timedelta(minutes=5)
_SECURITY_CLASSES = ("IdentityAuthRequest", "AuthValidityRequest", "AuthEndRequest",
                     "TopUpRequest", "AccountOpenRequest", "WalletInitRequest",
                     "DataReadbackRequest", "StatusQueryRequest")  # fmt: skip
_DATE = 0x04000101
_TIME = 0x04000102
_DATETIME = 0x0400010C
_LIMITS = {0x04001001: "alarm_1_fen", 0x04001002: "alarm_2_fen", 0x04001003: "overdraft_fen",
           0x04001004: "hoarding_fen", 0x04001005: "close_allowed_fen"}  # fmt: skip
_TIME_1997 = {0xC010: _DATE, 0xC011: _TIME}
_RELAY_CLOCK = ClockField("YYMMDDhhmmss")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the meter sends back, and a word for the answer record."""

    frames: tuple[Frame, ...]
    outcome: str
    """answered | abnormal | silent_broadcast | silent_not_supported | ignored"""
    detail: str = ""


def _reply(meter: Meter, message: Message, *, follow_up: bool = False, detail: str = "") -> Reply:
    edition = meter.identity.edition or Edition.V2007
    frame = to_frame(Address.parse(meter.identity.address), message, edition, follow_up=follow_up)
    outcome = "abnormal" if message.ABNORMAL else "answered"
    return Reply((frame,), outcome, detail)


def _error(meter: Meter, code: int, flags: ErrorFlags | ErrorFlags1997, detail: str) -> Reply:
    return _reply(meter, ErrorReply(code, flags), detail=detail)


def _no_data(meter: Meter, code: int, detail: str) -> Reply:
    edition = meter.identity.edition or Edition.V2007
    flags = ErrorFlags.NO_DATA if edition is Edition.V2007 else ErrorFlags1997.BAD_DI
    return _error(meter, code, flags, detail)


def _unauthorized(meter: Meter, code: int, detail: str) -> Reply:
    edition = meter.identity.edition or Edition.V2007
    flags = ErrorFlags.UNAUTHORIZED if edition is Edition.V2007 else ErrorFlags1997.WRONG_PASSWORD
    return _error(meter, code, flags, detail)


def target_of(frame: Frame) -> str:
    """What kind of request a frame is, in the names injected faults match on."""
    code = frame.control.code
    if frame.edition is Edition.V2007 and code == 0x03:
        di = frame.di
        return _SECURITY_TARGETS.get(di, "security") if di is not None else "security"
    if frame.edition is Edition.V2007 and code == 0x1C:
        return "relay"
    if code in (0x11, 0x12) or (frame.edition is Edition.V1997 and code in (0x01, 0x02)):
        return "read"
    return frame.function.name.lower()


def respond(
    meter: Meter,
    frame: Frame,
    *,
    broadcast: bool,
    wildcard: bool,
    late_s: float = 0.0,
    relay_moves: bool = True,
) -> Reply:
    """The meter's answer to `frame` (already known to be addressed to it).

    `late_s`: the request reaches the meter that much later than now (the meter judges it at
    its clock + `late_s`: an injected carrier delay). `relay_moves` False: a 1CH command is
    accepted but the contact stays where it is (an injected stuck relay)."""
    now = meter.tick() + dt.timedelta(seconds=late_s)
    code = frame.control.code
    try:
        message = from_frame(frame)
    except RemoteProtocolError as exc:
        if broadcast:
            return Reply((), "silent_broadcast", str(exc))
        return _error(meter, code, _other(meter), f"bad request: {exc}")
    if isinstance(message, BroadcastTimeRequest):
        return _time_sync(meter, message, now, broadcast)
    if broadcast:
        return Reply((), "silent_broadcast", "no reply to broadcast")
    if isinstance(message, ReadAddressRequest):
        if not wildcard:
            return Reply((), "ignored", "13H needs the all-AA address")
        return _reply(meter, ReadAddressReply(Address.parse(meter.identity.address)))
    if isinstance(message, ReadRequest):
        return _read(meter, message, code)
    if isinstance(message, ReadFollowUpRequest):
        return _follow_up(meter, message, code)
    if isinstance(message, RereadRequest):
        if meter.last_reply is None:
            return _no_data(meter, code, "nothing to re-read")
        di = int.from_bytes(meter.last_reply[:2], "little")
        return _reply(meter, ReadReply(di, meter.last_reply[2:]))
    if isinstance(message, WriteRequest):
        return _write(meter, message, code, now)
    if isinstance(message, RemoteControlRequest | SecureRemoteControlRequest):
        return _remote_control(meter, message, code, now, relay_moves)
    if type(message).__name__ in _SECURITY_CLASSES or isinstance(message, SecurityRequest):
        answer = handle_security(meter, message, now)
        if answer.ABNORMAL:
            flags = getattr(answer, "flags", 0)
            detail = f"03H refused: SERR {int(flags):04X}"
        else:
            detail = _CREDITING.get(getattr(message, "DI", 0), "")
        return _reply(meter, answer, detail=detail)
    if isinstance(message, ChangeBaudRequest):
        return _error(meter, code, ErrorFlags.BAUD_UNCHANGEABLE, "the line rate is fixed")
    if isinstance(message, TerminalOutputRequest):
        return _reply(meter, TerminalOutputReply(message.mode))
    return _unauthorized(meter, code, f"{type(message).__name__} is not allowed")


def abnormal_instead(meter: Meter, frame: Frame, serr: int, err: int, detail: str) -> Reply:
    """An abnormal reply to `frame` (an injected "error after the meter acted"): SERR `serr`
    for 03H, the ERR byte `err` for any other function."""
    code = frame.control.code
    edition = meter.identity.edition or Edition.V2007
    if edition is Edition.V2007 and code == 0x03:
        return _reply(meter, SecurityErrorReply(SecurityErrorFlags(serr)), detail=detail)
    flags = ErrorFlags(err) if edition is Edition.V2007 else ErrorFlags1997(err)
    return _error(meter, code, flags, detail)


def _other(meter: Meter) -> ErrorFlags | ErrorFlags1997:
    return (
        ErrorFlags.OTHER
        if meter.identity.edition is not Edition.V1997
        else (ErrorFlags1997.ILLEGAL_DATA)
    )


def _read(meter: Meter, message: ReadRequest, code: int) -> Reply:
    if message.blocks is not None:
        return _no_data(meter, code, "load-profile records are not kept")
    value = meter.read(message.di)
    meter.pending = None
    if value is None:
        return _no_data(meter, code, "no such data")
    room = meter.reply_limit - (4 if meter.identity.edition is not Edition.V1997 else 2)
    if len(value) > room:
        meter.pending = (message.di, value[room:])
        return _reply(meter, ReadReply(message.di, value[:room]), follow_up=True)
    width = 4 if meter.identity.edition is not Edition.V1997 else 2
    meter.last_reply = message.di.to_bytes(width, "little") + value
    return _reply(meter, ReadReply(message.di, value))


def _follow_up(meter: Meter, message: ReadFollowUpRequest, code: int) -> Reply:
    pending = meter.pending
    if pending is None or pending[0] != message.di:
        return _no_data(meter, code, "no follow-up data pending")
    room = meter.reply_limit - 5
    chunk, rest = pending[1][:room], pending[1][room:]
    meter.pending = (message.di, rest) if rest else None
    return _reply(meter, FollowUpReply(message.di, chunk, message.seq), follow_up=bool(rest))


def _password_ok(meter: Meter, password: bytes) -> bool:
    return password == meter.password


def _write(meter: Meter, message: WriteRequest, code: int, now: dt.datetime) -> Reply:
    edition = meter.identity.edition or Edition.V2007
    if edition is Edition.V2007 and message.password[:1] in (b"\x98", b"\x99"):
        return _secure_write(meter, message, code, now)
    di = _TIME_1997.get(message.di, message.di) if edition is Edition.V1997 else message.di
    item = lookup(message.di, edition)
    if item is None:
        return _no_data(meter, code, "no such data")
    if not _password_ok(meter, message.password):
        return _unauthorized(meter, code, "wrong password")
    try:
        values = {m.name: m.value for m in item.decode(message.value)}
    except RemoteProtocolError as exc:
        return _error(meter, code, _other(meter), f"bad value: {exc}")
    if di in (_DATE, _TIME, _DATETIME):
        if di == _DATE:
            new = dt.datetime.combine(dt.date.fromisoformat(str(values["meter_date"])), now.time())
        elif di == _TIME:
            new = dt.datetime.combine(now.date(), dt.time.fromisoformat(str(values["meter_time"])))
        else:
            new = dt.datetime.fromisoformat(str(values["meter_datetime"]))
        meter.set_time(new)
        return _reply(meter, Done(code), detail=f"clock set to {new.isoformat()}")
    if di in _LIMITS and meter.wallet is not None:
        fen = round(float(next(iter(values.values()))) * 100)
        setattr(meter.wallet.limits, _LIMITS[di], fen)
        meter.tick()
        return _reply(meter, Done(code), detail="limit written")
    return _unauthorized(meter, code, "item is read-only")


def _secure_write(meter: Meter, message: WriteRequest, code: int, now: dt.datetime) -> Reply:
    """A level-99 (plaintext + MAC) or level-98 (ciphertext + MAC) write of a tariff item, in
    the session of the latest identity authentication; the ESAM checks the MAC (a failure
    counts), the firmware checks the item's class and layout. Any refusal leaves the set-up
    as it was."""
    level = message.password[0]
    esam, tariff, di = meter.esam, meter.tariff, message.di
    if esam is None:
        return _unauthorized(meter, code, "no ESAM: secure writes are not taken")
    if esam.suspended(now):
        return _unauthorized(meter, code, "secure write refused: remote functions hung up")
    if tariff is None or not is_tariff_di(di) or tariff.denies(di):
        return _no_data(meter, code, "no such data")
    if read_only(di):
        return _unauthorized(meter, code, "the current price set is read-only")
    if first_class(di) != (level == LEVEL_PLAIN):
        return _unauthorized(meter, code, f"{di:08X} is not written at level {level:02X}")
    plain = esam.parameter(now, di, message.value, cipher=level == LEVEL_CIPHER)
    if plain is None:
        return _unauthorized(meter, code, "secure write did not verify (session or MAC)")
    try:
        name = tariff.write_item(di, meter_value(di, plain), now)
    except (ValueFormatError, ValueError) as exc:
        return _error(meter, code, _other(meter), f"bad value: {exc}")
    meter.tick()
    return _reply(meter, Done(code), detail=f"{name} written")


def _time_sync(
    meter: Meter, message: BroadcastTimeRequest, now: dt.datetime, broadcast: bool
) -> Reply:
    refusal = _sync_refusal(meter, message.time, now)
    if refusal is None:
        meter.set_time(message.time)
        meter.last_time_sync = message.time.date()
    if broadcast:
        return Reply((), "silent_broadcast", refusal or "time synchronised")
    if refusal is not None:
        return _unauthorized(meter, 0x08, refusal)
    return _reply(meter, Done(0x08), detail="time synchronised")


def _sync_refusal(meter: Meter, new: dt.datetime, now: dt.datetime) -> str | None:
    if meter.last_time_sync == now.date():
        return "refused: already synchronised today"
    for moment in (now, new):
        midnight = dt.datetime.combine(moment.date(), dt.time())
        if (
            moment - midnight < SYNC_WINDOW
            or midnight + dt.timedelta(days=1) - moment < SYNC_WINDOW
        ):
            return "refused: within 5 minutes of midnight"
    if abs(new - now) > SYNC_WINDOW:
        return "refused: the correction exceeds 5 minutes"
    return None


def _remote_control(
    meter: Meter,
    message: RemoteControlRequest | SecureRemoteControlRequest,
    code: int,
    now: dt.datetime,
    relay_moves: bool = True,
) -> Reply:
    if isinstance(message, SecureRemoteControlRequest):
        if meter.esam is not None and meter.esam.suspended(now):
            return _unauthorized(meter, code, "secure 1CH refused: remote functions hung up")
        plain = meter.esam.decrypt_relay(now, message.ciphertext) if meter.esam else None
        if plain is None:
            return _unauthorized(meter, code, "secure 1CH did not verify")
        try:
            action = RelayAction(plain[0])
            until = dt.datetime.fromisoformat(_RELAY_CLOCK.decode(plain[2:8]))
        except (ValueError, RemoteProtocolError):
            return _unauthorized(meter, code, "secure 1CH plain text is malformed")
    else:
        if not _password_ok(meter, message.password):
            return _unauthorized(meter, code, "wrong password")
        action, until = message.action, message.valid_until
    if until < now:
        return _unauthorized(meter, code, f"command expired at {until.isoformat()}")
    was_open = meter.relay.open
    if not meter.relay.apply(action, move=relay_moves):
        return _unauthorized(meter, code, "trip refused while keep-power")
    if meter.relay.open != was_open:
        meter.contact_changed(now, int.from_bytes(message.operator, "little"))
    stuck = "" if relay_moves else " (the contact did not move)"
    return _reply(meter, Done(code), detail=f"relay {action.name.lower()}{stuck}")
