"""The two InfluxDB writers. Both take line protocol (seconds precision) and sort every failure
into one of two kinds: `WriteUnavailable` (5xx, 408, 429, connection refused, timeout: retry
later; and `WriteMisconfigured`, 401/403/404: a token, a permission or the database is wrong,
which an operator fixes while the lines wait) and `WriteRejected` (any other 4xx: the server
refuses these lines; retrying the same bytes cannot help).
"""

from __future__ import annotations

import base64
from typing import Protocol, cast

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from central.config import InfluxConfig
from common.aio import raise_if_cancelled

__all__ = [
    "V1Writer",
    "V2Writer",
    "WriteError",
    "WriteMisconfigured",
    "WriteRejected",
    "WriteUnavailable",
    "Writer",
    "make_writer",
]


class WriteError(Exception):
    status: int | None = None


class WriteUnavailable(WriteError, ConnectionError):
    """The server could not take the write now (5xx or no connection): retry with backoff."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WriteMisconfigured(WriteUnavailable):
    """401, 403 or 404: the credentials, their rights or the database/bucket are wrong (a token
    rotated, a grant missing, a database dropped). Nothing is wrong with the lines: they wait in
    the spool, retried with backoff, until an operator puts the set-up right."""


class WriteRejected(WriteError):
    """The server refused the lines (400, 413, 422, ...): a bad line, which splitting the batch
    isolates."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()[:500]}")
        self.status = status
        self.body = body


class Writer(Protocol):
    name: str

    async def start(self) -> None: ...
    async def write(self, lines: list[str]) -> None: ...
    async def close(self) -> None: ...


def _sort_status(status: int, body: str) -> None:
    if status < 300:
        return
    if status in (401, 403, 404):
        raise WriteMisconfigured(f"HTTP {status}: {body.strip()[:300]}", status)
    if 400 <= status < 500 and status not in (408, 429):
        raise WriteRejected(status, body)
    raise WriteUnavailable(f"HTTP {status}: {body.strip()[:300]}", status)


class V1Writer:
    """InfluxDB 1.x: ``POST /write?db=..&rp=..&precision=s``."""

    name = "v1"

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._params = {"db": cfg.database, "precision": "s"}
        if cfg.retention_policy:
            self._params["rp"] = cfg.retention_policy
        self._headers = {}
        if cfg.username:  # HTTP basic, by hand: aiohttp's BasicAuth is deprecated, and the
            # replacement is too new for the aiohttp versions we accept
            secret = cfg.password.reveal() if cfg.password else ""
            pair = f"{cfg.username}:{secret}".encode()
            self._headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                self.cfg.url.rstrip("/"),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                headers=self._headers,
            )
        return self._session

    async def start(self) -> None:
        if self.cfg.create_database:
            await self.query(f'CREATE DATABASE "{self.cfg.database}"', method="POST")

    async def query(self, q: str, *, method: str = "GET") -> str:
        try:
            async with self._http().request(
                method, "/query", params={"q": q, "db": self.cfg.database}
            ) as resp:
                body = await resp.text()
                _sort_status(resp.status, body)
                return body
        except WriteError:
            raise  # sorted already (WriteUnavailable is an OSError: keep its kind and status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp's own timeout can take a cancellation for its own: a stop, not a down database
            raise_if_cancelled(exc)
            raise WriteUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def write(self, lines: list[str]) -> None:
        data = "\n".join(lines).encode()
        try:
            async with self._http().post("/write", params=self._params, data=data) as resp:
                _sort_status(resp.status, await resp.text() if resp.status >= 300 else "")
        except WriteError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise_if_cancelled(exc)
            raise WriteUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_SECONDS = cast(WritePrecision, WritePrecision.S)  # the class attribute is typed as str


class V2Writer:
    """The v2 write API through `influxdb-client` (InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics)."""

    name = "v2"

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self._client: InfluxDBClientAsync | None = None

    async def start(self) -> None:
        return

    def _api(self) -> InfluxDBClientAsync:
        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self.cfg.url,
                token=self.cfg.token.reveal() if self.cfg.token else "",
                org=self.cfg.org,
                timeout=int(self.cfg.timeout_s * 1000),
            )
        return self._client

    async def write(self, lines: list[str]) -> None:
        try:
            await (
                self._api()
                .write_api()
                .write(
                    bucket=self.cfg.bucket,
                    org=self.cfg.org,
                    record="\n".join(lines),
                    write_precision=_SECONDS,
                )
            )
        except ApiException as exc:
            _sort_status(int(exc.status or 500), str(exc.body or exc.reason or ""))
            raise WriteUnavailable(f"influxdb-client: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise_if_cancelled(exc)
            raise WriteUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]


def make_writer(cfg: InfluxConfig) -> Writer:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)
