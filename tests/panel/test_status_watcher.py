"""The panel's agent-status subscription stops without leaving a task behind: the panel stops it
by cancelling it (`central/panel/app.py` `running`), and its reader task, ending on the closed
connection, used to die unawaited — asyncio's "Task exception was never retrieved" with an
`MqttError` traceback in the log at every panel stop (seen in the campaign, docs/reliability.md)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import pytest

from central.config import MqttConfig
from central.panel.data import StatusWatcher
from common.mqtt import Client
from tests.agent.helpers_mqtt import eventually
from tests.fixtures.services import running_mosquitto

pytestmark = pytest.mark.slow


async def test_cancelled_at_stop_leaves_no_task_behind(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    with running_mosquitto(tmp_path / "broker") as broker:
        mqtt = MqttConfig(host=broker.host, port=broker.port, client_id="test-panel")
        watcher = StatusWatcher(mqtt, "test-panel-status")
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        async with Client(broker.host, broker.port) as agent:
            await eventually(lambda: watcher.connected, within=30)
            status = {"state": "online", "at": "2026-12-03T08:00:00+08:00"}
            await agent.publish("meterlink/v1/c-1/status", json.dumps(status), qos=1, retain=True)
            await eventually(lambda: "c-1" in watcher.statuses, within=30)
        stop.set()  # and cancelled at once, as the panel does
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the connection closes; a reader left behind ends now
        gc.collect()
    assert [c for c in reported if "never retrieved" in str(c.get("message"))] == []
    assert {t.get_coro().__qualname__ for t in asyncio.all_tasks()} == {  # type: ignore[union-attr]
        asyncio.current_task().get_coro().__qualname__  # type: ignore[union-attr]
    }
