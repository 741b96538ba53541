"""Remote top-up (远程充值) and 费控 relay orders, central side.

Building blocks below the order service (docs/topup.md "Executing steps (agent, HSM)"):

* `central.topup.hsm` — the encryption machine (密码机): the `SecurityModule` interface, typed
  errors mapped to `protocols.topup.SecurityReason`, `NetworkHsm` for ``meterlink sim hsm``,
  and `load_security_module("module:Class", options)`, the registry point for a vendor's machine;
* `central.topup.steps` — the agent's ``security`` command: step builders, the typed reply
  (`SecurityResult`, `PurchaseState`) and the read-back rule (`reconcile`).
"""
