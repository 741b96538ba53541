"""`meterlink demo`: the whole chain on one machine, from nothing.

Starts what is missing — a Mosquitto and an InfluxDB 1.x (`influxd`) on free loopback ports
when none is given — then the meter simulator with a fleet (default: the documented field
profile, simulators/fleets/field.toml) on TCP serial servers, `meterlink agent run` for one
concentrator, `meterlink central run`, and the operators' panel (`meterlink central panel`,
an operator log-in made for the run, printed with the panel's URL), the software encryption
machine and the top-up order service (`meterlink central topup serve`), which gets top-ups and
relay orders for the fleet's prepaid meters through its billing API. The agent's daily plan
reads today's freeze; when every archived meter is read or explained (or `--wait` runs out) the
demo prints the coverage report, sets it beside what the simulator's own answer record says,
then the remote top-up success rate (远程充值成功率) beside the simulator's own credit record,
and says where to look.

Everything runs as child processes of the demo (agent and simulator are separate programs; the
central side imports neither) and is stopped by PID at the end, unless `--keep-running`.
The central side keeps its state in a SQLite file in the work dir, or with `--store
postgresql://USER@HOST:PORT/DB` in that PostgreSQL database (password, if any, from
METERLINK_STORE_PASSWORD), as several central hosts would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common.clock
from central.config import CoverageConfig
from central.coverage import compute_day
from central.ledger import Ledger
from central.report import render
from central.store import Store, StoreError, open_store, parse_url
from central.tariff.check import CheckSettings
from central.tariff.day import check_day
from central.tariff.report import summary
from central.tariff.store import TariffStore
from common.config import EX_CONFIG, Secret
from meterlink.demo_topup import TopupDemo
from meterlink.services import InfluxDB1, Mosquitto, die_with_parent, free_port
from simulators import FleetError, load_fleet

__all__ = ["configure", "run"]

REPO = Path(__file__).resolve().parent.parent
FIELD_FLEET = REPO / "simulators" / "fleets" / "field.toml"
CONCENTRATOR = "demo-c1"
#: every top-up and relay order of the demo is terminal this long after it was submitted
TOPUP_DEADLINE_S = 45.0
#: DIs whose intact answer means the meter gave its daily energy (2007 frozen import energy,
#: 1997 import energy totals); the simulator's record is checked against these
ENERGY_DIS = ("0506", "901F", "9010")
#: the tariff set-ups arriving stop counting as "still coming" after this long without a new one
#: (once the first arrived: top-up commands go before the agent's plans on the bus)
TARIFF_SETTLE_S = 20.0
#: the longest the demo waits for the agent's tariff set-ups
TARIFF_WAIT_S = 180.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", type=Path, default=FIELD_FLEET, help="simulated fleet (TOML)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("var/demo"), help="configs, logs, data (var/demo)"
    )
    parser.add_argument(
        "--mqtt", metavar="HOST:PORT", type=_host_port, help="use this broker, start none"
    )
    parser.add_argument(
        "--influx", metavar="URL", type=_http_url, help="use this InfluxDB 1.x, start none"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        type=_store_url,
        help="the central store: postgresql://USER@HOST:PORT/DB (an empty database; password"
        " from METERLINK_STORE_PASSWORD) as several central hosts share it (default: a SQLite"
        " file in the work dir)",
    )
    parser.add_argument(
        "--wait", type=float, default=240.0, help="longest wait for the plan (s, default 240)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="done once everything is explained and nothing changed for this long (s, 20)",
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything running until Ctrl-C"
    )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected http://HOST:PORT")
    return text.rstrip("/")


class StackFailed(RuntimeError):
    """A part of the demo stopped or could not start; the message says which and why."""


@dataclass
class _Stack:
    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    #: run after the processes are stopped, last first
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(  # type: ignore[call-overload]
            argv,
            stdout=kwargs.pop("stdout", log),
            stderr=log,
            cwd=REPO,
            env=kwargs.pop("env", None),
            preexec_fn=die_with_parent(),  # even if the demo is SIGKILLed
        )
        self.procs.append((name, proc))
        return proc  # type: ignore[no-any-return]

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise StackFailed(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        # a second Ctrl-C / SIGTERM must not cut the stopping short and leave servers behind
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        # meterlink's own processes together (each finishes its work within its own stop
        # budget, under STOP_WAIT_S), then the servers they were finishing it with
        ours = [(n, p) for n, p in reversed(self.procs) if n not in SERVERS]
        servers = [(n, p) for n, p in reversed(self.procs) if n in SERVERS]
        for group in (ours, servers):
            _stop_together(group, STOP_WAIT_S)
        for cleanup in reversed(self.cleanups):
            cleanup()


SERVERS = {"mosquitto", "influxd"}
STOP_WAIT_S = 30.0
"""longest wait for a child after SIGTERM (the central's stop budget is 20 s); then SIGKILL"""


def _stop_together(procs: list[tuple[str, subprocess.Popen[bytes]]], within: float) -> None:
    for _name, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + within
    for name, proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"meterlink demo: {name} did not stop within {within:.0f} s; killed it",
                  file=sys.stderr)  # fmt: skip
            proc.kill()
            proc.wait()


