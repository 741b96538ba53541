"""meterlink simulators package."""
