"""Hypothesis strategies for DL/T 645 messages, addresses and catalogue values.

`MESSAGES[(cls, edition)]` draws instances of every exported message class in every edition it
exists in, with field values the class can carry losslessly in that edition (fields an edition
does not transmit keep their defaults; see the codec doc, "lossy by design").
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from hypothesis import strategies as st

import protocols.dlt645 as dlt
from protocols.dlt645 import (
    BAUD_BITS,
    FUNCTIONS,
    Address,
    Edition,
    ErrorFlags,
    ErrorFlags1997,
    Message,
    RelayAction,
    SecurityErrorFlags,
    TerminalOutput,
)
from protocols.dlt645.formats import Bcd, ClockField, Digits, ValueFormat, Word
from protocols.dlt645.messages import DONE_CODES, READ_LIMIT, WRITE_LIMIT
from protocols.dlt645.security import _REPLIES, _REQUESTS

V07, V97 = Edition.V2007, Edition.V1997
EDITIONS = (V07, V97)

# --- addresses -----------------------------------------------------------------------------
_digit_pair = st.integers(0, 99).map(lambda n: (n // 10) << 4 | n % 10)
specific_addresses = st.lists(_digit_pair, min_size=6, max_size=6).map(
    lambda bs: Address(bytes(bs))
)


@st.composite
def _shortened(draw: st.DrawFn) -> Address:
    """缩位: the low bytes given, the remaining high bytes AAH."""
    given = draw(st.integers(1, 5))
    low = draw(st.lists(_digit_pair, min_size=given, max_size=given))
    return Address(bytes(low) + b"\xaa" * (6 - given))


addresses = st.one_of(
    specific_addresses, st.just(dlt.BROADCAST), st.just(dlt.WILDCARD), _shortened()
)

# --- field values --------------------------------------------------------------------------
u32 = st.integers(0, 0xFFFFFFFF)
four_bytes = st.binary(min_size=4, max_size=4)
customer_numbers = st.from_regex(r"[0-9]{12}", fullmatch=True)
minute_times = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59)).map(
    lambda t: t.replace(second=0, microsecond=0)
)
second_times = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda t: t.replace(microsecond=0)
)
#: every 03H data identifier in use has the form 07 xx xx FF (the edition inference uses it)
security_dis = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(
    lambda t: 0x07000000 | t[0] << 16 | t[1] << 8 | 0xFF
)


def di(edition: Edition) -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFFFFFF if edition is V07 else 0xFFFF)


def _di_len(edition: Edition) -> int:
    return 4 if edition is V07 else 2


def _operator(edition: Edition) -> st.SearchStrategy[bytes]:
    # 1997 frames carry no operator code: the field keeps its default
    return four_bytes if edition is V07 else st.just(b"\x00\x00\x00\x00")


def _error_flags(edition: Edition) -> st.SearchStrategy[Any]:
    if edition is V07:
        return st.integers(0, 0xFF).map(ErrorFlags)
    return st.integers(0, 0xFF).map(ErrorFlags1997)


def _error_functions(edition: Edition) -> st.SearchStrategy[int]:
    if edition is V07:  # 03H has the SERR layout of its own (SecurityErrorReply)
        return st.integers(0, 0x1F).filter(lambda c: c != 0x03)
    return st.sampled_from(sorted(FUNCTIONS[V97]))


def _read_request(edition: Edition) -> st.SearchStrategy[Message]:
    plain = st.builds(dlt.ReadRequest, di(edition))
    if edition is V97:
        return plain
    blocks = st.builds(dlt.ReadRequest, di(edition), st.integers(0, 99))
    since = st.builds(dlt.ReadRequest, di(edition), st.integers(0, 99), minute_times)
    return st.one_of(plain, blocks, since)


def _message_strategies() -> dict[tuple[type[Message], Edition], st.SearchStrategy[Any]]:
    s: dict[tuple[type[Message], Edition], st.SearchStrategy[Any]] = {}
    for ed in EDITIONS:
        room = READ_LIMIT - _di_len(ed)
        s[(dlt.ReadRequest, ed)] = _read_request(ed)
        s[(dlt.ReadReply, ed)] = st.builds(dlt.ReadReply, di(ed), st.binary(max_size=room))
        s[(dlt.FollowUpReply, ed)] = st.builds(
            dlt.FollowUpReply,
            di(ed),
            st.binary(max_size=room - 1),
            st.integers(0, 255) if ed is V07 else st.none(),
        )
        s[(dlt.ReadFollowUpRequest, ed)] = st.builds(
            dlt.ReadFollowUpRequest, di(ed), st.integers(0, 255) if ed is V07 else st.just(1)
        )
        fixed = _di_len(ed) + (8 if ed is V07 else 4)
        s[(dlt.WriteRequest, ed)] = st.builds(
            dlt.WriteRequest,
            di(ed),
            four_bytes,
            st.binary(max_size=WRITE_LIMIT - fixed),
            _operator(ed),
        )
        s[(dlt.WriteAddressRequest, ed)] = st.builds(dlt.WriteAddressRequest, specific_addresses)
        s[(dlt.BroadcastTimeRequest, ed)] = st.builds(dlt.BroadcastTimeRequest, second_times)
        s[(dlt.ChangeBaudRequest, ed)] = st.builds(
            dlt.ChangeBaudRequest, st.sampled_from(sorted(BAUD_BITS))
        )
        s[(dlt.ChangeBaudReply, ed)] = st.builds(
            dlt.ChangeBaudReply, st.sampled_from(sorted(BAUD_BITS))
        )
        s[(dlt.ChangePasswordRequest, ed)] = st.builds(
            dlt.ChangePasswordRequest,
            four_bytes,
            st.tuples(st.integers(0, 9), st.binary(min_size=3, max_size=3)).map(
                lambda t: bytes((t[0],)) + t[1]
            ),
        )
        s[(dlt.ChangePasswordReply, ed)] = st.builds(dlt.ChangePasswordReply, four_bytes)
        s[(dlt.ClearDemandRequest, ed)] = st.builds(
            dlt.ClearDemandRequest, four_bytes, _operator(ed)
        )
        s[(dlt.Done, ed)] = st.builds(dlt.Done, st.sampled_from(DONE_CODES[ed]))
        s[(dlt.ErrorReply, ed)] = st.builds(dlt.ErrorReply, _error_functions(ed), _error_flags(ed))

    s[(dlt.RereadRequest, V97)] = st.just(dlt.RereadRequest())
    s[(dlt.ReadAddressRequest, V07)] = st.just(dlt.ReadAddressRequest())
    s[(dlt.ReadAddressReply, V07)] = st.builds(dlt.ReadAddressReply, addresses)
    s[(dlt.FreezeRequest, V07)] = st.builds(
        dlt.FreezeRequest,
        st.none() | st.integers(0, 59),
        st.none() | st.integers(0, 23),
        st.none() | st.integers(0, 31),
        st.none() | st.integers(0, 12),
    )
    s[(dlt.ClearMeterRequest, V07)] = st.builds(dlt.ClearMeterRequest, four_bytes, four_bytes)
    s[(dlt.ClearEventsRequest, V07)] = st.builds(
        dlt.ClearEventsRequest, four_bytes, di(V07), four_bytes
    )
    s[(dlt.RemoteControlRequest, V07)] = st.builds(
        dlt.RemoteControlRequest,
        st.sampled_from(RelayAction),
        second_times,
        four_bytes,
        four_bytes,
    )
    s[(dlt.SecureRemoteControlRequest, V07)] = st.builds(
        dlt.SecureRemoteControlRequest,
        st.binary(min_size=20, max_size=20),
        four_bytes,
        four_bytes,
    )
    s[(dlt.TerminalOutputRequest, V07)] = st.builds(
        dlt.TerminalOutputRequest, st.sampled_from(TerminalOutput)
    )
    s[(dlt.TerminalOutputReply, V07)] = st.builds(
        dlt.TerminalOutputReply, st.sampled_from(TerminalOutput)
    )
    s.update(_security_strategies())
    return s


def _b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def _security_strategies() -> dict[tuple[type[Message], Edition], st.SearchStrategy[Any]]:
    purchase = {
        "operator": four_bytes,
        "amount_fen": u32,
        "purchase_count": u32,
        "mac1": four_bytes,
        "customer_number": customer_numbers,
        "mac2": four_bytes,
    }
    untyped_requests = security_dis.filter(lambda d: d not in _REQUESTS)
    untyped_replies = security_dis.filter(lambda d: d not in _REPLIES)
    strategies: dict[type[Message], st.SearchStrategy[Any]] = {
        dlt.IdentityAuthRequest: st.builds(
            dlt.IdentityAuthRequest, four_bytes, _b(8), _b(8), _b(8)
        ),
        dlt.IdentityAuthReply: st.builds(dlt.IdentityAuthReply, four_bytes, _b(8)),
        dlt.AuthValidityRequest: st.builds(
            dlt.AuthValidityRequest, four_bytes, st.integers(1, 9999), four_bytes
        ),
        dlt.AuthEndRequest: st.builds(dlt.AuthEndRequest, four_bytes),
        dlt.AuthEndReply: st.builds(dlt.AuthEndReply, customer_numbers, u32, u32, four_bytes),
        dlt.TopUpRequest: st.builds(dlt.TopUpRequest, **purchase),
        dlt.AccountOpenRequest: st.builds(dlt.AccountOpenRequest, **purchase),
        dlt.WalletInitRequest: st.builds(
            dlt.WalletInitRequest, four_bytes, u32, four_bytes, u32, four_bytes
        ),
        dlt.DataReadbackRequest: st.builds(dlt.DataReadbackRequest, four_bytes, _b(8)),
        dlt.DataReadbackReply: st.builds(dlt.DataReadbackReply, _b(8), st.binary(max_size=200)),
        dlt.StatusQueryRequest: st.builds(dlt.StatusQueryRequest, four_bytes),
        dlt.StatusQueryReply: st.builds(
            dlt.StatusQueryReply, u32, four_bytes, u32, four_bytes, customer_numbers, four_bytes
        ),
        dlt.SecurityAck: st.builds(dlt.SecurityAck, security_dis),
        dlt.SecurityRequest: st.builds(
            dlt.SecurityRequest, untyped_requests, four_bytes, st.binary(max_size=200)
        ),
        dlt.SecurityReply: st.builds(
            dlt.SecurityReply, untyped_replies, st.binary(min_size=1, max_size=200)
        ),
        dlt.SecurityErrorReply: st.builds(
            dlt.SecurityErrorReply, st.integers(0, 0xFFFF).map(SecurityErrorFlags)
        ),
    }
    return {(cls, V07): strategy for cls, strategy in strategies.items()}


MESSAGES = _message_strategies()


def exported_message_classes() -> list[type[Message]]:
    """Every concrete message class the package exports."""
    classes = [getattr(dlt, name) for name in dlt.__all__]
    return [c for c in classes if isinstance(c, type) and issubclass(c, Message) and c != Message]


def editions_of(cls: type[Message]) -> list[Edition]:
    """The editions a class can be sent in (ErrorReply and Done carry their code as a field)."""
    if cls in (dlt.ErrorReply, dlt.Done):
        return list(EDITIONS)
    return [ed for ed in EDITIONS if ed in cls.CODE]


any_message = st.sampled_from(sorted(MESSAGES, key=lambda k: (k[0].__name__, k[1]))).flatmap(
    lambda key: st.tuples(st.just(key[1]), MESSAGES[key])
)


# --- catalogue values ----------------------------------------------------------------------
def bcd_values(fmt: Bcd) -> st.SearchStrategy[float | int]:
    """Values the format holds exactly: the magnitude fits its digits (and the sign bit)."""
    digits = 2 * fmt.size
    top = 8 * 10 ** (digits - 2) - 1 if fmt.signed else 10**digits - 1
    sign = st.sampled_from((1, -1)) if fmt.signed else st.just(1)

    def value(t: tuple[int, int]) -> float | int:
        n = t[0] * t[1]
        return n if not fmt.decimals else n / 10**fmt.decimals

    return st.tuples(st.integers(0, top), sign).map(value)


def clock_values(fmt: ClockField) -> st.SearchStrategy[str]:
    keys = {fmt.layout[i : i + 2] for i in range(0, len(fmt.layout), 2)}
    moments = second_times if "ss" in keys else minute_times
    if "DD" in keys and "hh" in keys:
        return moments.map(lambda t: t.isoformat())
    if "DD" in keys:
        return moments.map(lambda t: t.date().isoformat())
    return moments.map(lambda t: t.time().isoformat())


def format_values(fmt: ValueFormat) -> st.SearchStrategy[Any]:
    if isinstance(fmt, Bcd):
        return bcd_values(fmt)
    if isinstance(fmt, ClockField):
        return clock_values(fmt)
    if isinstance(fmt, Digits):
        return st.from_regex(rf"[0-9]{{{2 * fmt.size}}}", fullmatch=True)
    if isinstance(fmt, Word):
        return st.integers(0, (1 << (8 * fmt.size)) - 1)
    raise AssertionError(f"no value strategy for {fmt!r}")


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    """`raw` cut at the given offsets (taken modulo its length): chunks as a line delivers them."""
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points)]
