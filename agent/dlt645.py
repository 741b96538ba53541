"""DL/T 645 master over a byte transport: requests, replies, follow-ups, and failure reasons.

The codec (protocols.dlt645) builds and parses frames; the transport moves bytes and keeps time;
this module joins them: one call = one request and its reply (plus follow-up frames for long
replies), with every failure mapped onto exactly one `FailureReason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.carrier.errors import (
    ModuleDown,
    ModuleReset,
    ModuleStillBusy,
    ModuleTimeout,
    RouteFailure,
)
from agent.transports import BusError, ByteTransport, NoReply, TransportError, TruncatedReply
from protocols.dlt645 import (
    Address,
    Edition,
    ErrorReply,
    Frame,
    FrameDecoder,
    Message,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    SecurityErrorReply,
    from_frame,
    lookup,
    to_frame,
)
from protocols.errors import (
    AddressMismatch,
    ChecksumError,
    FrameError,
    LocalProtocolError,
    MeterRejection,
    ModuleBusy,
    ModuleRejection,
    NodeNoAnswer,
    NodeNotFound,
    RemoteProtocolError,
    ValueFormatError,
)
from protocols.measurements import Measurement
from protocols.payloads import FailureReason

__all__ = ["Dlt645Client", "FrameSink", "ReadResult", "reason_of"]

#: a long reply never needs more follow-up frames than this (the SEQ byte is one byte)
MAX_FOLLOW_UPS = 255


class FrameSink:
    """ReplySink over the codec's stream decoder: complete on the first reply frame that answers
    `expect` (same function, from an address the request reaches), or on a reply that is
    complete but corrupt (checksum). Our own echoed request is ignored, and so is a valid reply
    that answers something else — typically a slow meter's late reply to the previous request —
    which is kept in `strays` while the window stays open for the meter asked."""

    def __init__(self, edition: Edition | None, *, expect: Frame | None = None) -> None:
        self._decoder = FrameDecoder(edition=edition)
        self._expect = expect
        self.frames: list[Frame] = []
        self.strays: list[Frame] = []
        self.errors: list[FrameError] = []

    def _answers(self, frame: Frame) -> bool:
        req = self._expect
        if req is None:
            return True
        return frame.control.code == req.control.code and (
            req.address.is_wildcard or req.address.reaches(frame.address)
        )

    def feed(self, data: bytes) -> bool:
        for event in self._decoder.feed(data):
            if isinstance(event, Frame):
                if event.control.reply:
                    (self.frames if self._answers(event) else self.strays).append(event)
            else:
                self.errors.append(event)
        return bool(self.frames) or any(isinstance(e, ChecksumError) for e in self.errors)

    @property
    def started(self) -> bool:
        return self._decoder.pending > 0 or bool(self.frames) or bool(self.errors)

    def reply(self) -> Frame:
        if self.frames:
            return self.frames[0]
        raise self.errors[-1] if self.errors else NoReply("no reply frame")


@dataclass(frozen=True, slots=True)
class ReadResult:
    di: int
    value: bytes
    """the value bytes (after the DI), follow-up parts joined"""
    measurements: list[Measurement]
    """decoded through the catalogue; empty when the DI is not catalogued"""
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    """("tx"|"rx", raw bytes) of every frame exchanged, for command replies and traces"""


class Dlt645Client:
    packs_reads = False
    """whether `read_many` packs several items into one exchange (a carrier module does; on
    RS-485 it is one read after the other, so plans keep their own sequence there)"""

    def __init__(self, transport: ByteTransport) -> None:
        self.transport = transport

    async def call(
        self,
        address: Address,
        message: Message,
        edition: Edition = Edition.V2007,
        *,
        frames: list[tuple[str, bytes]] | None = None,
    ) -> tuple[Frame, Message] | None:
        """Send one request; return the reply frame and its message (None for broadcast).

        Raises TransportError (no reply, truncated, bus), FrameError (checksum, framing),
        PayloadError, AddressMismatch, or the meter's rejection (MeterError/SecurityRejection).
        """
        request = to_frame(address, message, edition)
        raw = request.to_bytes(wakeup=self.transport.url.wakeup)
        if frames is not None:
            frames.append(("tx", raw))
        if address.is_broadcast:
            await self.transport.send(raw)
            return None
        sink = FrameSink(edition, expect=request)
        try:
            received = await self.transport.exchange(raw, sink)
        except NoReply as exc:
            if sink.strays:
                heard = ", ".join(f"C={f.control.byte:02X} from {f.address}" for f in sink.strays)
                raise NoReply(
                    f"{exc}; ignored a reply that answers something else ({heard})"
                ) from exc
            raise
        if frames is not None:
            frames.append(("rx", received))
        reply = sink.reply()
        answer = from_frame(reply)
        if isinstance(answer, ErrorReply | SecurityErrorReply):
            raise answer.error()
        return reply, answer

    async def read(
        self,
        address: Address,
        di: int,
        edition: Edition = Edition.V2007,
        *,
        frames: list[tuple[str, bytes]] | None = None,
    ) -> ReadResult:
        """Read one DI, following up (12H / 02H) while the meter says more data follows.

        `frames` (optional) also receives every frame exchanged, even when the read fails
        (an audit trail); the result's `frames` has them too when it succeeds."""
        exchanged: list[tuple[str, bytes]] = []
        try:
            return await self._read(address, di, edition, exchanged)
        finally:
            if frames is not None:
                frames.extend(exchanged)

    async def _read(
        self, address: Address, di: int, edition: Edition, frames: list[tuple[str, bytes]]
    ) -> ReadResult:
        answer = await self.call(address, ReadRequest(di), edition, frames=frames)
        assert answer is not None
        return await self._complete_read(address, di, edition, answer, frames)

    async def read_many(
        self, address: Address, dis: Sequence[int], edition: Edition = Edition.V2007
    ) -> list[ReadResult | Exception]:
        """Several items of one meter: each item's result, or the error that item failed with.
        Here one `read` after the other; a medium that can (`packs_reads`) overrides it."""
        out: list[ReadResult | Exception] = []
        for di in dis:
            try:
                out.append(await self.read(address, di, edition))
            except (TransportError, RemoteProtocolError) as exc:
                out.append(exc)
        return out

    async def raw_exchange(self, raw: bytes) -> tuple[bytes, FrameSink]:
        """A technician's raw frame on the line: the bytes that came back, and the decoder that
        read them (its frames and errors)."""
        sink = FrameSink(None)
        received = await self.transport.exchange(raw, sink)
        return received, sink

    async def _complete_read(
        self,
        address: Address,
        di: int,
        edition: Edition,
        answer: tuple[Frame, Message],
        frames: list[tuple[str, bytes]],
    ) -> ReadResult:
        """A read's first reply → the value: DI checked, follow-up frames fetched and joined."""
        reply, message = answer
        if not isinstance(message, ReadReply) or message.di != di:
            raise AddressMismatch(
                f"asked DI {di:08X}, reply carries {getattr(message, 'di', None)}"
            )
        value = bytearray(message.value)
        seq = 1
        while reply.control.follow_up:
            if seq > MAX_FOLLOW_UPS:
                raise ValueFormatError(f"DI {di:08X}: more than {MAX_FOLLOW_UPS} follow-up frames")
            more = await self.call(address, ReadFollowUpRequest(di, seq), edition, frames=frames)
            assert more is not None
            reply, message = more
            if not isinstance(message, ReadReply) or message.di != di:
                raise AddressMismatch(f"follow-up for DI {di:08X} answered another DI")
            value += message.value
            seq += 1
        item = lookup(di, edition)
        measurements = item.decode(bytes(value)) if item is not None else []
        return ReadResult(di, bytes(value), measurements, frames)


