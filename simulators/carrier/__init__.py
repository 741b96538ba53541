"""A carrier network in a box: a CCO (the concentrator's local communication module) speaking
Q/GDW 1376.2 on its serial side, with a fleet bus's meters as its network nodes.

    [[district.bus]]
    name = "plc-1"
    protocol = "carrier"        # served on a pty / TCP / serial like any bus
      [district.bus.carrier]
      profile = "hplc"          # or "narrowband"; the other keys default per profile

    async with serve_fleet(fleet, transport="tcp", time_scale=0.01) as serving:
        host, port = serving.endpoint("plc-1").address
        module = serving.module("plc-1")          # the CCO: reset(), drop(), restore() …
    fleet.recorder.carrier                        # one CarrierRecord per 1376.2 exchange

See docs/simulator.md, "Carrier (CCO) buses".
"""

from simulators.carrier.config import PROFILES, CarrierConfig, CarrierConfigError
from simulators.carrier.ideal import Ideal, ideal_time
from simulators.carrier.latency import HPLC_POINT, HPLC_READ, NARROWBAND, Mixture, PerHop
from simulators.carrier.module import CarrierModule, Line, RouterState
from simulators.carrier.network import Network, Node, Outages, plan_network
from simulators.carrier.serve import serve_carrier_port

__all__ = [
    "HPLC_POINT",
    "HPLC_READ",
    "NARROWBAND",
    "PROFILES",
    "CarrierConfig",
    "CarrierConfigError",
    "CarrierModule",
    "Ideal",
    "Line",
    "Mixture",
    "Network",
    "Node",
    "Outages",
    "PerHop",
    "RouterState",
    "ideal_time",
    "plan_network",
    "serve_carrier_port",
]
