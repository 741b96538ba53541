"""The panel's web application (aiohttp): pages, log-in, actions, live updates.

Every page needs a log-in; every POST needs the session's CSRF token (the log-in form a token
of its own); actions need the operator role, checked here on the server whatever the page
showed; every action and every refusal is audited. See docs/panel.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hmac
import io
import json
import logging
import re
import secrets
import ssl
import time
import zoneinfo
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

import common.clock
from central.commands import CommandSender, CommandTimeout
from central.config import CentralConfig
from central.coverage import DayCoverage, ScopeCoverage, Streak
from central.ledger import day_offset
from central.panel import data
from central.panel.auth import Session, Users, audit, audit_done, recent_audit
from central.panel.i18n import LANGUAGES, REASONS, reason_label, translator
from central.panel.registry import (
    BUILTIN_EXTENSIONS,
    Action,
    ActionContext,
    ActionResult,
    Forms,
    Registry,
    accepts_forms,
    default_sections,
)
from central.panel.svg import Series, bars, line_chart
from central.store import Store
from central.tariff.http import get_plans, put_plans

__all__ = ["Services", "make_app", "serve"]

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SESSION_COOKIE = "meterlink_session"
LOGIN_COOKIE = "meterlink_login"
LANG_COOKIE = "meterlink_lang"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: failed log-ins per user name before a pause, and the pause
LOGIN_TRIES, LOGIN_PAUSE_S = 5, 60.0
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


@dataclass
class Services:
    cfg: CentralConfig
    store: Store
    users: Users
    cache: data.CoverageCache
    influx: data.InfluxReader
    status: data.StatusWatcher
    registry: Registry
    tls: bool = False
    key: bytes | None = None
    _sender: CommandSender | None = None
    _sender_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _login_failures: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.cfg.panel.timezone)

    def today(self) -> str:
        return common.clock.current().now(self.tz).date().isoformat()

    async def command(
        self, concentrator: str, command: str, meter: str, args: Mapping[str, Any]
    ) -> Any:
        """Send a signed command on the panel's one sender (opened on first use, opened
        again once if the connection was lost)."""
        import aiomqtt

        if self.key is None:
            raise RuntimeError("no command key")
        for attempt in (1, 2):
            async with self._sender_lock:
                if self._sender is None:
                    sender = CommandSender(
                        self.cfg.mqtt, self.key, client_id=f"{self.status.client_id}-cmd"
                    )
                    await sender.__aenter__()
                    self._sender = sender
                sender = self._sender
            try:
                return await sender.send(
                    concentrator, command, meter=meter, args=args,
                    wait_s=self.cfg.panel.command_timeout_s,
                )  # fmt: skip
            except aiomqtt.MqttError:
                await self.close_sender()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close_sender(self) -> None:
        async with self._sender_lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(Exception):
                await sender.__aexit__(None, None, None)


SERVICES = web.AppKey("services", Services)
#: the request's session (a typed key where aiohttp has them, 3.12 on)
SESSION: Any = web.RequestKey("session", Session) if hasattr(web, "RequestKey") else "session"


# --- helpers -------------------------------------------------------------------------------------
def _lang(request: web.Request) -> str:
    lang = request.cookies.get(LANG_COOKIE, "")
    svc = request.app[SERVICES]
    return lang if lang in LANGUAGES else svc.cfg.panel.language


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _secure(svc: Services) -> bool:
    mode = svc.cfg.panel.cookie_secure
    return mode == "always" or (mode == "auto" and svc.tls)


def _remote(request: web.Request) -> str:
    return request.remote or ""


def _day_param(request: web.Request, default: str) -> str:
    day = request.query.get("day", default)
    if not _DAY.match(day):
        raise web.HTTPBadRequest(text=f"day {day!r} is not YYYY-MM-DD")
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise web.HTTPBadRequest(text=f"day {day!r} is not a date") from None
    return day


def _safe_next(target: str, default: str = "/") -> str:
    """Only a path of this site (no scheme, no //host)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def _trusted(html: str) -> Markup:
    """HTML that is safe as it is: the SVG `central.panel.svg` built (it escapes every text it
    puts in), or a registered section's block (code of this package, which escapes its own)."""
    return Markup(html)  # noqa: S704


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["pct"] = _pct


def render(request: web.Request, template: str, http_status: int = 200, **ctx: Any) -> web.Response:
    svc = request.app[SERVICES]
    lang = _lang(request)
    session: Session | None = request.get(SESSION)
    body = _env.get_template(template).render(
        t=translator(lang),
        lang=lang,
        other_lang="en" if lang == "zh-CN" else "zh-CN",
        session=session,
        path=request.path_qs,
        nav=request.path,
        sections=svc.registry.sections,
        reason_label=lambda r: reason_label(r, lang),
        markup=Markup,
        **ctx,
    )
    return web.Response(text=body, status=http_status, content_type="text/html", charset="utf-8")


# --- middleware ----------------------------------------------------------------------------------
PUBLIC = ("/login", "/static/", "/healthz", "/lang/")


@web.middleware
async def headers_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if exc.status in (403, 404) and exc.text == f"{exc.status}: {exc.reason}":
            resp = render(request, "error.html", http_status=exc.status, code=exc.status)
        else:
            _headers(request, exc, started)
            raise
    _headers(request, resp, started)
    return resp


def _headers(
    request: web.Request, resp: web.StreamResponse | web.HTTPException, started: float
) -> None:
    if resp.prepared:  # a stream (server-sent events) sent its own
        return
    # the server's own time for the request (browsers' network tab, bench/panel.py)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        resp.headers.setdefault("Cache-Control", "no-store")
    if request.app[SERVICES].tls:
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")


async def _form(request: web.Request) -> Any:
    """The request's form; a body that is no form (a multipart without its boundary, bytes
    that are not the charset it claims) is the client's error, 400, not ours."""
    try:
        return await request.post()
    except (ValueError, UnicodeDecodeError, LookupError) as exc:
        raise web.HTTPBadRequest(text=f"the form could not be read: {exc}"[:200]) from None


def _same_token(sent: str, expected: str) -> bool:
    """Constant-time comparison of a token the client sent (any text: compare_digest refuses
    non-ASCII str, which made a junk token a 500) with ours."""
    encoding = ("utf-8", "surrogatepass")
    return hmac.compare_digest(sent.encode(*encoding), expected.encode(*encoding))


@web.middleware
async def session_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    svc = request.app[SERVICES]
    token = request.cookies.get(SESSION_COOKIE)
    session = None
    if token:
        session = await asyncio.to_thread(svc.users.session, token, svc.cfg.panel.idle_minutes * 60)
    request[SESSION] = session
    if request.path.startswith(PUBLIC) or request.path == "/favicon.ico":
        return await handler(request)
    if session is None:
        if request.method == "GET" and not request.path.startswith(("/events", "/overview/live")):
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        raise web.HTTPUnauthorized(text="log in first")
    if request.method not in ("GET", "HEAD"):
        form = await _form(request)
        sent = request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))
        if not sent or not _same_token(sent, session.csrf):
            await asyncio.to_thread(
                audit, svc.store, user=session.user, role=session.role,
                action=request.path, outcome="refused", detail="missing or wrong CSRF token",
                remote=_remote(request),
            )  # fmt: skip
            raise web.HTTPForbidden(text="CSRF token missing or wrong")
    return await handler(request)


