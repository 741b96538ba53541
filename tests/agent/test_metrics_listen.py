"""The agent's /metrics port taken by another process does not stop the agent (seen in the
soak: after a SIGKILL the agent was started again on its metrics port, which an outgoing
connection of another program held by then; the agent died with an `ExceptionGroup` traceback,
again and again, and read no meter). It reads on, says so once, and listens as soon as it can."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.agent.helpers_mqtt import CONCENTRATOR, Collector, eventually
from tests.fixtures.processes import meterlink
from tests.fixtures.services import free_port, running_mosquitto

pytestmark = pytest.mark.slow


def _metrics(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return None


async def test_a_taken_metrics_port_does_not_stop_the_agent(tmp_path: Path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", free_port()))
    holder.listen()
    port = holder.getsockname()[1]
    config = tmp_path / "agent.toml"
    try:
        with running_mosquitto(tmp_path / "broker") as broker:
            config.write_text(
                f'[agent]\nconcentrator = "{CONCENTRATOR}"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min_s = 0.2\n'
                f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                '[[buses]]\nname = "b1"\nurl = "tcp://127.0.0.1:9"\n'
                "[plans.daily]\nenabled = false\n[plans.clock]\nenabled = false\n"
            )
            status = f"meterlink/v1/{CONCENTRATOR}/status"
            async with (
                Collector(broker, filters=(status,)) as seen,
                meterlink(["agent", "run", "--config", str(config)], tmp_path / "a.log") as agent,
            ):
                await eventually(lambda: "metrics: cannot listen" in agent.log(), within=30)
                await eventually(
                    lambda: any(s.payload["state"] == "online" for s in seen.of("status")),
                    within=30,
                )
                assert agent.proc is not None
                assert agent.proc.returncode is None, agent.log()[-3000:]
                holder.close()  # the other program lets go of the port
                async with asyncio.timeout(60):  # a hang guard: the next try is within 30 s
                    while (body := await asyncio.to_thread(_metrics, port)) is None:  # noqa: ASYNC110
                        await asyncio.sleep(0.2)  # polling another process's listener
                assert b"meterlink_mqtt_connected 1.0" in body
                assert await agent.stop() == 0, agent.log()[-3000:]
            log = agent.log()
            assert log.count("metrics: cannot listen") == 1, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
            assert f"metrics on http://127.0.0.1:{port}/metrics" in log
    finally:
        holder.close()
