"""The carrier network behind a CCO: one node (STA) per meter, with its hop depth, link quality,
phase and outage schedule, and the module's node list at power-up.

Everything is drawn when the fleet is parsed, from generators seeded by the fleet's seed and
the bus and meter names (like meter faults), so a test can look at the plan — which meters
the module is missing, which nodes drop out and when — without serving anything.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from protocols.dlt645 import Edition
from protocols.q13762 import NodeAddress, NodeEntry, Protocol
from simulators.carrier.config import CarrierConfig
from simulators.faults import rng_for
from simulators.meter import Meter

__all__ = ["Network", "Node", "Outages", "plan_network"]


class Outages:
    """When a node is out of the network: alternating stays and absences, drawn lazily from
    its own seeded generator, in module seconds (unscaled, since power-up)."""

    def __init__(
        self, rng: random.Random, on_s: tuple[float, float], off_s: tuple[float, float]
    ) -> None:
        self._rng = rng
        self._on, self._off = on_s, off_s
        # change points: absent on [c[2k], c[2k+1]), present elsewhere
        self._changes: list[float] = []
        self._horizon = 0.0

    def _extend(self, until: float) -> None:
        while self._horizon <= until:
            start = self._horizon + max(self._rng.uniform(*self._on), 1e-3)
            end = start + max(self._rng.uniform(*self._off), 1e-3)
            self._changes += [start, end]
            self._horizon = end

    def absent(self, t: float) -> bool:
        self._extend(t)
        return bisect.bisect_right(self._changes, t) % 2 == 1

    def next_return(self, t: float) -> float:
        """The first moment after `t` the node comes back."""
        self._extend(t)
        i = bisect.bisect_right(self._changes, t)
        if i % 2 == 0:
            i += 1  # present now: the end of the next absence
        while i >= len(self._changes):
            self._extend(self._horizon + 1.0)
        return self._changes[i]

    def windows(self, until: float) -> list[tuple[float, float]]:
        """The absences that start before `until`."""
        self._extend(until)
        pairs = zip(self._changes[::2], self._changes[1::2], strict=True)
        return [(a, b) for a, b in pairs if a < until]


@dataclass
class Node:
    """A node of the network: the STA of a meter, or a stale entry with no meter behind it."""

    address: NodeAddress
    meter: Meter | None
    protocol: int
    hops: int = 1
    quality: int = 15
    """last-hop link quality, 1 (worst) … 15"""
    phase: int = 1
    channel_characteristic: int = 1
    """1 single-phase meter, 4 three-phase"""
    failure_weight: float = 1.0
    """route failures: this node's multiple of the bus's mean rate (weak links fail more)"""
    outages: Outages | None = None

    @property
    def meter_id(self) -> str | None:
        return self.meter.identity.meter_id if self.meter is not None else None

    def absent(self, t: float) -> bool:
        """Out of the network at module time `t` (a stale node is never in it)."""
        if self.meter is None:
            return True
        return self.outages is not None and self.outages.absent(t)


@dataclass
class Network:
    nodes: dict[NodeAddress, Node]
    """every node that exists, by address: the meters' STAs and the stale entries"""
    initial: list[NodeEntry]
    """the module's node list at power-up, in order"""
    missing: list[str] = field(default_factory=list)
    """meter ids the module's list lacks at power-up"""
    extra: list[str] = field(default_factory=list)
    """addresses of the stale nodes (no meter) in the list at power-up"""

    def node(self, address: NodeAddress) -> Node | None:
        return self.nodes.get(address)

    def dropping(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.outages is not None]


def _protocol(meter: Meter) -> int:
    edition = meter.identity.edition
    return Protocol.DLT645_1997 if edition is Edition.V1997 else Protocol.DLT645_2007


def plan_network(meters: list[Meter], config: CarrierConfig, seed: int | str, bus: str) -> Network:
    rng = rng_for(seed, "carrier", bus)
    depths = sorted(config.hops)
    weights = [config.hops[h] for h in depths]
    nodes: dict[NodeAddress, Node] = {}
    for meter in meters:
        address = NodeAddress.parse(meter.identity.address)
        if address in nodes:
            continue  # a duplicated address: the first meter's STA holds it
        mrng = rng_for(seed, "carrier", bus, meter.identity.meter_id)
        hops = mrng.choices(depths, weights)[0]
        quality = min(15, max(1, round(mrng.gauss(14.0 - 2.5 * (hops - 1), 1.2))))
        three_phase = meter.identity.phases == 3
        outages = None
        if mrng.random() < config.dropout:
            outages = Outages(
                rng_for(seed, "outage", bus, meter.identity.meter_id),
                config.dropout_on_s,
                config.dropout_off_s,
            )
        nodes[address] = Node(
            address,
            meter,
            _protocol(meter),
            hops=hops,
            quality=quality,
            phase=1 if three_phase else mrng.randint(1, 3),
            channel_characteristic=4 if three_phase else 1,
            outages=outages,
        )
    mean_weakness = sum(16 - n.quality for n in nodes.values()) / max(1, len(nodes))
    for n in nodes.values():
        n.failure_weight = (16 - n.quality) / mean_weakness if mean_weakness else 1.0
    real = list(nodes.values())
    n_missing = round(config.missing * len(real))
    missing = set(rng.sample(range(len(real)), n_missing)) if n_missing else set()
    initial = [NodeEntry(n.address, n.protocol) for i, n in enumerate(real) if i not in missing]
    if len(initial) > config.max_nodes:  # more meters than the module holds
        kept = {e.addr for e in initial[: config.max_nodes]}
        missing = {i for i, n in enumerate(real) if n.address not in kept}
        initial = initial[: config.max_nodes]
    extra: list[str] = []
    while len(extra) < config.extra and len(initial) < config.max_nodes:
        address = NodeAddress.parse(f"99{rng.randrange(10**10):010d}")
        if address in nodes:
            continue
        nodes[address] = Node(address, None, Protocol.DLT645_2007, quality=0, phase=0)
        initial.append(NodeEntry(address, Protocol.DLT645_2007))
        extra.append(address.digits)
    return Network(
        nodes,
        initial,
        missing=[real[i].meter_id or "" for i in sorted(missing)],
        extra=extra,
    )