# --- log-in --------------------------------------------------------------------------------------
def _login_error(key: str) -> str:
    """Only the errors `login` itself redirects with: any other `?error=` is shown as none."""
    return key if key in ("locked", "bad_login") else ""


async def login_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    resp = render(
        request, "login.html", login_csrf=token, next=_safe_next(request.query.get("next", "/")),
        error=_login_error(request.query.get("error", "")),
    )  # fmt: skip
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=_secure(svc),
                    path="/login")  # fmt: skip
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    form = await _form(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = str(form.get("csrf", ""))
    nxt = _safe_next(str(form.get("next", "/")))
    if not cookie or not _same_token(cookie, sent):
        raise web.HTTPForbidden(text="log-in form expired: reload the page")
    name, password = str(form.get("user", "")), str(form.get("password", ""))
    now = time.monotonic()
    failures = [t for t in svc._login_failures[name] if now - t < LOGIN_PAUSE_S]
    svc._login_failures[name] = failures
    if len(failures) >= LOGIN_TRIES:
        await asyncio.to_thread(audit, svc.store, user=name, role="", action="login",
                                outcome="refused", detail="too many failures",
                                remote=_remote(request))  # fmt: skip
        raise web.HTTPSeeOther("/login?" + urlencode({"next": nxt, "error": "locked"}))
    role = await asyncio.to_thread(svc.users.verify, name, password)
    if role is None:
        failures.append(now)
        await asyncio.to_thread(audit, svc.store, user=name, role="", action="login",
                                outcome="failed", remote=_remote(request))  # fmt: skip
        raise web.HTTPSeeOther("/login?" + urlencode({"next": nxt, "error": "bad_login"}))
    svc._login_failures.pop(name, None)
    token, _csrf = await asyncio.to_thread(svc.users.open_session, name,
                                           svc.cfg.panel.session_hours)  # fmt: skip
    await asyncio.to_thread(audit, svc.store, user=name, role=role, action="login", outcome="ok",
                            remote=_remote(request))  # fmt: skip
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                    secure=_secure(svc), path="/")  # fmt: skip
    resp.del_cookie(LOGIN_COOKIE, path="/login")
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    session: Session = request[SESSION]
    await asyncio.to_thread(svc.users.close_session, session.token_hash)
    await asyncio.to_thread(audit, svc.store, user=session.user, role=session.role,
                            action="logout", outcome="ok", remote=_remote(request))  # fmt: skip
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


