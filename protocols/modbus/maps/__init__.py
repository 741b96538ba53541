"""One module per Modbus meter model; each defines `MAP` (a `RegisterMap`)."""
