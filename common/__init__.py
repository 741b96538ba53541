"""The foundation every meterlink package builds on: strict TOML configuration and logging.

Below `agent/`, `central/` and `simulators/` (which import it), above nothing but the standard
library; the `meterlink` command line sits on top of all of them. `scripts/check` enforces the
layers with import-linter (see `[tool.importlinter]` in pyproject.toml).
"""
