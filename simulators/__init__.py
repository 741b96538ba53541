"""meterlink meter simulator: meters, buses, lines and faults that behave like the field.

In-process API (tests, benches):

    from simulators import parse_fleet, serve_fleet
    fleet = parse_fleet(TOML)                       # or load_fleet(path)
    fleet.world.freeze(datetime(2026, 3, 10, 23, 59, 30))
    async with serve_fleet(fleet, transport="tcp") as serving:
        host, port = serving.endpoint("485-1").address
        ...                                         # talk DL/T 645 to it
    fleet.meter("000000000001").values()["energy_import_total_kwh"]
    fleet.recorder.records                          # who answered what
    fleet.inject("000000000001", "drop_reply", on="topup")   # a chaos fault
    fleet.credits.repeated_counts()                 # [] = no meter credited a count twice
    serving.module("plc-1")                         # a carrier bus's CCO (simulators.carrier)

`meterlink sim hsm` (simulators.hsm) serves the fleet's encryption machine; `meterlink sim serve
--control` (simulators.control) lets a test in another process inject faults. See
docs/simulator.md.
"""

from simulators.bus import Bus, Transmission
from simulators.clock import MeterClock, WorldClock
from simulators.esam import EncryptionMachine, Esam
from simulators.faults import BusFaults, FaultBook, InjectedFault, MeterFaults, NoiseWindow
from simulators.fleet import Fleet, FleetError, archive_entries, load_fleet, parse_fleet
from simulators.meter import FreezeRecord, Identity, Meter
from simulators.models import MODELS, Model
from simulators.record import (
    CARRIER_OUTCOMES,
    OUTCOMES,
    AnswerRecord,
    CarrierRecord,
    CreditLog,
    CreditRecord,
    Recorder,
)
from simulators.relay import Relay
from simulators.server import Endpoint, Serving, serve_fleet
from simulators.wallet import Limits, PurchaseRecord, Wallet

__all__ = [
    "CARRIER_OUTCOMES",
    "MODELS",
    "OUTCOMES",
    "AnswerRecord",
    "Bus",
    "BusFaults",
    "CarrierRecord",
    "CreditLog",
    "CreditRecord",
    "EncryptionMachine",
    "Endpoint",
    "Esam",
    "FaultBook",
    "Fleet",
    "FleetError",
    "FreezeRecord",
    "Identity",
    "InjectedFault",
    "Limits",
    "Meter",
    "MeterClock",
    "MeterFaults",
    "Model",
    "NoiseWindow",
    "PurchaseRecord",
    "Recorder",
    "Relay",
    "Serving",
    "Transmission",
    "Wallet",
    "WorldClock",
    "archive_entries",
    "load_fleet",
    "parse_fleet",
    "serve_fleet",
]
