"""The coverage job: which days it recomputes and publishes, driven pass by pass on a ledger
with more history than a meter keeps (real Mosquitto, consumer and influxd; either store)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tests.central.helpers import (
    archive,
    batch,
    config,
    meters,
    publish,
    reading,
    running_consumer,
    stamp,
    wait_for,
)
from tests.fixtures.services import InfluxDB1, Mosquitto

FIRST = dt.date(2026, 8, 27)
DAYS = [(FIRST + dt.timedelta(days=i)).isoformat() for i in range(90)]  # .. 2026-11-24
METERS = meters(4)


def fleet(db: InfluxDB1) -> dict[str, list[Any]]:
    """{day: [expected, collected]} of the published fleet rows."""
    series = db.query("SELECT expected, collected FROM coverage WHERE scope = 'fleet'")
    rows = series[0]["values"] if series else []
    return {dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat(): [e, c] for t, e, c in rows}


async def test_ninety_days_are_all_published_once_and_a_new_version_redoes_only_its_days(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB1, store_url: str
) -> None:
    # the job is driven here, pass by pass, not by its timer
    cfg = config(
        tmp_path, mosquitto.port, influxdb.url, store=store_url, coverage={"interval_s": 3600.0}
    )
    v1 = [(m, "east", "acme") for m in METERS[:3]]
    history: list[tuple[str, str, Any]] = [
        ("c-001", "archive", archive("c-001", 1, v1, stamp(DAYS[0], "08:00"))),
        *(
            ("c-001", "readings", batch("c-001", [reading(m, d) for m, _, _ in v1], d))
            for d in DAYS
        ),
    ]
    async with running_consumer(cfg) as consumer:
        await publish(mosquitto.port, history)
        await wait_for(lambda: consumer.stats.acked == 91, what="90 days acknowledged")
        assert await consumer.publish_coverage() == 90
        assert consumer.ledger.dirty_days() == {}
        assert await consumer.publish_coverage() == 0  # nothing changed: nothing to do
        assert fleet(influxdb) == {d: [3, 3] for d in DAYS}

        # archive v2 (a fourth meter) from day 85: days 85..90 change, and nothing before
        v2 = [*v1, (METERS[3], "east", "acme")]
        new = archive("c-001", 2, v2, stamp(DAYS[84], "08:00"))
        await publish(mosquitto.port, [("c-001", "archive", new)])
        await wait_for(lambda: consumer.stats.acked == 92, what="v2 acknowledged")
        assert sorted(consumer.ledger.dirty_days()) == DAYS[84:]
        assert await consumer.publish_coverage() == 6
        published = fleet(influxdb)
        assert published[DAYS[83]] == [3, 3]
        assert all(published[d] == [4, 3] for d in DAYS[84:])

        # a late freeze of day 10: that day, and the 62 after it whose streaks it can move
        late = reading(METERS[0], DAYS[9], quality="backfill")
        await publish(mosquitto.port, [("c-001", "readings", batch("c-001", [late], "late"))])
        await wait_for(lambda: consumer.stats.acked == 93, what="backfill acknowledged")
        assert await consumer.publish_coverage() == 63
        assert consumer.ledger.dirty_days() == {}
