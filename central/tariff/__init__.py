"""The tariff execution check (电价执行正确, docs/tariff.md): the utility's plans (`plans`), the
six checks per meter and day (`check`), a day over the archive and its KPI (`day`), the tables
in the central store (`store`), reports and work orders (`report`), the values to write
(`expect`), the plans over HTTP (`http`), the panel's section (`panel`), the CLI (`cli`)."""
