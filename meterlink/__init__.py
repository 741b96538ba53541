"""The `meterlink` command line front end."""
