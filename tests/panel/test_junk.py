"""The panel's HTTP surface under junk: every route with random path segments, query strings,
form bodies, methods, headers and bytes that are not UTF-8, logged out and logged in as an
operator. Each answer is a client error (4xx) or a page — never a 500 (an unhandled exception)."""

from __future__ import annotations

import random
import string
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from central.panel.app import running
from central.store import Store
from tests.panel.test_access import Client, _config, store  # noqa: F401 - the store fixture

ROUTES = [
    "/login", "/logout", "/lang/{x}", "/healthz", "/", "/overview/live", "/events",
    "/concentrators", "/concentrators/{x}", "/meters/{x}/{x}", "/failures", "/failures.csv",
    "/audit", "/section/{x}", "/actions/{x}",
]  # fmt: skip
QUERY_KEYS = ["day", "next", "page", "c", "meter", "reason", "district", "q", "lang", "sort",
              "days", "error", "limit", "from", "to", "scope", "key", "format"]  # fmt: skip
FORM_KEYS = ["csrf", "user", "password", "meter", "concentrator", "items", "amount", "state",
             "confirm", "day", "next"]  # fmt: skip
ACTIONS = ["read_now", "sync_time", "relay", "archive_update", "topup", "nonsense"]
NASTY = ["", "-1", "0", "9" * 400, "2026-02-30", "../../etc/passwd", "%00", "\x00", "é",
         "<script>", "' OR 1=1 --", "NaN", "1e309", "[]", "{}", "%ff%fe", "😀" * 50]  # fmt: skip


def _junk(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(NASTY)
    alphabet = string.printable + "éü中文\u202e"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def _path(rng: random.Random) -> str:
    route = rng.choice(ROUTES)
    while "{x}" in route:
        segment = rng.choice(ACTIONS) if route.startswith("/actions") else _junk(rng)
        route = route.replace("{x}", urllib.parse.quote(segment, safe="") or "x", 1)
    query = {rng.choice(QUERY_KEYS): _junk(rng) for _ in range(rng.randint(0, 4))}
    raw = urllib.parse.urlencode(query)
    if rng.random() < 0.1:
        raw += "&day=%ff%fe&next=%c0%af"  # bytes that are not UTF-8
    return route + ("?" + raw if raw else "")


@pytest.fixture
async def base(tmp_path: Path, store: Store) -> AsyncIterator[str]:  # noqa: F811
    urls: list[str] = []
    cfg = _config(tmp_path, command_timeout_s=0.5)  # actions' commands reach no agent here
    async with running(cfg, store, b"k" * 32, urls.append):
        yield urls[0].rstrip("/")


async def _fire(
    http: aiohttp.ClientSession, base: str, rng: random.Random, n: int, client: Client | None
) -> Counter[int]:
    csrf = await _log_in(client) if client is not None else "no-token"
    statuses: Counter[int] = Counter()
    for _ in range(n):
        method = rng.choice(["GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
        path = _path(rng)
        form = {rng.choice(FORM_KEYS): _junk(rng) for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.5:
            form["csrf"] = csrf
        headers = {}
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(
                [
                    "application/json",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    "application/x-www-form-urlencoded; charset=latin-1",
                ]
            )
        if rng.random() < 0.1:
            cookie = "".join(c for c in _junk(rng) if c.isascii() and c.isprintable())
            headers["Cookie"] = "meterlink_session=" + cookie
        body: bytes | dict[str, str] = form
        if rng.random() < 0.15:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        async with http.request(
            method, base + path, data=body, headers=headers, allow_redirects=False
        ) as r:
            if path.startswith("/events"):  # a server-sent event stream never ends
                r.close()  # drop the connection, not back to the pool half read
            else:
                await r.read()
            statuses[r.status] += 1
            assert r.status != 500, f"{method} {path} {form!r} -> 500"
        if client is not None and r.status == 401:  # junk that logged out (POST /logout)
            csrf = await _log_in(client)
    return statuses


async def _log_in(client: Client) -> str:
    r = await client.log_in("otto")
    assert r.status == 303
    return await client.csrf()


async def test_junk_never_reaches_a_500(base: str) -> None:
    rng = random.Random(20260310)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        logged_out = await _fire(http, base, rng, 400, None)
        logged_in = await _fire(http, base, rng, 1200, Client(base, http))
    print("logged out", dict(logged_out), "logged in", dict(logged_in))
    assert set(logged_out) | set(logged_in) <= set(range(200, 500)) | {502, 503, 504}
