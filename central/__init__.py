"""meterlink central package."""
