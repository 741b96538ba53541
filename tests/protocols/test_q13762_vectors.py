"""Every public 1376.2 vector decodes to its `expect` (valid ones) or to the typed error
(invalid ones): whole, one byte at a time, and wrapped in FE bytes and garbage; decode → build
gives the same bytes, at the frame and at the message layer; the embedded 645 frames are split
by the 645 codec (QP37: a good outer, a bad inner checksum)."""

from __future__ import annotations

from typing import Any

import pytest

from protocols import dlt645
from protocols.errors import ChecksumError, FrameError, FramingError
from protocols.q13762 import (
    ConcurrentRead,
    Confirm,
    Frame,
    FrameDecoder,
    ModuleInfo,
    StartSearch,
    decode_frame,
    encode_frame,
    from_frame,
    inner_frames,
    to_frame,
)
from protocols.q13762.archive import clock_bytes
from protocols.q13762.describe import describe
from tests.protocols.q13762_data import (
    FRAMES,
    INVALID,
    STREAMS,
    VECTORS,
    frame_bytes,
    ids,
    raw,
)

VALID = FRAMES + STREAMS


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


def _decoded(v: dict[str, Any]) -> Frame:
    if v["kind"] == "1376.2":
        return decode_frame(raw(v))
    decoder = FrameDecoder()
    (frame,) = [e for e in decoder.feed(raw(v)) + decoder.flush() if isinstance(e, Frame)]
    return frame


def check_frame(frame: Frame, v: dict[str, Any]) -> None:
    """The frame-level `expect` fields of a vector."""
    e = v["expect"]
    wire = frame_bytes(v)
    assert frame.length == e["L"] == len(wire)
    assert f"{frame.control.byte:02X}" == e["C"]
    assert frame.direction.value == e["dir"]
    assert int(frame.prm) == e["prm"]
    assert frame.comm_mode == e["comm_mode"]
    assert _hex(frame.info.to_bytes()) == e["R"]
    assert frame.seq == e["seq"]
    assert int(frame.info.route_flag) == e["r_route_flag"]
    assert int(frame.info.module_flag) == e["r_module_flag"]
    assert frame.info.relay_level == e["r_relay_level"]
    assert frame.addressed is e["address_field"]
    assert (frame.src and frame.src.digits) == e.get("src")
    assert (frame.dst and frame.dst.digits) == e.get("dst")
    assert [r.digits for r in frame.relays] == e.get("relays", [])
    assert f"{frame.afn:02X}" == e["afn"]
    assert frame.fn == e["fn"]
    assert _hex(frame.dt) == e["dt"]
    assert _hex(frame.data) == e["data"]
    assert f"{wire[-2]:02X}" == e["cs_in_frame"] == e["cs_computed"]


# expect["fields"] keys that name the same value differently here, and how to get it
def _rates(m: ModuleInfo) -> str:
    return _hex(b"".join(r.word.to_bytes(2, "little") for r in m.rates))


DERIVED: dict[str, Any] = {
    "reserved_or_n_affiliated": lambda m: m.reserved,  # F1F1 byte 2: kept as "reserved"
    "start_time_bcd_ssmmhhDDMMYY": lambda m: _hex(clock_bytes(m.start)),
    "mode_bytes": lambda m: _hex(m.payload()[:6]),
    "protocol_release_date_DDMMYY": lambda m: _hex(m.protocol_release_date),
    "protocol_record_date_DDMMYY": lambda m: _hex(m.protocol_record_date),
    "vendor_info": lambda m: _hex(m.payload()[30:39]),
    "rates": _rates,
    "note": lambda m: "no status/wait bytes (0 data bytes)" if m.status_bytes is None else None,
}


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_whole(v: dict[str, Any]) -> None:
    check_frame(_decoded(v), v)


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_fields(v: dict[str, Any]) -> None:
    expected = {
        k: value
        for k, value in v["expect"].get("fields", {}).items()
        if not k.startswith("inner_645")
    }
    if not expected:
        return
    message = from_frame(_decoded(v))
    shown = describe(_decoded(v))["fields"]
    for key, value in expected.items():
        got = DERIVED[key](message) if key in DERIVED else shown[key]
        assert got == value, (key, got, value)


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_inner_645(v: dict[str, Any]) -> None:
    e = v["expect"]
    events = inner_frames(from_frame(_decoded(v)))
    if "inner_645" not in e:
        assert events == []
        return
    wire = bytes.fromhex(e["inner_645"])
    preamble = len(wire) - len(wire.lstrip(b"\xfe"))
    first = events[0]
    if e["inner_645_cs_ok"]:
        assert isinstance(first, dlt645.Frame)
        assert dlt645.encode_frame(first, wakeup=preamble) == wire
        assert first.address.digits == e["inner_645_meter"]
        assert f"{first.control.byte:02X}" == e["inner_645_C"]
        assert _hex(first.data) == e["inner_645_data_minus33"]
        assert all(isinstance(ev, dlt645.Frame) for ev in events)
    else:
        # the outer frame is fine; the 645 layer rejects the inner one
        assert isinstance(first, ChecksumError)
        assert first.raw == wire[preamble:]
        shown = describe(_decoded(v))["inner"][0]
        assert shown["address"] == e["inner_645_meter"]
        assert shown["control"] == e["inner_645_C"]
        assert shown["data"] == e["inner_645_data_minus33"]
        assert shown["error"]["type"] == "ChecksumError"