async def set_lang(request: web.Request) -> web.StreamResponse:
    lang = request.match_info["lang"]
    if lang not in LANGUAGES:
        raise web.HTTPNotFound()
    resp = web.HTTPSeeOther(_safe_next(request.query.get("next", "/")))
    resp.set_cookie(LANG_COOKIE, lang, samesite="Strict", max_age=365 * 86400, path="/",
                    secure=_secure(request.app[SERVICES]))  # fmt: skip
    raise resp


async def healthz(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    return web.json_response({"ok": True, "mqtt": svc.status.connected})


# --- coverage pages ------------------------------------------------------------------------------
def _scope(cov: DayCoverage, scope: str, key: str) -> ScopeCoverage | None:
    return next((s for s in cov.scopes if s.scope == scope and s.key == key), None)


async def _overview_ctx(request: web.Request) -> dict[str, Any]:
    svc = request.app[SERVICES]
    p = svc.cfg.panel
    today = svc.today()
    yesterday = day_offset(today, -1)
    e_today = await svc.cache.get(today)
    e_yday = await svc.cache.get(yesterday)
    first = day_offset(today, -(p.trend_days - 1))
    labels = [day_offset(first, i) for i in range(p.trend_days)]
    points: dict[str, data.TrendPoint] = {}
    influx_error = ""
    try:
        for point in await svc.influx.trend(first, today):
            points[point.day] = point
    except data.InfluxUnavailable as exc:
        influx_error = str(exc)
    for day, entry in ((yesterday, e_yday), (today, e_today)):
        f = entry.cov.fleet()
        points[day] = data.TrendPoint(day, f.rate, f.timeliness_rate, f.completeness_rate,
                                      f.expected, f.read, "ledger")  # fmt: skip
    t = translator(_lang(request))

    def series(name: str, css: str, attr: str) -> Series:
        pts = []
        for day in labels:
            pt = points.get(day)
            v = getattr(pt, attr) if pt else None
            pts.append((day, v, f"{day} {name} {_pct(v)}%"))
        return Series(name, css, pts)

    chart = line_chart(
        [series(t("coverage_rate"), "s-rate", "rate"),
         series(t("timeliness"), "s-timely", "timeliness_rate"),
         series(t("completeness"), "s-complete", "completeness_rate")],
        labels=labels, target=p.threshold, unit="%", chart_id="trend",
        y_max=100.0,
    )  # fmt: skip
    cov = e_today.cov
    concentrators = sorted(cov.by("concentrator"), key=lambda s: (s.rate or 0.0, s.key))
    known = {s.key for s in cov.by("concentrator")} | set(svc.status.statuses)
    states = {c: (svc.status.statuses[c].state if c in svc.status.statuses else "unknown")
              for c in known}  # fmt: skip
    reasons = cov.fleet().reasons.most_common()
    figures = []
    for section in svc.registry.sections.values():
        figure = await section.provider.figure(today) if section.provider else None
        figures.append((section, figure))
    return {
        "today": today,
        "yesterday": yesterday,
        "days": [(t("today"), today, e_today), (t("yesterday"), yesterday, e_yday)],
        "threshold": p.threshold,
        "trend_days": p.trend_days,
        "chart": _trusted(chart),
        "influx_error": influx_error,
        "worst": concentrators[:5],
        "agents": {
            s: sum(1 for v in states.values() if v == s) for s in ("online", "offline", "unknown")
        },
        "mqtt_error": "" if svc.status.connected else (svc.status.error or "connecting"),
        "reasons": list(zip(reasons, [_trusted(b) for b in bars(reasons)], strict=True)),
        "figures": figures,
        "version": svc.cache.version,
        "fmt_time": lambda ts: dt.datetime.fromtimestamp(ts, svc.tz).strftime("%H:%M:%S"),
    }


async def overview(request: web.Request) -> web.StreamResponse:
    return render(request, "overview.html", **await _overview_ctx(request))


async def overview_live(request: web.Request) -> web.StreamResponse:
    return render(request, "overview_body.html", **await _overview_ctx(request))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``coverage`` when a day's figures changed, ``status`` when an
    agent's status did; a comment every 15 s keeps proxies from closing the stream."""
    svc = request.app[SERVICES]
    if request.method == "HEAD":  # headers only: a stream's bytes would follow as junk
        return web.Response(content_type="text/event-stream", headers={"Cache-Control": "no-store"})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})  # fmt: skip
    await resp.prepare(request)
    seen = svc.cache.version
    try:
        await resp.write(b"retry: 3000\n\n")
        while not svc.stop.is_set():
            svc.status.changed.clear()

            async def coverage_changed(seen: int = seen) -> None:
                async with svc.cache.changed:
                    await svc.cache.changed.wait_for(lambda: svc.cache.version != seen)

            waits = {asyncio.ensure_future(coverage_changed()),
                     asyncio.ensure_future(svc.status.changed.wait()),
                     asyncio.ensure_future(svc.stop.wait())}  # fmt: skip
            done, pending = await asyncio.wait(waits, timeout=15.0,
                                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for task in pending:
                task.cancel()
            if svc.cache.version != seen:
                seen = svc.cache.version
                await resp.write(f"event: coverage\ndata: {seen}\n\n".encode())
            elif svc.status.changed.is_set():
                await resp.write(b"event: status\ndata: 1\n\n")
            elif not done:
                await resp.write(b": ping\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def concentrators(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    day = _day_param(request, svc.today())
    entry = await svc.cache.get(day)
    rows = sorted(entry.cov.by("concentrator"), key=lambda s: (s.rate or 0.0, s.key))
    computed = dt.datetime.fromtimestamp(entry.computed_at, svc.tz).strftime("%H:%M:%S")
    return render(request, "concentrators.html", day=day, rows=rows, computed=computed,
                  statuses=svc.status.statuses, threshold=svc.cfg.panel.threshold,
                  fmt_at=lambda s: _fmt_received(svc, s))  # fmt: skip


def _fmt_received(svc: Services, st: data.AgentStatus) -> str:
    return dt.datetime.fromtimestamp(st.received, svc.tz).strftime("%m-%d %H:%M:%S")


async def concentrator(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    c = request.match_info["c"]
    day = _day_param(request, svc.today())
    entry = await svc.cache.get(day)
    scope = _scope(entry.cov, "concentrator", c)
    meters = await asyncio.to_thread(data.archive_meters, svc.store, c, day)
    if scope is None and not meters:
        raise web.HTTPNotFound()
    last = await asyncio.to_thread(data.last_reads, svc.store, c, day)
    reads = {
        str(m): (int(r), int(s), bool(k))
        for m, r, s, k in await asyncio.to_thread(
            svc.store.rows,
            "SELECT meter, read_at, day_start, complete FROM daily_read"
            " WHERE concentrator = ? AND day = ?",
            (c, day),
        )
    }
    streaks = {st.meter: st for st in entry.cov.streaks if st.concentrator == c}
    rows: list[dict[str, Any]] = []
    for meter, district, manufacturer, _bus in meters:
        st = streaks.get(meter)
        read = reads.get(meter)
        rows.append({
            "meter": meter, "district": district, "manufacturer": manufacturer,
            "read": read is not None,
            "read_at": dt.datetime.fromtimestamp(read[0], svc.tz).strftime("%H:%M") if read else "",
            "complete": read[2] if read else False,
            "last": last.get(meter) or "", "streak": st,
        })  # fmt: skip
    rows.sort(key=lambda r: (bool(r["read"]), -int(r["streak"].days if r["streak"] else 0),
                             str(r["meter"])))  # fmt: skip
    return render(request, "concentrator.html", c=c, day=day, scope=scope, rows=rows,
                  status=svc.status.statuses.get(c), entry=entry,
                  threshold=svc.cfg.panel.threshold)  # fmt: skip


async def meter(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    c, m = request.match_info["c"], request.match_info["m"]
    p = svc.cfg.panel
    day = _day_param(request, svc.today())
    facts = await asyncio.to_thread(data.meter_facts, svc.store, c, m, day, p.history_days)
    if facts is None:
        raise web.HTTPNotFound()
    entry = await svc.cache.get(day)
    streak = next((s for s in entry.cov.streaks if s.concentrator == c and s.meter == m), None)
    first = day_offset(day, -(p.history_days - 1))
    since = int(dt.datetime.combine(dt.date.fromisoformat(first), dt.time(), svc.tz).timestamp())
    lang = _lang(request)
    t = translator(lang)
    history_error = ""
    history: list[tuple[int, float, str]] = []
    try:
        history = await svc.influx.history(c, m, since, "energy_import_total_kwh")
    except data.InfluxUnavailable as exc:
        history_error = str(exc)
    labels = [day_offset(first, i) for i in range(p.history_days)]
    pts = []
    for ts, value, quality in history:
        d = dt.datetime.fromtimestamp(ts, svc.tz).date().isoformat()
        pts.append((d, value, f"{d} {value:g} kWh {quality}".strip()))
    chart = line_chart([Series("kWh", "s-rate", pts)], labels=labels, unit="",
                       chart_id="history", width=480) if pts else ""  # fmt: skip
    blocks = []
    session: Session | None = request[SESSION]
    here = f"/meters/{quote(c, safe='')}/{quote(m, safe='')}?day={day}"
    forms = Forms(session.csrf, here, lang) if session is not None and session.can_act else None
    for section in svc.registry.sections.values():
        html = None
        if section.provider is not None:
            if accepts_forms(section.provider.meter_block):
                html = await section.provider.meter_block(c, m, lang, forms=forms)  # type: ignore[call-arg]
            else:
                html = await section.provider.meter_block(c, m, lang)
        blocks.append((section, _trusted(html) if html else None))
    done = None
    if request.query.get("done", "").isdigit() and request[SESSION] is not None:
        rows = await asyncio.to_thread(
            svc.store.rows,
            "SELECT action, outcome, detail, user_name FROM panel_audit WHERE id = ?",
            (int(request.query["done"]),),
        )
        if rows and rows[0][3] == request[SESSION].user:
            detail = json.loads(rows[0][2]) if str(rows[0][2]).startswith("{") else {}
            done = {"action": rows[0][0], "outcome": rows[0][1], "detail": detail}
    return render(
        request, "meter.html", c=c, m=m, day=day, facts=facts, streak=streak,
        chart=_trusted(chart), history_error=history_error,
        n_history=len(pts), blocks=blocks, done=done, status=svc.status.statuses.get(c),
        can_command=svc.key is not None,
        fmt_ts=lambda ts: dt.datetime.fromtimestamp(ts, svc.tz).strftime("%m-%d %H:%M"),
        title=t("meter"),
    )  # fmt: skip


# --- the consecutive-failure list ----------------------------------------------------------------
FAILURE_COLUMNS = ("meter", "concentrator", "district", "manufacturer", "days", "last_reason",
                   "last_success")  # fmt: skip


async def _failure_rows(
    request: web.Request,
) -> tuple[str, dict[str, str], list[Streak], DayCoverage, Callable[[Streak], list[str]]]:
    svc = request.app[SERVICES]
    day = _day_param(request, svc.today())
    q = request.query
    try:
        min_days = int(q.get("days") or svc.cfg.coverage.streak_min_days)
    except ValueError:
        raise web.HTTPBadRequest(text="days must be a whole number") from None
    filters = {k: q.get(k, "") for k in ("district", "manufacturer", "reason")}
    filters["days"] = str(min_days)
    cov = (await svc.cache.get(day)).cov
    rows = [
        s for s in cov.streaks
        if s.days >= min_days
        and (not filters["district"] or s.district == filters["district"])
        and (not filters["manufacturer"] or s.manufacturer == filters["manufacturer"])
        and (not filters["reason"] or s.last_reason == filters["reason"])
    ]  # fmt: skip
    lang = _lang(request)
    never = translator(lang)("never")

    def cells(s: Streak) -> list[str]:
        return [s.meter, s.concentrator, s.district, s.manufacturer, str(s.days),
                reason_label(s.last_reason, lang), s.last_success or never]  # fmt: skip

    return day, filters, rows, cov, cells


async def failures(request: web.Request) -> web.StreamResponse:
    day, filters, rows, cov, cells = await _failure_rows(request)
    districts = sorted({s.key for s in cov.by("district")})
    manufacturers = sorted({s.key for s in cov.by("manufacturer")})
    return render(request, "failures.html", day=day, filters=filters,
                  rows=[(s, cells(s)) for s in rows], districts=districts,
                  manufacturers=manufacturers, reasons=list(REASONS),
                  csv_query=urlencode({"day": day, **filters}))  # fmt: skip


async def failures_csv(request: web.Request) -> web.StreamResponse:
    day, _filters, rows, _cov, cells = await _failure_rows(request)
    t = translator(_lang(request))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([t(k if k != "days" else "days") for k in
                ("meter", "concentrator", "district", "manufacturer", "days", "last_reason",
                 "last_success")])  # fmt: skip
    for s in rows:
        w.writerow(cells(s))
    # a BOM so that spreadsheet programs read the Chinese as UTF-8
    return web.Response(
        body=("\ufeff" + buf.getvalue()).encode("utf-8"),
        content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="consecutive-failures-{day}.csv"'},
    )  # fmt: skip


# --- actions -------------------------------------------------------------------------------------
async def act(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    session: Session = request[SESSION]
    name = request.match_info["name"]
    action = svc.registry.actions.get(name)
    if action is None:
        raise web.HTTPNotFound()
    form = await _form(request)
    args = {k: str(form.get(k, "")) for k in action.fields}
    target = "/".join(v for v in args.values() if v)
    if not session.can_act or session.role != action.role:
        await asyncio.to_thread(audit, svc.store, user=session.user, role=session.role,
                                action=name, target=target, args=args, outcome="refused",
                                detail=f"role {session.role} may not act",
                                remote=_remote(request))  # fmt: skip
        raise web.HTTPForbidden(text=f"the {session.role} role may not act")
    row = await asyncio.to_thread(audit, svc.store, user=session.user, role=session.role,
                                  action=name, target=target, args=args, outcome="started",
                                  remote=_remote(request))  # fmt: skip
    ctx = ActionContext(session.user, session.role, _remote(request), row, svc)
    try:
        result = await action.handler(ctx, args)
    except Exception as exc:
        log.exception("panel: action %s failed", name)
        result = ActionResult(False, f"{type(exc).__name__}: {exc}")
    detail = json.dumps({"summary": result.summary, "details": dict(result.details)},
                        ensure_ascii=False, default=str)  # fmt: skip
    await asyncio.to_thread(audit_done, svc.store, row, "ok" if result.ok else "failed", detail)
    if request.headers.get("Accept", "").startswith("application/json"):
        return web.json_response({"ok": result.ok, "summary": result.summary,
                                  "details": dict(result.details), "audit": row})  # fmt: skip
    nxt = _safe_next(str(form.get("next", "/")))
    sep = "&" if "?" in nxt else "?"
    raise web.HTTPSeeOther(f"{nxt}{sep}done={row}")


async def read_now(ctx: ActionContext, args: Mapping[str, str]) -> ActionResult:
    svc: Services = ctx.services
    c, m = args["concentrator"], args["meter"]
    today = svc.today()
    facts = await asyncio.to_thread(data.meter_facts, svc.store, c, m, today, 1)
    if facts is None:
        return ActionResult(False, f"{m} is not in {c}'s archive")
    if svc.key is None:
        return ActionResult(False, "no command key (METERLINK_MQTT_COMMAND_KEY)")
    try:
        reply = await svc.command(c, "read", m, {"items": list(svc.cfg.panel.read_items)})
    except CommandTimeout as exc:
        return ActionResult(False, str(exc))
    payload = reply.payload
    result = payload.get("result") or {}
    values: dict[str, Any] = {}
    failed: dict[str, Any] = {}
    got: dict[str, Any] = result["items"] if isinstance(result.get("items"), dict) else result
    for k, v in got.items():
        if isinstance(v, dict) and isinstance(v.get("error"), dict):
            failed[k] = v["error"].get("reason")
        elif isinstance(v, dict) and isinstance(v.get("values"), dict):
            for name, value in v["values"].items():  # {"value": 1234.5, "unit": "kWh"}
                if isinstance(value, dict) and "value" in value:
                    values[name] = f"{value['value']} {value.get('unit') or ''}".strip()
        else:
            values[k] = v
    if not reply.ok or failed:
        reason = payload.get("reason") or ", ".join(f"{k}: {r}" for k, r in failed.items())
        return ActionResult(False, f"{reason}: {payload.get('detail', '')}".strip(": "),
                            {"reply": payload})  # fmt: skip
    shown = ", ".join(f"{k} = {v}" for k, v in values.items())
    return ActionResult(True, f"{shown} ({reply.seconds:.1f} s)", {"values": values})


async def audit_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    session: Session = request[SESSION]
    if not session.can_act:
        raise web.HTTPForbidden()
    rows = await asyncio.to_thread(recent_audit, svc.store, 200)
    return render(request, "audit.html", rows=rows)


async def section_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    section = svc.registry.sections.get(request.match_info["key"])
    if section is None:
        raise web.HTTPNotFound()
    html = None
    session: Session | None = request[SESSION]
    lang = _lang(request)
    query = {k: v for k, v in request.query.items() if k != "done"}
    here = f"/section/{quote(section.key, safe='')}" + (f"?{urlencode(query)}" if query else "")
    forms = Forms(session.csrf, here, lang) if session is not None and session.can_act else None
    if section.provider is not None:
        if accepts_forms(section.provider.page):
            html = await section.provider.page(lang, dict(request.query), forms=forms)  # type: ignore[call-arg]
        else:
            html = await section.provider.page(lang, dict(request.query))
    actions = [
        a for a in svc.registry.actions.values() if a.section == section.key and not a.inline
    ]
    done = await _done(request)
    return render(request, "section.html", section=section, actions=actions,
                  today=svc.today(), done=done,
                  body=_trusted(html) if html else None)  # fmt: skip


async def _done(request: web.Request) -> dict[str, Any] | None:
    """The result of the user's own action ``?done=<audit id>`` (after its redirect)."""
    svc = request.app[SERVICES]
    if not request.query.get("done", "").isdigit() or request[SESSION] is None:
        return None
    rows = await asyncio.to_thread(
        svc.store.rows,
        "SELECT action, outcome, detail, user_name FROM panel_audit WHERE id = ?",
        (int(request.query["done"]),),
    )
    if not rows or rows[0][3] != request[SESSION].user:
        return None
    detail = json.loads(rows[0][2]) if str(rows[0][2]).startswith("{") else {}
    return {"action": rows[0][0], "outcome": rows[0][1], "detail": detail}


# --- the application -----------------------------------------------------------------------------
def make_registry(extensions: list[str], **context: Any) -> Registry:
    """The sections and actions; `context` (``store``, ``cfg``) is what modules' ``register``
    may build their providers with."""
    registry = Registry(context=dict(context))
    default_sections(registry)
    registry.action(Action("read_now", {"zh-CN": "立即抄读", "en": "Read now"}, read_now,
                           fields=("concentrator", "meter")))  # fmt: skip
    registry.load(BUILTIN_EXTENSIONS)
    registry.load(extensions, required=True)
    return registry


def make_app(svc: Services) -> web.Application:
    app = web.Application(middlewares=[headers_mw, session_mw], client_max_size=64 * 1024)
    app[SERVICES] = svc
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/lang/{lang}", set_lang)
    r.add_get("/healthz", healthz)
    r.add_get("/", overview)
    r.add_get("/overview/live", overview_live)
    r.add_get("/events", events)
    r.add_get("/concentrators", concentrators)
    r.add_get("/concentrators/{c}", concentrator)
    r.add_get("/meters/{c}/{m}", meter)
    r.add_get("/failures", failures)
    r.add_get("/failures.csv", failures_csv)
    r.add_get("/audit", audit_page)
    r.add_get("/section/{key}", section_page)
    r.add_post("/actions/{name}", act)
    r.add_get("/api/tariff/plans", get_plans)
    r.add_put("/api/tariff/plans", put_plans)
    r.add_static("/static/", HERE / "static", append_version=False)
    return app


async def _refresher(svc: Services) -> None:
    """Keeps today's and yesterday's coverage (and any other day being looked at) current."""
    period = min(svc.cfg.panel.refresh_s, 5.0)
    while not svc.stop.is_set():
        today = svc.today()
        days = [today, day_offset(today, -1)]
        days += [d for (d, c) in list(svc.cache._entries) if c is None and d not in days]
        try:
            await svc.cache.refresh(days)
        except Exception:  # the store is down: try again next time, say it once per period
            log.exception("panel: refreshing coverage failed")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period):
                await svc.stop.wait()


def tls_context(cfg: CentralConfig) -> ssl.SSLContext | None:
    p = cfg.panel
    if p.tls_cert is None or p.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(p.tls_cert, p.tls_key)
    return ctx


@contextlib.asynccontextmanager
async def running(
    cfg: CentralConfig, store: Store, key: bytes | None, ready: Callable[[str], None] | None = None
) -> AsyncIterator[Services]:
    """The panel serving on `[panel] listen` for the duration of the block."""
    from common.config import parse_listen

    users = await asyncio.to_thread(Users, store)
    cache = data.CoverageCache(cfg, store)
    cache.start()
    client_id = cfg.panel.client_id or f"{cfg.mqtt.client_id}-panel"
    svc = Services(
        cfg, store, users, cache, data.InfluxReader(cfg.influx),
        data.StatusWatcher(cfg.mqtt, client_id),
        make_registry(cfg.panel.extensions, store=store, cfg=cfg),
        tls=cfg.panel.tls_cert is not None, key=key,
    )  # fmt: skip
    for section in svc.registry.sections.values():  # providers that read the store
        bind = getattr(section.provider, "bind", None)
        if callable(bind):
            bind(store)
    tasks = [asyncio.create_task(svc.status.run(svc.stop), name="panel-status"),
             asyncio.create_task(_refresher(svc), name="panel-refresher")]  # fmt: skip
    app = make_app(svc)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    host, port = parse_listen(cfg.panel.listen)
    ctx = tls_context(cfg)
    site = web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    url = f"{'https' if ctx else 'http'}://{host if ':' not in host else f'[{host}]'}:{bound}/"
    log.info("panel: serving %s", url)
    if ready is not None:
        ready(url)
    try:
        yield svc
    finally:
        svc.stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await svc.close_sender()
        await svc.influx.close()
        await asyncio.to_thread(cache.close)


async def serve(cfg: CentralConfig, store: Store, key: bytes | None, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:  # fmt: skip
    async with running(cfg, store, key, ready):
        await stop.wait()
