"""Meter models the simulator knows: labels and capabilities, as data.

The labels are those of real product families; the behaviour is the simulator's generic
DL/T 645 / Modbus meter (see docs/simulator.md), not a claim about any vendor's firmware.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODELS", "Model", "model"]


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    manufacturer: str
    protocol: str
    """"dlt645-2007" | "dlt645-1997" | "modbus" (the archive's protocol names)"""
    phases: int
    tariffs: int
    prepaid: bool
    """a cost-control (费控) model: money wallet, ESAM, 03H top-up"""
    modbus_map: str | None = None
    reply_limit: int = 200
    """longest data field of one reply; longer answers are split into follow-up frames"""
    tariff_denied: tuple[str, ...] = ()
    """hex prefixes of tariff set-up DIs this firmware does not know (answered "no such data"):
    old firmware without holidays, weekend rule or programming-event counters"""


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("DDZY666", "CHINT", "dlt645-2007", 1, 4, True),
        Model("DTZY666", "CHINT", "dlt645-2007", 3, 4, True),
        Model("DDZY71", "Linyang", "dlt645-2007", 1, 4, True),
        Model("DTSD1352", "Holley", "dlt645-2007", 3, 4, False),
        Model("DDS1997", "Holley", "dlt645-1997", 1, 4, False),
        Model("DTSD-T63", "Generic", "dlt645-2007", 3, 63, False),
        # a 2009-era firmware: no public holidays, no weekend rule, no event counters
        Model(
            "DDS-2009",
            "Generic",
            "dlt645-2007",
            1,
            4,
            False,
            tariff_denied=("040300", "04000205", "040008", "0330"),
        ),
        Model("DTSU666", "CHINT", "modbus", 3, 1, False, modbus_map="chint_dtsu666"),
        Model("SDM630", "Eastron", "modbus", 3, 1, False, modbus_map="eastron_sdm630"),
    )
}


def model(name: str) -> Model:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown meter model {name!r}; known: {', '.join(MODELS)}") from None