def _mosquitto(stack: _Stack) -> tuple[str, int]:
    broker = Mosquitto(
        stack.workdir / "mosquitto", free_port(), log=stack.workdir / "mosquitto.log"
    )
    broker.start()
    assert broker.proc is not None
    stack.procs.append(("mosquitto", broker.proc))
    return broker.host, broker.port


def _influxd(stack: _Stack) -> str:
    db = InfluxDB1(
        stack.workdir / "influxdb", free_port(), free_port(), log=stack.workdir / "influxd.log"
    )
    db.start()
    assert db.proc is not None
    stack.procs.append(("influxd", db.proc))
    return db.url


def _simulator(stack: _Stack, fleet: Path) -> tuple[list[tuple[str, str, str]], str]:
    """Serve the fleet on TCP; returns (bus, protocol, host:port) per bus and the control
    channel's URL (faults, credits: the top-up part)."""
    meterlink = [sys.executable, "-m", "meterlink"]
    archive = subprocess.run(
        [*meterlink, "sim", "fleet", "--archive", "--fleet", str(fleet)],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    (stack.workdir / "archive.json").write_bytes(archive)
    record = stack.workdir / "answers.jsonl"
    record.unlink(missing_ok=True)
    proc = stack.start(
        "simulator",
        [*meterlink, "sim", "serve", "--fleet", str(fleet), "--tcp", "127.0.0.1:0",
         "--record", str(record), "--control", "127.0.0.1:0", "--credits",
         str(stack.workdir / "credits.jsonl")],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    (stack.workdir / "credits.jsonl").unlink(missing_ok=True)
    buses = []
    control = ""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode().strip()
        if line == "ready":
            break
        if line.startswith("control "):  # "control http://127.0.0.1:40123"
            control = line.split()[1]
        # "bus east-1 (dlt645) tcp 127.0.0.1:34879 meters=256"
        parts = line.split()
        if parts and parts[0] == "bus":
            buses.append((parts[1], parts[2].strip("()"), parts[4]))
    if not buses:
        stack.check()
        raise RuntimeError("the simulator announced no bus")
    return buses, control


def _agent_config(stack: _Stack, host: str, port: int, buses: list[tuple[str, str, str]]) -> Path:
    lines = [
        "stop_timeout_s = 10",
        "[agent]",
        f'concentrator = "{CONCENTRATOR}"',
        f'state_dir = "{stack.workdir / "agent-state"}"',
        'log_format = "text"',
        "[mqtt]",
        f'host = "{host}"',
        f"port = {port}",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0",
        "[metrics]",
        'listen = ""',
    ]
    for name, protocol, where in buses:
        opts = "parity=N&reply_timeout_ms=300&byte_gap_ms=100&frame_gap_ms=0&baud=9600"
        url = f"modbus+tcp://{where}" if protocol == "modbus" else f"tcp://{where}?{opts}"
        lines += ["[[buses]]", f'name = "{name}"', f'url = "{url}"']
    lines += [
        "[archive]",
        f'file = "{stack.workdir / "archive.json"}"',
        "[plans.daily]",
        'start = "00:00"',
        'deadline = "23:59"',
        "retry_spacing_minutes = 0.1",
        # the two days before too: the tariff check's energy allocation compares consecutive
        # daily freezes (docs/tariff.md)
        "backfill_days = 2",
        "[plans.clock]",
        "enabled = false",
        "[plans.tariff]",  # each meter's tariff set-up, at once (the default waits for noon)
        "enabled = true",
        'start = "00:00"',
        'deadline = "23:59"',
        "attempts_per_day = 6",  # the field fleet's noisy meters: tried again within the demo
        "retry_spacing_minutes = 0.2",
    ]
    path = stack.workdir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _store_url(text: str) -> str:
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _central_config(stack: _Stack, host: str, port: int, influx: str, store: str) -> Path:
    w = stack.workdir
    path = w / "central.toml"
    path.write_text(
        f'[mqtt]\nhost = "{host}"\nport = {port}\nclient_id = "demo-central-1"\n'
        f'group = "demo"\n[influx]\napi = "v1"\nurl = "{influx}"\ndatabase = "meterlink"\n'
        f'[consumer]\nspool = "{w}/central-spool.sqlite3"\nflush_interval_s = 0.2\n'
        f"[coverage]\ninterval_s = 2.0\n[store]\nurl = {json.dumps(store)}\n"
        f"[tariff]\ninterval_s = 5.0\n"
        f'[panel]\nlisten = "127.0.0.1:{free_port()}"\nrefresh_s = 2.0\n'
    )
    return path


#: the panel's demo log-in (an operator); its password is new on every run
PANEL_USER = "demo"


def _panel(stack: _Stack, central_conf: Path, env: dict[str, str]) -> tuple[str, str]:
    """Make the demo's operator and start `meterlink central panel`; its URL and password."""
    meterlink = [sys.executable, "-m", "meterlink", "central", "panel"]
    password = secrets.token_urlsafe(12)
    made = subprocess.run(
        [*meterlink, "users", "add", PANEL_USER, "--role", "operator", "--password-stdin",
         "--config", str(central_conf)],
        input=password.encode(), capture_output=True, cwd=REPO, env=env, check=False,
    )  # fmt: skip
    if made.returncode != 0 and b"exists" in made.stderr:  # a store kept from an earlier run
        made = subprocess.run(
            [*meterlink, "users", "passwd", PANEL_USER, "--password-stdin", "--config",
             str(central_conf)],
            input=password.encode(), capture_output=True, cwd=REPO, env=env, check=False,
        )  # fmt: skip
    if made.returncode != 0:
        raise StackFailed(f"panel user: {made.stderr.decode(errors='replace')}")
    proc = stack.start("panel", [*meterlink, "--config", str(central_conf)],
                       stdout=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()  # "panel http://127.0.0.1:PORT/"
    if not line.startswith("panel "):
        stack.check()
        raise StackFailed("the panel did not start: see panel.log")
    return line.split()[1], password


def _open_store(url: str) -> Store:
    return open_store(url, password=_store_password(), name="meterlink demo")


def _earlier_demo_data(store: Store) -> int:
    """Archive versions of the demo's concentrator an earlier run left in the store."""
    rows = store.rows(
        "SELECT count(*) FROM archive_version WHERE concentrator = ?", (CONCENTRATOR,)
    )
    return int(rows[0][0])


def answered(record: Path) -> set[str]:
    """Meters the simulator's own record shows giving their energy intact (independent of the
    agent's and the centre's view)."""
    out: set[str] = set()
    if not record.exists():
        return out
    for line in record.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["outcome"] == "answered" and r["meter"] and (r["di"] or "").startswith(ENERGY_DIS):
            out.add(r["meter"])
    return out


def _settled(ledger: Ledger, day: str, cfg: CoverageConfig) -> tuple[bool, str]:
    cov = compute_day(ledger, day, cfg)
    fleet = cov.fleet()
    unexplained = fleet.reasons.get("unexplained", 0)
    status = f"{fleet.read}/{fleet.expected} read, {unexplained} not yet read or explained"
    return fleet.expected > 0 and unexplained == 0, status


@contextlib.contextmanager
def _running(workdir: Path) -> Iterator[_Stack]:
    stack = _Stack(workdir)
    try:
        yield stack
    finally:
        stack.stop()


def _store_password() -> Secret | None:
    """The PostgreSQL password of --store, from where the central side reads it."""
    value = os.environ.get("METERLINK_STORE_PASSWORD")
    return Secret(value, "METERLINK_STORE_PASSWORD") if value else None


def run(args: argparse.Namespace) -> int:
    try:
        fleet = load_fleet(args.fleet)  # a bad fleet file stops here, before anything starts
    except FleetError as exc:
        print(f"meterlink demo: {exc}", file=sys.stderr)
        return EX_CONFIG
    if isinstance(sys.stdout, io.TextIOWrapper):
        # each line as it is printed also into a pipe (`| tee demo.log`, a supervisor waiting
        # for "demo: running"): a pipe's output was held until 8 KiB had gathered, or the end
        sys.stdout.reconfigure(line_buffering=True)
    tz = fleet.world.tz
    args.sim_fleet = fleet  # the same seed as the simulator's: its plans and its truth
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on)
    # Ctrl-C is the documented stop, also when a shell started the demo in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored, and Python then
    # keeps ignoring it): the demo would run on, holding its ports, whatever SIGINT it got
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(args, tz)
    except StackFailed as exc:
        print(f"meterlink demo: {exc}", file=sys.stderr)
        return 1
    except _Stopped as exc:  # everything it started was stopped on the way out
        print(f"meterlink demo: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    """SIGTERM (a supervisor, `timeout`, `kill`) or SIGHUP (a closed terminal): stop everything,
    as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _run(args: argparse.Namespace, tz: dt.tzinfo) -> int:
    started = time.monotonic()
    workdir: Path = args.workdir.resolve()
    for stale in ("coverage.sqlite3", "central-spool.sqlite3", "agent-state"):
        target = workdir / stale
        if target.is_dir():
            shutil.rmtree(target)
        for f in workdir.glob(f"{stale}*"):
            f.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    meterlink = [sys.executable, "-m", "meterlink"]
    store_url = args.store or f"sqlite://{workdir}/coverage.sqlite3"
    try:  # first: a store that cannot be reached stops the demo before anything starts
        store = _open_store(store_url)
        ledger = Ledger(store)
        tariffs = TariffStore(store)
    except StoreError as exc:
        print(f"meterlink demo: {exc}", file=sys.stderr)
        return 69
    fleet = getattr(args, "sim_fleet", None)
    if fleet is not None and fleet.tariff_plans:  # what the utility declares: the sim's plans
        tariffs.replace_plans(fleet.tariff_plans_toml(), "meterlink demo (the simulator's plans)")
    with _running(workdir) as stack:
        stack.cleanups.append(store.close)
        if args.mqtt:
            host, port = args.mqtt
        else:
            host, port = _mosquitto(stack)
        influx = args.influx or _influxd(stack)
        print(f"demo: broker mqtt://{host}:{port}, InfluxDB {influx} (database meterlink)")
        buses, control = _simulator(stack, args.fleet)
        print(
            f"demo: simulator {args.fleet.name}: " + ", ".join(f"{b} at {w}" for b, _, w in buses)
        )
        if _earlier_demo_data(store):
            print(
                f"demo: note: the store already holds {CONCENTRATOR}'s data from an earlier"
                " demo run; today's figures include it (use an empty database to start afresh)"
            )
        print(f"demo: central store {store}")
        topup = TopupDemo(load_fleet(args.fleet), args.fleet, CONCENTRATOR)
        topup.start_hsm(stack)
        central_conf = _central_config(stack, host, port, influx, store_url)
        with central_conf.open("a") as conf:
            conf.write(topup.config_section(workdir, free_port()))
        # the agents' command key, for the panel's "read now" and the top-up service (a new
        # one each run)
        env = {**os.environ, "METERLINK_MQTT_COMMAND_KEY": secrets.token_hex(16)}
        stack.start("central", [*meterlink, "central", "run", "--config", str(central_conf)])
        time.sleep(1.0)  # subscribed before the agent publishes its archive and first readings
        stack.start("agent", [*meterlink, "agent", "run", "--config",
                              str(_agent_config(stack, host, port, buses))], env=env)  # fmt: skip
        print(f"demo: top-up service {topup.start_service(stack, central_conf, env)}"
              f" (encryption machine {topup.hsm_url})")  # fmt: skip
        topup.submit(control, TOPUP_DEADLINE_S)
        print(f"demo: {len(topup.orders)} top-up and relay orders submitted through the API")
        panel_url, panel_password = _panel(stack, central_conf, env)
        print(f"demo: panel {panel_url} (log-in {PANEL_USER} / {panel_password}, operator)")
        # the data day is the meters' local date (the agent's default zone is the same,
        # Asia/Shanghai, whatever this machine's zone is)
        day = common.clock.current().now(tz).date().isoformat()
        cfg = CoverageConfig()
        deadline = time.monotonic() + args.wait
        status = "waiting for the first round"
        settled, changed = False, time.monotonic()
        while time.monotonic() < deadline:
            stack.check()
            time.sleep(2.0)
            settled, now = _settled(ledger, day, cfg)
            if now != status:
                status, changed = now, time.monotonic()
                print(f"demo: daily plan for {day}: {status}", flush=True)
            # done when every meter is read or explained and the retries have stopped helping
            if settled and time.monotonic() - changed > args.settle:
                break
        time.sleep(2 * 2.0 + 1)  # the consumer's coverage job publishes to InfluxDB
        cov = compute_day(ledger, day, cfg)
        print()
        sys.stdout.write(render(cov, "table", min_days=1))
        sim = answered(workdir / "answers.jsonl")
        print(
            f"\nsimulator's own record: {len(sim)} of {cov.fleet().expected} archived meters gave"
            f" their energy intact; coverage counts {cov.fleet().read} read (a read needs every"
            " item of one attempt; the record counts single replies)"
        )
        if fleet is not None and fleet.tariff_plans:
            _tariff_rate(ledger, tariffs, fleet, day, cov.fleet(), stack)
        final = topup.wait(stack, TOPUP_DEADLINE_S + 15)
        print()
        for line in topup.report(control, final, store):
            print(line)
        _where_to_look(workdir, influx, central_conf)
        print(
            f"  panel      {panel_url}  log-in: {PANEL_USER} / {panel_password} (operator;"
            " docs/panel.md)"
        )
        print(f"demo: done in {time.monotonic() - started:.0f} s")
        if args.keep_running:
            _keep_running(stack)
    return 0 if settled else 1


def _keep_running(stack: _Stack) -> None:
    """--keep-running: serve until Ctrl-C. The line that says so is written inside the wait, so
    a Ctrl-C that follows it ends the demo normally however soon it comes (a script waiting for
    the line and then pressing Ctrl-C got exit 130 when the signal came before the wait)."""
    with contextlib.suppress(KeyboardInterrupt):
        print("demo: running; Ctrl-C stops everything", flush=True)
        while True:
            stack.check()
            time.sleep(5)


def _tariff_rate(
    ledger: Ledger, tariffs: TariffStore, fleet: Any, day: str, fleet_cov: Any, stack: _Stack
) -> None:
    """Wait for the agent's tariff set-ups, check the day, print 电价执行正确率 beside the
    coverage rate and the simulator's own truth.

    Done when every meter the daily plan read has a set-up in the store, or when none came for
    TARIFF_SETTLE_S after the first one (dead meters never send one), or after TARIFF_WAIT_S."""
    coverage: float | None = fleet_cov.rate
    started = settled = time.monotonic()
    last, count = -1, 0
    while time.monotonic() - started < TARIFF_WAIT_S:
        stack.check()
        count = int(tariffs.store.rows(
            "SELECT count(DISTINCT meter) FROM tariff_setup WHERE concentrator = ?",
            (CONCENTRATOR,))[0][0])  # fmt: skip
        if count != last:
            last, settled = count, time.monotonic()
        if count >= fleet_cov.read or (count and time.monotonic() - settled >= TARIFF_SETTLE_S):
            break
        time.sleep(1.0)
    book = tariffs.plans()
    assert book is not None
    result = check_day(ledger, tariffs, book, day, CheckSettings(), str(fleet.world.tz))
    truth = fleet.tariff_truth(dt.date.fromisoformat(day))
    truth_ok = sum(t.outcome == "OK" for t in truth.values())
    rate = result.fleet().rate
    print(
        f"\nrates for {day}: coverage 全口径抄表成功率 {_pct(coverage)}% ·"
        f" {summary(result)}; set-ups read from {count} meters"
    )
    codes = ", ".join(f"{k} {v}" for k, v in sorted(result.fleet().outcomes.items()))
    print(f"tariff outcomes: {codes or 'none'}")
    print(
        f"simulator's own truth: {truth_ok} of {len(truth)} meters with a plan execute it"
        f" ({_pct(100.0 * truth_ok / len(truth) if truth else None)}%; central says"
        f" {_pct(rate)}%: a meter whose set-up was not read counts as not OK, as in 全口径)"
    )
    read = [o for o in result.outcomes if o.outcome != "NOT_READ" and o.meter in truth]
    agree = sum(o.outcome == truth[o.meter].outcome for o in read)
    unread = len(result.outcomes) - len(read)
    print(
        f"  of the {len(read)} meters read, central's verdict equals the simulator's truth for"
        f" {agree}; {unread} not read yet (a failed tariff read — dead, intermittent or noisy"
        " meters — is tried again after [plans.tariff] retry spacing)"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _where_to_look(workdir: Path, influx: str, central_conf: Path) -> None:
    print(
        f"""
where to look:
  report     meterlink central report --config {central_conf} [--format csv|json]
  tariff     meterlink central report --tariff --config {central_conf}; work orders:
             meterlink central tariff workorders --config {central_conf}
  InfluxDB   {influx}  database "meterlink": measurements reading, round, read_failure,
             coverage, coverage_reason, coverage_streak, topup, topup_reason,
             topup_meter, tariff_execution, tariff_outcome (docs/influx.md)
  top-ups    meterlink central report --topups --config {central_conf};
             meterlink central topup reconcile --day DAY --config {central_conf}
  Grafana    deploy/grafana/ (provisioning + dashboard; point the datasource at {influx})
  logs       {workdir}/{{simulator,agent,central,panel,topup,hsm,mosquitto,influxd}}.log
  simulator  {workdir}/answers.jsonl (who answered what)"""
    )
