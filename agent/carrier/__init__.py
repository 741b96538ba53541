"""Carrier modules (the CCO of an HPLC or narrowband power-line network) as a meter bus.

The agent talks to the module over a plain byte stream (`agent.transports`: a serial port, or a
serial server over TCP) in Q/GDW 1376.2 frames (`protocols.q13762`), which carry the DL/T 645
frames of the meters behind it. `CarrierClient` (in `agent.carrier.client`) presents the same
interface as `agent.dlt645.Dlt645Client`, so plans, commands and technician tools read a meter
behind a module exactly as one on RS-485: the plan never knows the medium.

    link    the module's line: one reader task, SEQ pairs replies with requests (any order)
    client  start-up, archive sync, the concurrency window, deny handling, reading modes
    router  router-led reading (AFN14): the module asks, the agent answers from its queue
    errors  what a carrier adds to the failure reasons

This package is imported lazily (only for carrier:// buses); `errors` has no dependencies so
`agent.dlt645.reason_of` can map its classes.
"""
