"""`meterlink demo --keep-running` stopped the ways a new user stops it — Ctrl-C (SIGINT), a
supervisor or `timeout` (SIGTERM), a closed terminal (SIGHUP) — and SIGKILL: every process it
started is gone afterwards and no port it used is still held."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meterlink import demo
from meterlink.services import die_with_parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hang guard, not a speed limit

REPO = Path(__file__).resolve().parents[2]
FLEET = Path(__file__).parent / "data" / "demo-fleet.toml"


AS_A_NEW_USER = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
"""these machines set PYTHONUNBUFFERED, which hid that the demo's lines reached a pipe only at
its end (a script waiting for "demo: running" waited for ever)"""


def _children(pid: int) -> set[int]:
    """Every live process whose parent is `pid`, from /proc."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _held(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (signal.SIGINT, 0),  # --keep-running: Ctrl-C is the documented way to end it
        (signal.SIGTERM, 128 + signal.SIGTERM),
        (signal.SIGHUP, 128 + signal.SIGHUP),
        (signal.SIGKILL, -signal.SIGKILL),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"],
)
def test_a_stopped_demo_leaves_nothing_running(tmp_path: Path, sig: int, code: int) -> None:
    arm = die_with_parent()

    def as_a_background_job() -> None:
        # a script's `meterlink demo … &` starts with SIGINT ignored (no job control): the
        # demo must stop on SIGINT all the same
        arm()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    demo = subprocess.Popen(
        [sys.executable, "-m", "meterlink", "demo", "--fleet", str(FLEET),
         "--workdir", str(tmp_path), "--wait", "60", "--settle", "1", "--keep-running"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=as_a_background_job, env=AS_A_NEW_USER,
    )  # fmt: skip
    assert demo.stdout is not None
    seen = []
    try:
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("demo: running"):
                break
        else:
            pytest.fail("the demo ended before it was running:\n" + "".join(seen[-40:]))
        text = "".join(seen)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
        started = _children(demo.pid)
        assert len(started) >= 5, (started, text[-2000:])  # broker, db, simulator, central, agent
        assert any(_held(p) for p in ports)
        demo.send_signal(sig)
        try:
            assert demo.wait(120) == code  # a hang guard: children get 30 s, servers 30 s more
        except subprocess.TimeoutExpired:
            logs = {f.name: f.read_text(errors="replace")[-600:] for f in tmp_path.glob("*.log")}
            pytest.fail(f"the demo did not stop: {_children(demo.pid)} alive; logs {logs}")
        rest = demo.stdout.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    deadline = time.monotonic() + 30  # SIGKILL: the children got SIGTERM from the kernel
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.1)
    assert not [p for p in started if _alive(p)], (started, rest[-2000:])
    assert not [p for p in ports if _held(p)]
    if sig != signal.SIGKILL:
        assert "Traceback" not in text + rest
        assert os.path.exists(tmp_path / "agent.log")


class _CtrlCAsTheLineIsWritten(io.StringIO):
    """Ctrl-C arriving the moment "demo: running" is out (a script that waits for the line and
    stops the demo at once): Python raises KeyboardInterrupt in whatever runs next."""

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().endswith("demo: running; Ctrl-C stops everything\n"):
            raise KeyboardInterrupt
        return written


def test_ctrl_c_right_after_the_running_line_ends_the_demo_normally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _CtrlCAsTheLineIsWritten()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        demo._keep_running(demo._Stack(tmp_path))  # returns: the demo exits 0
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped --keep-running's wait: the demo would exit 130")
    assert out.getvalue() == "demo: running; Ctrl-C stops everything\n"


def test_a_child_that_dies_while_the_demo_keeps_running_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    stack = demo._Stack(tmp_path)
    stack.start("agent", ["sh", "-c", "echo 'agent: config error' >&2; exit 78"]).wait()
    with pytest.raises(demo.StackFailed, match=r"agent exited with 78:\nagent: config error"):
        demo._keep_running(stack)
