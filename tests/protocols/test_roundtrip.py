"""Property round trips: every message class in every edition it exists in, through frame bytes
and back (whole frame and the stream decoder); every catalogue format and item through its
value encoding and back."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    DataItem,
    Edition,
    Frame,
    FrameDecoder,
    Message,
    all_items,
    decode_frame,
    encode_frame,
    from_frame,
    lookup,
    to_frame,
)
from protocols.dlt645.formats import Bcd, ClockField, Digits, ValueFormat, Word
from tests.protocols.strategies import (
    MESSAGES,
    addresses,
    editions_of,
    exported_message_classes,
    format_values,
    split_at,
)

ROUND_TRIP = settings(max_examples=60, deadline=None)
CASES = sorted(MESSAGES, key=lambda k: (k[0].__name__, k[1]))


def test_every_exported_message_class_has_a_strategy_in_every_edition() -> None:
    expected = {(cls, ed) for cls in exported_message_classes() for ed in editions_of(cls)}
    assert expected == set(MESSAGES)
    # and that covers every function of both editions
    codes: dict[Edition, set[int]] = {ed: set() for ed in Edition}
    for cls, ed in MESSAGES:
        if ed in cls.CODE:
            codes[ed].add(cls.CODE[ed])
    assert codes[Edition.V2007] == {0x03, 0x08, *range(0x11, 0x1E)}
    assert codes[Edition.V1997] == {0x01, 0x02, 0x03, 0x04, 0x08, 0x0A, 0x0C, 0x0F, 0x10}


@pytest.mark.parametrize(("cls", "edition"), CASES, ids=[f"{c.__name__}-{e}" for c, e in CASES])
@ROUND_TRIP
@given(data=st.data())
def test_message_round_trip(cls: type[Message], edition: Edition, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[(cls, edition)], label="message")
    address = data.draw(addresses, label="address")
    wakeup = data.draw(st.integers(0, 8), label="wakeup")
    follow_up = message.REPLY and not message.ABNORMAL and data.draw(st.booleans())
    frame = to_frame(address, message, edition, follow_up=follow_up)
    raw = encode_frame(frame, wakeup=wakeup)

    assert raw[:wakeup] == b"\xfe" * wakeup
    assert len(raw) == wakeup + 12 + len(frame.data)

    # whole frame, edition given: the very same frame and message
    forced = decode_frame(raw, edition=edition)
    assert forced == frame
    assert type(from_frame(forced)) is cls
    assert from_frame(forced) == message

    # whole frame, edition inferred from the bytes: the same message
    inferred = decode_frame(raw)
    assert from_frame(inferred) == message
    if not message.ABNORMAL and frame.control.code != 0x08:  # 08H reads the same in both
        assert inferred.edition is edition

    # the stream decoder, fed in random pieces, inferring the edition
    decoder = FrameDecoder()
    events: list[Any] = []
    for piece in split_at(raw, data.draw(st.lists(st.integers(0, 300), max_size=6))):
        events += decoder.feed(piece)
        assert decoder.pending <= 12 + 255
    events += decoder.flush()
    assert len(events) == 1
    assert isinstance(events[0], Frame)
    assert events[0].address == address
    assert from_frame(events[0]) == message
    assert decoder.skipped_bytes == wakeup


# --- catalogue formats --------------------------------------------------------------------------
FORMATS = sorted(
    {f.format for item in all_items() for f in item.fields},
    key=lambda f: (type(f).__name__, f.layout, repr(f)),
)


def _format_id(fmt: ValueFormat) -> str:
    if isinstance(fmt, Bcd):
        return f"Bcd-{fmt.layout}{'-signed' if fmt.signed else ''}"
    if isinstance(fmt, Word):
        return f"Word-{len(fmt.bits)}bits-{fmt.bits[0][1] if fmt.bits else ''}"
    return f"{type(fmt).__name__}-{fmt.layout}"


def test_the_catalogue_uses_every_kind_of_format() -> None:
    kinds = {type(f) for f in FORMATS}
    assert kinds == {Bcd, ClockField, Digits, Word}
    assert {f.layout for f in FORMATS if isinstance(f, ClockField)} == {
        "YYMMDDhhmm",
        "YYMMDDhhmmss",
        "YYMMDDWW",
        "hhmmss",
        "YYMMDDWWhhmmss",
    }
    assert any(f.signed for f in FORMATS if isinstance(f, Bcd))


@pytest.mark.parametrize("fmt", FORMATS, ids=[_format_id(f) for f in FORMATS])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_format_round_trip(fmt: ValueFormat, data: st.DataObject) -> None:
    value = data.draw(format_values(fmt), label="value")
    raw = fmt.encode(value)
    assert len(raw) == fmt.size
    assert fmt.decode(raw) == value
    # and back from the bytes: the encoding is canonical
    assert fmt.encode(fmt.decode(raw)) == raw


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(min_size=2, max_size=2))
def test_word_bytes_round_trip(raw: bytes) -> None:
    word = Word()
    assert word.encode(word.decode(raw)) == raw


@pytest.mark.parametrize("layout", ["YYMMDDWW", "YYMMDDWWhhmmss"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_clock_weekday_is_computed_from_the_date(layout: str, data: st.DataObject) -> None:
    fmt = ClockField(layout)
    text = data.draw(format_values(fmt))
    raw = fmt.encode(text)
    weekday = raw[fmt.size - 4]  # sent … WW DD MM YY: WW is the fourth byte from the end
    date = text[:10]
    assert weekday == (dt.date.fromisoformat(date).isoweekday() % 7)  # 0 = Sunday


# --- catalogue items ----------------------------------------------------------------------------
ITEMS = list(all_items())


def test_all_items_is_what_lookup_finds() -> None:
    assert len({(i.edition, i.di) for i in ITEMS}) == len(ITEMS)
    for item in ITEMS:
        assert lookup(item.di, item.edition) == item


@st.composite
def item_values(draw: st.DrawFn) -> tuple[DataItem, dict[str, Any]]:
    item = draw(st.sampled_from(ITEMS), label="item")
    count = len(item.fields)
    if item.min_fields:
        count = draw(st.integers(item.min_fields, count), label="fields present")
    values = {f.measurement: draw(format_values(f.format)) for f in item.fields[:count]}
    return item, values


@settings(max_examples=300, deadline=None)
@given(case=item_values())
def test_catalogue_item_round_trip(case: tuple[DataItem, dict[str, Any]]) -> None:
    item, values = case
    raw = item.encode(values)
    assert len(raw) == sum(f.format.size for f in item.fields[: len(values)])
    decoded = item.decode(raw)
    assert {m.name: m.value for m in decoded} == values
    assert [m.name for m in decoded] == list(values)
    assert [m.unit for m in decoded] == [f.unit for f in item.fields[: len(values)]]
    for m, f in zip(decoded, item.fields, strict=False):
        if isinstance(f.format, Word):
            assert m.flags == f.format.flags(int(m.value))
    assert item.encode({m.name: m.value for m in decoded}) == raw
