"""meterlink agent package."""
