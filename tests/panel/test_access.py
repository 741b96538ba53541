"""Log-in, roles, CSRF, cookies and TLS of the panel, against the real server in this process
(its store a SQLite file; no broker or InfluxDB needed for these)."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.config import CentralConfig
from central.panel.app import running
from central.panel.auth import AuthError, Users
from central.store import Store, open_store
from common.config import build
from meterlink.services import free_port
from tests.fixtures.pki import self_signed

PASSWORDS = {"vera": "viewer-password-1", "otto": "operator-password-1"}


def _config(tmp: Path, **panel: Any) -> CentralConfig:
    return build(CentralConfig, {
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "reconnect_min_s": 5.0},
        "influx": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1.0},
        "store": {"url": f"sqlite://{tmp}/store.sqlite3"},
        "panel": {"listen": f"127.0.0.1:{free_port()}", **panel},
    }, env_prefix="METERLINK", environ={})  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite://{tmp_path}/store.sqlite3", name="test")
    users = Users(s)
    users.add("vera", "viewer", PASSWORDS["vera"])
    users.add("otto", "operator", PASSWORDS["otto"])
    yield s
    s.close()


class Client:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.http = base, session

    async def log_in(self, user: str, password: str | None = None) -> aiohttp.ClientResponse:
        async with self.http.get(f"{self.base}/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert token
        data = {"csrf": token[1], "user": user, "password": password or PASSWORDS[user]}
        async with self.http.post(f"{self.base}/login", data=data, allow_redirects=False) as r:
            await r.read()
            return r

    async def csrf(self) -> str:
        async with self.http.get(f"{self.base}/section/topup") as r:
            found = re.search(r'<meta name="csrf-token" content="([^"]+)"', await r.text())
        assert found
        return found[1]


@pytest.fixture
async def panel(tmp_path: Path, store: Store) -> AsyncIterator[tuple[CentralConfig, str, Store]]:
    cfg = _config(tmp_path)
    urls: list[str] = []
    async with running(cfg, store, b"k" * 32, urls.append):
        yield cfg, urls[0].rstrip("/"), store


@pytest.fixture
async def client(panel: tuple[CentralConfig, str, Store]) -> AsyncIterator[Client]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        yield Client(panel[1], http)


def test_users_are_managed_and_passwords_hashed_with_argon2id(store: Store) -> None:
    users = Users(store)
    (row,) = store.rows("SELECT password_hash FROM panel_user WHERE name = 'vera'")
    assert str(row[0]).startswith("$argon2id$")
    assert PASSWORDS["vera"] not in str(row[0])
    assert users.verify("vera", PASSWORDS["vera"]) == "viewer"
    assert users.verify("vera", "wrong-password-1") is None
    assert users.verify("nobody", PASSWORDS["vera"]) is None
    with pytest.raises(AuthError, match="at least"):
        users.add("short", "viewer", "short")
    with pytest.raises(AuthError, match="exists"):
        users.add("vera", "viewer", PASSWORDS["vera"])
    with pytest.raises(AuthError, match="role"):
        users.add("eve", "root", PASSWORDS["vera"])
    token, _ = users.open_session("vera", 1.0)
    assert users.session(token, 600) is not None
    users.set_role("vera", "operator")  # at once, sessions kept
    session = users.session(token, 600)
    assert session is not None
    assert session.role == "operator"
    users.passwd("vera", "another-password-2")  # sessions end
    assert users.session(token, 600) is None
    assert users.verify("vera", "another-password-2") == "operator"
    users.remove("vera")
    assert [u[0] for u in users.list()] == ["otto"]


async def test_pages_need_a_log_in(client: Client) -> None:
    async with client.http.get(f"{client.base}/failures", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"].startswith("/login?next=")
    async with client.http.post(f"{client.base}/actions/read_now", allow_redirects=False) as r:
        assert r.status == 401
    async with client.http.get(f"{client.base}/failures.csv", allow_redirects=False) as r:
        assert r.status == 303


async def test_cookies_are_httponly_and_samesite_and_not_secure_over_http(client: Client) -> None:
    r = await client.log_in("vera")
    assert r.status == 303
    (cookie,) = [c for c in r.headers.getall("Set-Cookie") if "meterlink_session=" in c]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    assert "Content-Security-Policy" in r.headers


async def test_a_wrong_password_is_refused_and_repeated_failures_pause_the_user(
    client: Client, panel: tuple[CentralConfig, str, Store]
) -> None:
    r = await client.log_in("otto", "wrong-password-1")
    assert "error=bad_login" in r.headers["Location"]
    for _ in range(5):
        await client.log_in("otto", "wrong-password-1")
    r = await client.log_in("otto")  # the right one, but paused
    assert "error=locked" in r.headers["Location"]
    outcomes = [o for (o,) in panel[2].rows("SELECT outcome FROM panel_audit WHERE user_name"
                                            " = 'otto' AND action = 'login'")]  # fmt: skip
    assert outcomes.count("failed") == 5
    assert outcomes[-1] == "refused"


async def test_every_post_refuses_a_missing_or_wrong_csrf_token(
    client: Client, panel: tuple[CentralConfig, str, Store]
) -> None:
    await client.log_in("otto")
    posts = {
        r.resource.canonical if r.resource else ""
        for r in _routes(panel)
        if r.method == "POST" and r.resource and r.resource.canonical != "/login"
    }
    assert posts == {"/logout", "/actions/{name}"}
    for path in ("/logout", "/actions/read_now"):
        for data in ({}, {"csrf": "wrong"}):
            async with client.http.post(client.base + path, data=data) as r:
                assert r.status == 403, (path, data)
    async with client.http.get(f"{client.base}/section/topup") as r:
        assert r.status == 200  # the session survived the refused logout
    # the log-in form has its own token
    async with client.http.post(f"{client.base}/login", data={"user": "otto",
                                "password": PASSWORDS["otto"]}) as r:  # fmt: skip
        assert r.status == 403


def _routes(panel: tuple[CentralConfig, str, Store]) -> list[Any]:
    from central.panel.app import make_app, make_registry

    class _Svc:
        registry = make_registry([])

    app = make_app(_Svc())  # type: ignore[arg-type]
    return list(app.router.routes())


async def test_a_viewer_is_refused_every_action_even_with_a_valid_token(
    client: Client, panel: tuple[CentralConfig, str, Store]
) -> None:
    from central.panel.app import make_registry

    await client.log_in("vera")
    token = await client.csrf()
    for name in make_registry([]).actions:
        async with client.http.post(f"{client.base}/actions/{name}",
                                    data={"csrf": token, "meter": "1"}) as r:  # fmt: skip
            assert r.status == 403, name
    rows = panel[2].rows("SELECT action, role, outcome FROM panel_audit WHERE user_name = 'vera'"
                         " AND action <> 'login'")  # fmt: skip
    # every registered action (read now, and those of the sections: tariff.recheck, ...)
    assert sorted(rows) == sorted((name, "viewer", "refused") for name in make_registry([]).actions)
    assert ("read_now", "viewer", "refused") in rows


async def test_an_operators_action_is_audited(
    client: Client, panel: tuple[CentralConfig, str, Store]
) -> None:
    await client.log_in("otto")
    token = await client.csrf()
    async with client.http.post(
        f"{client.base}/actions/read_now",
        data={"csrf": token, "concentrator": "c-x", "meter": "000000000001"},
        headers={"Accept": "application/json"},
    ) as r:
        body = await r.json()
    assert body["ok"] is False  # no such meter in the (empty) ledger: nothing sent
    assert "archive" in body["summary"]
    (row,) = panel[2].rows("SELECT user_name, role, action, target, outcome FROM panel_audit"
                           " WHERE id = ?", (body["audit"],))  # fmt: skip
    assert row == ("otto", "operator", "read_now", "c-x/000000000001", "failed")


async def test_tls_serves_https_with_secure_cookies(tmp_path: Path, store: Store) -> None:
    crt, key = self_signed(tmp_path, "panel")
    cfg = _config(tmp_path, tls_cert=str(crt), tls_key=str(key))
    urls: list[str] = []
    trust = ssl.create_default_context(cafile=str(crt))
    trust.check_hostname = False  # the certificate names 127.0.0.1 as CN only
    async with running(cfg, store, None, urls.append):
        assert urls[0].startswith("https://")
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=trust)
        ) as http:
            r = await Client(urls[0].rstrip("/"), http).log_in("vera")
            (cookie,) = [c for c in r.headers.getall("Set-Cookie") if "meterlink_session=" in c]
            assert "Secure" in cookie
            assert "HttpOnly" in cookie
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        async with aiohttp.ClientSession() as http:  # plain HTTP to a TLS port gets nothing
            with pytest.raises(aiohttp.ClientError):
                await http.get(urls[0].replace("https://", "http://"))
