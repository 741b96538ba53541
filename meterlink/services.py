"""Private local services: Mosquitto, InfluxDB 1.x (`influxd`), VictoriaMetrics and PostgreSQL, each
on a free loopback port with its data in a directory of its own, a child process stopped by PID.
Every server started here dies with the process that started it (`die_with_parent`), even when
that process is SIGKILLed: nothing keeps holding a port after a test run, a bench or the demo.

`meterlink demo` starts what it needs with these; the tests use the same launchers (through
tests/fixtures/services.py). Never a fixed port, never the machine's own Mosquitto on 1883.
Binaries come from the Debian packages `scripts/setup` installs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for long-running children: the kernel sends `sig` to the child when its
    parent dies, however it dies (SIGKILL included). Linux only; a no-op elsewhere.

    The "parent" is the thread that started the child: start servers from the main thread (or
    the event loop's), never from a short-lived worker thread."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def arm() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return arm


def _ephemeral_low() -> int:
    """The lowest port the system hands out to outgoing connections (Linux: 32768)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: deque[int] = deque(maxlen=1024)
"""the ports `free_port` returned last in this process: none is free_port'ed again while in here"""
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port free now, for a server started later — drawn below the ephemeral range.
    A port the system picks (bind to 0) comes from the range it also gives outgoing connections:
    between this call and a later (re)start of the server, any client's connection may take it
    (seen: an agent restarted on its metrics port found it held by another program's
    connection). Below that range only another listener can take it.

    Nothing listens on the port until its server starts, so a port drawn a moment ago is still
    free: the last 1024 ports this process was given are never given again (seen: influxd's
    HTTP and RPC ports, two calls in a row, drawn equal; it could not bind the second)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    with _HANDED_OUT_LOCK:
        if low > 11024:
            for _ in range(100):
                port = rng.randint(10000, low - 1)
                if port in _HANDED_OUT or not _bindable(port):
                    continue  # given out already; a listener, or a connection in TIME_WAIT
                _HANDED_OUT.append(port)
                return port
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                picked: int = s.getsockname()[1]
            if picked not in _HANDED_OUT:
                _HANDED_OUT.append(picked)
                return picked
    raise OSError("no free loopback port found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_port(
    port: int, *, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def find_binary(name: str, package: str) -> str:
    """A server binary from its Debian package (also in /usr/sbin, not always on PATH)."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(f"{name} is not installed (Debian package {package}): run scripts/setup")


def _spawn(argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """Start a server, its output appended to `log` (or discarded)."""
    out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdout=out, stderr=out, preexec_fn=die_with_parent())
    finally:
        if not isinstance(out, int):
            out.close()  # the child has its own descriptor


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def private_broker_config(text: str, port: int, paths: dict[str, str]) -> str:
    """A production Mosquitto configuration (deploy/mosquitto/*.conf) made private: every
    ``listener`` on 127.0.0.1:`port`, every path prefix in `paths` replaced (``{"/etc/mosquitto/
    meterlink": "<tmp>/pki"}``), nothing else changed, so the rules under test are the ones
    operators install."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "listener":
            line = f"listener {port} 127.0.0.1"
        for production, private in paths.items():
            line = line.replace(production, private)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Mosquitto:
    """A private broker. `stop()` / `start()` simulate an outage on the same port."""

    workdir: Path
    port: int
    persistence: bool = False
    proc: subprocess.Popen[bytes] | None = None
    acl_file: Path | None = None
    extra: tuple[str, ...] = ()
    """more configuration lines (they apply to the listener: e.g. TLS files)"""
    log: Path | None = None
    config: Path | None = None
    """a production configuration to run instead of the open test listener (made private by
    `private_broker_config`, with `paths`); `acl_file` and `extra` still apply"""
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest none" if self.log is None else "log_dest stderr",
        ]
        if self.config is None:
            lines += [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "max_queued_messages 1000000",
            ]
        if os.geteuid() == 0:
            # as root, mosquitto drops to user "mosquitto", which can neither read an ACL file nor
            # write its database in pytest's 0700 temp dirs
            lines.append("user root")
        if self.config is not None:
            production = self.config.read_text(encoding="utf-8")
            lines.append(private_broker_config(production, self.port, self.paths))
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.extend(self.extra)
        conf.write_text("\n".join(lines) + "\n")
        self.proc = _spawn([find_binary("mosquitto", "mosquitto"), "-c", str(conf)], self.log)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@contextlib.contextmanager
def running_mosquitto(workdir: Path, *, persistence: bool = False) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir, free_port(), persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- InfluxDB 1.x (Debian `influxdb`: /write and InfluxQL) and VictoriaMetrics (v2 write API) ---
def _http_ok(url: str, timeout: float = 0.5) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return bool(200 <= resp.status < 300)
    except OSError:
        return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if _http_ok(url):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@dataclass
class InfluxDB1:
    """A private `influxd` (InfluxDB 1.x). `stop()` / `start()` keep the data and the port."""

    workdir: Path
    port: int
    rpc_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "influxdb.conf"
        data = self.workdir / "influx"
        conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{data}/meta"\n'
            f'[data]\n  dir = "{data}/data"\n  wal-dir = "{data}/wal"\n'
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        self.proc = _spawn(
            [find_binary("influxd", "influxdb"), "run", "-config", str(conf)], self.log
        )
        _wait_http(f"{self.url}/ping", self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def query(self, q: str, db: str = "meterlink") -> list[dict[str, Any]]:
        """InfluxQL; returns the `series` of the first result (empty list when none)."""
        import json
        import urllib.parse
        import urllib.request

        url = f"{self.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "s"})
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback only)
            body = json.loads(resp.read())
        result = body["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        series: list[dict[str, Any]] = result.get("series", [])
        return series


@contextlib.contextmanager
def running_influxdb(workdir: Path) -> Iterator[InfluxDB1]:
    server = InfluxDB1(workdir, free_port(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class VictoriaMetrics:
    """A private VictoriaMetrics (accepts `influxdb-client` writes at /api/v2/write)."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = _spawn(
            [
                find_binary("victoria-metrics", "victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'vm'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=WARN",
            ],
            self.log,
        )
        _wait_http(f"{self.url}/health", self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching `match` (a series selector), flushed first."""
        import json
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):  # noqa: S310
            pass
        url = f"{self.url}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback only)
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


@contextlib.contextmanager
def running_victoria_metrics(workdir: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(workdir, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- PostgreSQL (Debian `postgresql`): the shared store of several central hosts ---------------
def postgres_bin_dir() -> Path:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed (Debian package postgresql): run scripts/setup")


@dataclass
class PostgreSQL:
    """A private PostgreSQL cluster: `initdb` on first start, the postmaster (a child of ours) on a
    free loopback port.

    `initdb` and `postgres` refuse to run as root; as root they run as the `postgres` system
    user (via `runuser`) in a directory of their own under the system temp dir (pytest's temp
    dirs are 0700 root: `postgres` could not enter them), removed by `remove()`. `stop()` /
    `start()` keep the data and the port (an outage). Trust authentication on loopback: for
    tests and the demo only.
    """

    workdir: Path
    port: int
    user: str = "meterlink"
    database: str = "meterlink"
    log: Path | None = None
    #: fsync and synchronous commit as in production (benchmarks); off for tests and the demo
    durable: bool = False
    datadir: Path | None = None
    _base: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(self._as_owner(argv), capture_output=True, check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n{out}")

    def start(self) -> None:
        bindir = postgres_bin_dir()
        fresh = self._base is None
        if fresh:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                self._base = Path(tempfile.mkdtemp(prefix="meterlink-pg-"))
                shutil.chown(self._base, "postgres")
            else:
                self._base = Path(tempfile.mkdtemp(prefix="pg-", dir=self.workdir))
            self.datadir = self._base / "data"
            self._run(
                [str(bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", self.user,
                 "--no-sync", "-E", "UTF8", "--locale=C"]
            )  # fmt: skip
        assert self.datadir is not None
        assert self._base is not None
        server_log = self._base / "server.log"
        # the postmaster in the foreground, as our child: it dies with us (SIGINT = PostgreSQL's
        # fast shutdown), where `pg_ctl start` would leave a daemon behind a killed test run
        options = ["-D", str(self.datadir), "-p", str(self.port), "-k", str(self._base),
                   "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off",
                        "-c", "synchronous_commit=off"]  # fmt: skip
        owner: dict[str, Any] = (
            {"user": "postgres", "group": "postgres", "extra_groups": []}
            if os.geteuid() == 0
            else {}
        )
        with server_log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), *options],
                stdout=out, stderr=out, preexec_fn=die_with_parent(signal.SIGINT), **owner,
            )  # fmt: skip
        try:
            self._wait_ready(bindir, timeout=60.0)
        except (RuntimeError, TimeoutError) as exc:
            stop_process(self.proc)
            tail = server_log.read_text(errors="replace")[-2000:] if server_log.exists() else ""
            raise RuntimeError(f"postgres did not start: {exc}\n{tail}") from None
        if fresh:
            self.create_database(self.database)

    def _wait_ready(self, bindir: Path, timeout: float) -> None:
        """Until the postmaster accepts sessions (a listening port comes earlier: "the database
        system is starting up"), as `pg_ctl -w` waits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"postgres not ready on port {self.port} after {timeout:.0f} s")

    def create_database(self, name: str) -> str:
        """A new empty database (owned by `user`); returns its URL."""
        subprocess.run(
            [str(postgres_bin_dir() / "createdb"), "-h", self.host, "-p", str(self.port),
             "-U", self.user, name],
            check=True, capture_output=True,
        )  # fmt: skip
        return self.url_of(name)

    def pid(self) -> int | None:
        """The postmaster's PID, from its pid file (None when not running)."""
        if self.datadir is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients disconnected, data kept), then SIGQUIT, then kill."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0)):
            proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.kill()
        proc.wait()

    def remove(self) -> None:
        """Stop, and delete the cluster's directory."""
        self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = self.datadir = None


@contextlib.contextmanager
def running_postgresql(workdir: Path, *, durable: bool = False) -> Iterator[PostgreSQL]:
    server = PostgreSQL(workdir, free_port(), durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.remove()