def test_qp26_carries_fourteen_645_frames() -> None:
    (v,) = [v for v in VECTORS if v["id"] == "QP26"]
    message = from_frame(decode_frame(raw(v)))
    assert isinstance(message, ConcurrentRead)
    events = inner_frames(message)
    assert len(events) == 14
    assert all(isinstance(e, dlt645.Frame) and e.di == 0x00010000 for e in events)


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_byte_at_a_time(v: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    events: list[Any] = []
    for b in raw(v):
        events += decoder.feed(bytes((b,)))
    events += decoder.flush()
    assert [type(e).__name__ for e in events] == ["Frame"]
    check_frame(events[0], v)
    assert decoder.pending == 0
    assert decoder.skipped_bytes == len(raw(v)) - len(frame_bytes(v))


WRAPPERS = [
    (b"\xfe" * 11, b""),
    (b"\x00\x68\x16\xff\x68", b"\x16\x16"),  # false starts right before the frame
    (b"\x68\xd0\x07\x43\x00\x00\x00\x00\x00\x00", b""),  # a header promising 2000 bytes
    (b"\x68\x0f\x00\x43\x00\x00\x00\x00\x00\x00\x12", b""),  # a 15-byte frame cut short
    (b"\xfe\xfe", b"\x68\x68\x68"),
    (b"\x68\x01\x02\x03\x04\x05\x06\x68\x11\xc8", b"\x00"),  # a 645 header promising 200
]


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
@pytest.mark.parametrize(("before", "after"), WRAPPERS)
def test_wrapped_in_garbage(v: dict[str, Any], before: bytes, after: bytes) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(before + raw(v) + after) + decoder.flush()
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == 1, events
    check_frame(frames[0], v)
    assert all(isinstance(e, FrameError) for e in events if not isinstance(e, Frame))


def test_all_vectors_back_to_back_one_byte_at_a_time() -> None:
    stream = b"".join(b"\xfe\x00" + raw(v) for v in VECTORS)
    decoder = FrameDecoder()
    events: list[Any] = []
    for b in stream:
        events += decoder.feed(bytes((b,)))
    events += decoder.flush()
    frames = [e for e in events if isinstance(e, Frame)]
    assert [encode_frame(f) for f in frames] == [frame_bytes(v) for v in VECTORS if v["valid"]]


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_round_trip_frame(v: dict[str, Any]) -> None:
    assert encode_frame(_decoded(v)) == frame_bytes(v)


@pytest.mark.parametrize("v", VALID, ids=ids(VALID))
def test_round_trip_message(v: dict[str, Any]) -> None:
    """decode → typed message → build the frame again → the same bytes."""
    frame = _decoded(v)
    message = from_frame(frame)
    rebuilt = to_frame(
        message,
        frame.info,
        src=frame.src,
        dst=frame.dst,
        relays=frame.relays,
        comm_mode=frame.comm_mode,
        prm=frame.prm,
    )
    assert rebuilt == frame
    assert rebuilt.to_bytes() == frame_bytes(v)


def test_typed_messages_of_some_vectors() -> None:
    def message(vid: str) -> Any:
        (v,) = [v for v in VECTORS if v["id"] == vid]
        return from_frame(_decoded(v))

    assert message("QP43") == Confirm(None, 0)
    assert message("QP33") == Confirm(b"\xff\xff\xff\xff", 0)
    search = message("QP11")
    assert isinstance(search, StartSearch)
    assert search.start.isoformat() == "2012-05-10T12:12:00"
    info = message("QP44")
    assert isinstance(info, ModuleInfo)
    assert (info.max_frame_len, info.monitor_max_timeout_s, info.max_nodes) == (1103, 60, 1152)
    assert (info.vendor.vendor_code, info.vendor.chip_code, info.vendor.version) == (
        "FC",
        "F8",
        "2401",
    )
    assert info.rates[0].value == 100
    assert info.rates[0].kbps


# --- the invalid ones -----------------------------------------------------------------------
REJECTED: dict[str, tuple[type[FrameError], str]] = {
    "QP27": (ChecksumError, "checksum found 61, computed 62"),
    "QP29": (ChecksumError, "checksum found 00, computed 4E"),
    "QP35": (ChecksumError, "checksum found 40, computed 43"),
    "QP42": (FramingError, "L=15 but 18 bytes given (3 after the end byte)"),
}


def test_every_invalid_vector_has_its_expected_error() -> None:
    assert set(REJECTED) == set(ids(INVALID))


@pytest.mark.parametrize("v", INVALID, ids=ids(INVALID))
def test_invalid_vectors_are_rejected_by_name(v: dict[str, Any]) -> None:
    kind, message = REJECTED[v["id"]]
    with pytest.raises(FrameError) as err:
        decode_frame(raw(v))
    assert type(err.value) is kind
    assert str(err.value) == message


@pytest.mark.parametrize("v", INVALID, ids=ids(INVALID))
def test_invalid_frame_does_not_hide_its_neighbours(v: dict[str, Any]) -> None:
    good = raw(FRAMES[0])
    decoder = FrameDecoder()
    events = decoder.feed(good + raw(v) + good) + decoder.flush()
    frames = [e for e in events if isinstance(e, Frame)]
    assert [encode_frame(f) for f in frames] == [good, good]
    errors = [e for e in events if not isinstance(e, Frame)]
    assert errors
    assert isinstance(errors[0], REJECTED[v["id"]][0] | FramingError)