def reason_of(exc: BaseException) -> tuple[FailureReason, str]:
    """The failure reason of an exception raised by a read, with a one-line detail."""
    detail = str(exc) or type(exc).__name__
    match exc:
        case LocalProtocolError():
            raise exc  # our own bad request is a bug or bad input, never a meter's failure
        # a carrier module (agent.carrier): the module down is the bus down for every meter;
        # a meter behind a working module that could not be reached is a route failure
        case ModuleDown():
            return FailureReason.BUS_ERROR, detail
        case ModuleTimeout():
            return FailureReason.MODULE_TIMEOUT, detail
        case RouteFailure():
            return FailureReason.ROUTE_FAILURE, detail
        case ModuleStillBusy() | ModuleBusy():
            return FailureReason.MODULE_BUSY, detail
        case ModuleReset():
            return FailureReason.MODULE_TIMEOUT, detail
        case NodeNoAnswer() | NodeNotFound():
            return FailureReason.ROUTE_FAILURE, f"deny {exc.code}: {exc.meaning}"
        case ModuleRejection():
            return FailureReason.MODULE_DENY, f"deny {exc.code}: {exc.meaning}"
        case NoReply():
            return FailureReason.NO_REPLY, detail
        case TruncatedReply():
            return FailureReason.TIMEOUT, detail
        case BusError():
            return FailureReason.BUS_ERROR, detail
        case TransportError():
            return FailureReason.BUS_ERROR, detail
        case ChecksumError():
            return FailureReason.CHECKSUM, detail
        case AddressMismatch():
            return FailureReason.ADDRESS_MISMATCH, detail
        case MeterRejection():
            return FailureReason.ABNORMAL_REPLY, f"{exc.code:02X} {','.join(exc.flag_names)}"
        case ValueFormatError():
            return FailureReason.IMPLAUSIBLE_VALUE, detail
        case FrameError() | RemoteProtocolError():
            return FailureReason.FRAME_ERROR, detail
        case TimeoutError():
            return FailureReason.NO_REPLY, detail
        case OSError():
            return FailureReason.BUS_ERROR, detail
    raise exc
