"""The tariff plans over HTTP, on the panel's server (its log-in, sessions and audit trail):

- ``GET /api/tariff/plans``: the plan file in force (TOML), any logged-in user; header
  ``X-Plans-Digest``.
- ``PUT /api/tariff/plans``: replace it (body: the TOML file), the **admin** role only, with the
  session's CSRF token in ``X-CSRF-Token``. Checked strictly first: a bad file is a 400 whose
  text names the key, and nothing changes. Every attempt is in the audit trail.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from central.panel.auth import Session, audit, audit_done
from common.config import ConfigError

__all__ = ["get_plans", "put_plans"]

#: a plan file larger than this is refused (the panel's other requests are limited to 64 KiB)
MAX_PLANS_BYTES = 1 << 20


async def get_plans(request: web.Request) -> web.StreamResponse:
    from central.panel.app import SERVICES
    from central.tariff.store import TariffStore

    svc = request.app[SERVICES]
    book = await asyncio.to_thread(lambda: TariffStore(svc.store).plans())
    if book is None:
        raise web.HTTPNotFound(text="no tariff plans yet: PUT them (admin role)")
    return web.Response(
        text=book.text,
        content_type="application/toml",
        headers={"X-Plans-Digest": book.digest},
    )


async def put_plans(request: web.Request) -> web.StreamResponse:
    from central.panel.app import SERVICES, SESSION, _remote
    from central.tariff.store import TariffStore

    svc = request.app[SERVICES]
    session: Session = request[SESSION]
    remote = _remote(request)
    if session.role != "admin":
        await asyncio.to_thread(audit, svc.store, user=session.user, role=session.role,
                                action="tariff.plans", outcome="refused",
                                detail=f"role {session.role} may not replace tariff plans",
                                remote=remote)  # fmt: skip
        raise web.HTTPForbidden(text="replacing the tariff plans needs the admin role")
    body = await request.content.read(MAX_PLANS_BYTES + 1)
    if len(body) > MAX_PLANS_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_PLANS_BYTES, actual_size=len(body))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the plan file must be UTF-8 TOML") from None
    row = await asyncio.to_thread(audit, svc.store, user=session.user, role=session.role,
                                  action="tariff.plans", outcome="started",
                                  remote=remote)  # fmt: skip
    store = await asyncio.to_thread(TariffStore, svc.store)
    try:
        book = await asyncio.to_thread(store.replace_plans, text, session.user)
    except ConfigError as exc:
        await asyncio.to_thread(audit_done, svc.store, row, "failed", str(exc))
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    summary = f"{len(book.plans)} plans in force, digest {book.digest}"
    await asyncio.to_thread(audit_done, svc.store, row, "ok", summary)
    return web.json_response({"ok": True, "plans": sorted(book.plans), "digest": book.digest})
