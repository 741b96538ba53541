"""Failures a carrier module adds to those of a line, each mapped onto one `FailureReason`.

    ModuleDown       BusError          the module answers nothing at all (start-up query
                                        unanswered, line gone): `bus_error` for every meter
    ModuleTimeout    TransportError    the module took a request and said nothing about it
                                        within its monitor timeout: `module_timeout`
    RouteFailure     TransportError    the module answered, but could not get the meter's
                                        reply through the network: `route_failure`
    ModuleStillBusy  TransportError    deny 9 (network forming) for longer than the read may
                                        wait: `module_busy`
    ModuleReset      TransportError    the module restarted with the request in flight (the
                                        client sends it again after the re-sync)

Module denies that are not handled (a vendor code, "not supported", a format error) stay
`protocols.errors.ModuleRejection`s and become `module_deny` with the code in the detail.
"""

from __future__ import annotations

from agent.transports.errors import BusError, TransportError

__all__ = ["ModuleDown", "ModuleReset", "ModuleStillBusy", "ModuleTimeout", "RouteFailure"]


class ModuleDown(BusError):
    """The carrier module does not answer at all. Every meter behind it fails with
    `bus_error` until it answers again (the client re-probes it, see docs/carrier.md)."""


class ModuleTimeout(TransportError, TimeoutError):
    """The module did not answer a request within its own monitor timeout (AFN03 F10)."""


class RouteFailure(TransportError):
    """The module tried and got no answer from the meter: an empty AFN F1 F1 / AFN13 F1 reply,
    deny 0 / 11 (no answer), deny 12 for a node in the module's archive that has not joined the
    network, or a router-led read the module gave up. `code` is the deny code, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModuleStillBusy(TransportError):
    """Deny 9 (the network is forming, route optimisation) for longer than `busy_wait_s`."""


class ModuleReset(TransportError):
    """The module reported a restart (spontaneous AFN03 F10) while this request was in flight."""
