"""The operators' panel: a web page served by `meterlink central panel` (docs/panel.md).

Coverage pages from the store's ledger (the numbers `meterlink central report` prints), the
trend and reading history from InfluxDB, agent status from the retained MQTT status, "read
now" through `central.commands.CommandSender`; log-in with roles, every action audited in the
store. Later modules add sections and actions through `central.panel.registry`.
"""
