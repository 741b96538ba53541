"""Hypothesis strategies for 1376.2 data units, information fields, addresses and frames.

`MESSAGES[cls]` draws instances of every registered message class with every field over its
whole range (a test checks that no registered class is missing here).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

import protocols.q13762 as q
from protocols.q13762 import (
    MESSAGES,
    DeviceNode,
    Direction,
    DownInfo,
    Frame,
    Message,
    NodeAddress,
    NodeEntry,
    NodeInfo,
    Rate,
    RawMessage,
    ReportedNode,
    UpInfo,
    VendorInfo,
    to_frame,
)
from protocols.q13762.frame import MAX_FN, UP_RESERVED_MASK

u4 = st.integers(0, 15)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
node_addresses = st.binary(min_size=6, max_size=6).map(NodeAddress)
#: a frame behind a one-byte length / a two-byte length (kept small: frames stay short)
frame8 = st.binary(max_size=255)
frame16 = st.binary(max_size=600)
clock_times = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda t: t.replace(microsecond=0)
)
latin2 = st.text(st.characters(min_codepoint=0, max_codepoint=255), min_size=2, max_size=2)
vendors = st.builds(
    VendorInfo,
    latin2,
    latin2,
    st.binary(min_size=3, max_size=3),
    st.binary(min_size=2, max_size=2).map(lambda b: b.hex().upper()),
)


def _tuples(strategy: st.SearchStrategy[Any], max_size: int = 12) -> st.SearchStrategy[Any]:
    return st.lists(strategy, max_size=max_size).map(tuple)


entries = st.builds(NodeEntry, node_addresses, u8)

STRATEGIES: dict[type[Message], st.SearchStrategy[Any]] = {
    q.Confirm: st.one_of(
        st.builds(q.Confirm, st.binary(min_size=4, max_size=4), u16), st.just(q.Confirm(None))
    ),
    q.Deny: st.builds(q.Deny, u8),
    q.VendorReply: st.builds(q.VendorReply, vendors),
    q.MainNode: st.builds(q.MainNode, node_addresses),
    q.QueryBroadcastDelay: st.builds(q.QueryBroadcastDelay, u8, frame8),
    q.BroadcastDelay: st.builds(q.BroadcastDelay, u16, u8, frame8),
    q.ModuleInfo: st.builds(
        q.ModuleInfo,
        comm_type=u4,
        route_mgmt=st.booleans(),
        node_info_mode=st.booleans(),
        reading_mode=st.integers(0, 3),
        delay_params=st.integers(0, 7),
        failover_initiator=st.integers(0, 3),
        broadcast_confirm=st.booleans(),
        broadcast_channel_mode=st.integers(0, 3),
        channels=st.integers(0, 31),
        power_fail_info=st.integers(0, 7),
        monitor_max_timeout_s=u8,
        broadcast_max_timeout_s=u16,
        max_frame_len=u16,
        max_file_packet=u16,
        upgrade_wait_s=u8,
        main_node_addr=node_addresses,
        max_nodes=u16,
        node_count=u16,
        protocol_release_date=st.binary(min_size=3, max_size=3),
        protocol_record_date=st.binary(min_size=3, max_size=3),
        vendor=vendors,
        rates=_tuples(st.builds(Rate, st.integers(0, 0x7FFF), st.booleans()), 15),
        reserved=st.binary(min_size=2, max_size=2),
        mode4_reserved=u4,
    ),
    q.SetMainNode: st.builds(q.SetMainNode, node_addresses),
    q.SetEventReporting: st.builds(q.SetEventReporting, st.booleans()),
    q.StartBroadcast: st.builds(q.StartBroadcast, u8, frame8),
    q.SetMonitorTimeout: st.builds(q.SetMonitorTimeout, u8),
    q.NodeCount: st.builds(q.NodeCount, u16, u16),
    q.QueryNodes: st.builds(q.QueryNodes, u16, u8),
    q.QueryTopology: st.builds(q.QueryTopology, u16, u8),
    q.NodeList: st.builds(
        q.NodeList,
        u16,
        _tuples(
            st.builds(
                NodeInfo,
                node_addresses,
                st.integers(0, 7),
                st.integers(0, 7),
                u4,
                u4,
                st.integers(0, 3),
            ),
            30,
        ),
    ),
    q.RouterStatus: st.builds(
        q.RouterStatus,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        u4,
        u16,
        u16,
        u16,
        u8,
        u16,
        st.tuples(u8, u8, u8),
        st.tuples(u8, u8, u8),
        st.booleans(),
    ),
    q.AddNodes: st.builds(q.AddNodes, _tuples(entries, 30)),
    q.DeleteNodes: st.builds(q.DeleteNodes, _tuples(node_addresses, 30)),
    q.StartSearch: st.builds(q.StartSearch, clock_times, u16, u8, u8),
    q.Forward: st.builds(q.Forward, u8, frame8),
    q.ReportNodes: st.builds(
        q.ReportNodes, _tuples(st.builds(ReportedNode, node_addresses, u8, u16))
    ),
    q.ReportReadData: st.builds(q.ReportReadData, u16, u8, frame8, u16),
    q.ReportRouteChange: st.builds(q.ReportRouteChange, u8),
    q.ReportNodeDevices: st.builds(
        q.ReportNodeDevices,
        _tuples(st.builds(DeviceNode, node_addresses, u8, u16, u8, _tuples(entries, 3)), 5),
    ),
    q.ReportEvent: st.builds(q.ReportEvent, u8, u8, frame8),
    q.MonitorRequest: st.builds(q.MonitorRequest, u8, frame8, u8, _tuples(node_addresses, 5)),
    q.MonitorReply: st.builds(q.MonitorReply, u8, frame8, u16),
    q.RouterReadRequest: st.builds(q.RouterReadRequest, u8, node_addresses, u16),
    q.RouterReadAnswer: st.builds(q.RouterReadAnswer, u8, frame8, u8, _tuples(node_addresses, 5)),
    q.ClockAnswer: st.builds(q.ClockAnswer, clock_times),
    q.CorrectionRequest: st.builds(q.CorrectionRequest, node_addresses, u16, frame8),
    q.CorrectionAnswer: st.builds(q.CorrectionAnswer, frame8),
    q.ConcurrentRead: st.builds(q.ConcurrentRead, u8, frame16, u8),
    q.ConcurrentReply: st.builds(q.ConcurrentReply, u8, frame16),
}
# data units without data
for _cls in set(MESSAGES.values()):
    if issubclass(_cls, q.NoData):
        STRATEGIES[_cls] = st.just(_cls())

down_infos = st.builds(
    DownInfo,
    seq=u8,
    route_flag=st.booleans(),
    affiliated_flag=st.booleans(),
    conflict_flag=st.booleans(),
    relay_level=u4,
    channel=u4,
    ecc=u4,
    reply_bytes=u8,
    rate=st.integers(0, 0x7FFF),
    rate_unit=st.booleans(),
)
up_infos = st.builds(
    UpInfo,
    seq=u8,
    route_flag=st.booleans(),
    relay_level=u4,
    channel=u4,
    phase=u4,
    channel_characteristic=u4,
    command_quality=u4,
    reply_quality=u4,
    event_flag=st.booleans(),
    reserved=st.integers(0, (1 << 48) - 1).map(lambda r: r & UP_RESERVED_MASK),
)


@st.composite
def frames_of(draw: st.DrawFn, direction: Direction, message: Message) -> Frame:
    """A frame carrying `message` with random R bits, C mode, PRM and address field."""
    info = draw(down_infos if direction is Direction.DOWN else up_infos)
    addressed = draw(st.booleans())
    src = draw(node_addresses) if addressed else None
    dst = draw(node_addresses) if addressed else None
    relays = ()
    if addressed and direction is Direction.DOWN:
        relays = tuple(draw(st.lists(node_addresses, max_size=3)))
    return to_frame(
        message,
        info,
        src=src,
        dst=dst,
        relays=relays,
        comm_mode=draw(st.integers(0, 63)),
        prm=draw(st.booleans()),
    )


#: a registered (direction, class) and an instance
any_registered = st.sampled_from(sorted(MESSAGES.items(), key=lambda kv: kv[0])).flatmap(
    lambda kv: st.tuples(st.just(kv[0][0]), STRATEGIES[kv[1]])
)

unregistered_units = st.tuples(st.sampled_from(Direction), u8, st.integers(1, MAX_FN)).filter(
    lambda t: t not in MESSAGES
)


@st.composite
def any_frames(draw: st.DrawFn) -> Frame:
    """A frame of a registered data unit (mostly) or of an unknown AFN/Fn with random data."""
    if draw(st.integers(0, 4)):
        direction, message = draw(any_registered)
    else:
        direction, afn, fn = draw(unregistered_units)
        message = RawMessage(afn, fn, draw(st.binary(max_size=80)))
    return draw(frames_of(direction, message))


encoded_frames = any_frames().map(lambda f: f.to_bytes())
