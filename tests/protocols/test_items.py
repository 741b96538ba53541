"""Items as technicians, plans and commands name them: hex DIs or measurement names."""

from __future__ import annotations

import pytest

from protocols.dlt645 import Edition, format_di, parse_item
from protocols.errors import LocalProtocolError


@pytest.mark.parametrize(
    ("text", "edition", "di"),
    [
        ("00010000", Edition.V2007, 0x00010000),
        ("0201ff00", Edition.V2007, 0x0201FF00),
        ("voltage_a_v", Edition.V2007, 0x02010100),
        ("balance_yuan", Edition.V2007, 0x00900200),
        ("B611", Edition.V1997, 0xB611),
        ("voltage_a_v", Edition.V1997, 0xB611),
    ],
)
def test_items_by_hex_or_by_name(text: str, edition: Edition, di: int) -> None:
    assert parse_item(text, edition) == di
    assert parse_item(format_di(di, edition), edition) == di


@pytest.mark.parametrize(
    ("text", "edition"),
    [("B611", Edition.V2007), ("1234", Edition.V2007), ("balance", Edition.V2007)],
)
def test_what_is_neither_is_refused_by_name(text: str, edition: Edition) -> None:
    with pytest.raises(LocalProtocolError, match=repr(text)):
        parse_item(text, edition)


def test_format_di_width_follows_the_edition() -> None:
    assert format_di(0x10000, Edition.V2007) == "00010000"
    assert format_di(0xB611, Edition.V1997) == "B611"
