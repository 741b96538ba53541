"""The DL/T 645 frames a 1376.2 data unit carries, split by the 645 codec.

1376.2 never looks inside: a frame with a good outer checksum and a bad inner one is a valid
1376.2 frame (it is real, seen from CCOs). `inner_frames` hands the carried bytes to the 645
stream decoder, so the inner error is the 645 layer's typed error (`ChecksumError`, …) beside
the good inner frames — never a failure of the outer frame.
"""

from __future__ import annotations

from protocols import dlt645
from protocols.errors import FrameError
from protocols.q13762.messages import Carried, Message

__all__ = ["inner_frames", "split_645"]


def split_645(payload: bytes, edition: dlt645.Edition | None = None) -> list[dlt645.StreamEvent]:
    """The 645 frames and frame errors in `payload` (FE preambles and several concatenated
    frames allowed), in order, as the 645 stream decoder reports them."""
    decoder = dlt645.FrameDecoder(edition=edition)
    return decoder.feed(payload) + decoder.flush()


def inner_frames(message: Message | Carried) -> list[dlt645.StreamEvent]:
    """The DL/T 645 frames inside a data unit.

    Protocol 01 / 02 (645-1997 / -2007): everything the 645 decoder finds, errors included.
    No protocol field (AFN14 answers) or 00 (transparent): the frames found, with their errors,
    only when at least one valid 645 frame is there — otherwise the bytes are taken as not 645
    at all. 03 (698.45) and other protocols: nothing (not 645).
    """
    carried = message if isinstance(message, Carried) else message.carried()
    if carried is None or not carried.frame:
        return []
    edition = carried.edition
    if edition is not None:
        return split_645(carried.frame, edition)
    if carried.protocol not in (None, 0):
        return []
    events = split_645(carried.frame)
    if not any(not isinstance(e, FrameError) for e in events):
        return []
    return events
