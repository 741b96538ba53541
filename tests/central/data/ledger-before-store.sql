-- A coverage ledger as meterlink wrote it before the store (commit d7cfa16: no version
-- table), with tests/central/scenario.py applied, one day published, a lease held.
-- Made with that commit's central/ledger.py and sqlite3's iterdump(); kept as SQL so a
-- review can read it. tests/central/test_store.py opens it with today's code.
BEGIN TRANSACTION;
CREATE TABLE archive_meter (
    concentrator TEXT NOT NULL, seq INTEGER NOT NULL, meter TEXT NOT NULL,
    district TEXT NOT NULL, manufacturer TEXT NOT NULL, bus TEXT NOT NULL,
    PRIMARY KEY (concentrator, seq, meter)
) WITHOUT ROWID;
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000001','east','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000002','east','zeta','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000003','east','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000004','east','zeta','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000005','east','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000006','west','zeta','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000007','west','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000008','west','zeta','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000009','west','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-001',1,'000000000010','west','zeta','rs485-1');
INSERT INTO "archive_meter" VALUES('c-002',1,'000000000101','west','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-002',1,'000000000102','west','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-002',1,'000000000103','west','acme','rs485-1');
INSERT INTO "archive_meter" VALUES('c-002',1,'000000000104','west','acme','rs485-1');
CREATE TABLE archive_version (
    concentrator TEXT NOT NULL,
    seq INTEGER NOT NULL,         -- 1, 2, ... in the order the centre first saw them: the newest
                                  -- is the highest, whatever its version (which may restart)
    version INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    day_from TEXT NOT NULL,       -- the first data day in force
    digest TEXT NOT NULL,         -- of the meters (points.archive_digest)
    PRIMARY KEY (concentrator, seq)
);
INSERT INTO "archive_version" VALUES('c-001',1,1,1795140000,'2026-11-20','e0670e34ec34903805c57be58465ba065832612ad21643e21e606b3c32c1d54e');
INSERT INTO "archive_version" VALUES('c-002',1,1,1795140000,'2026-11-20','33b024c383d0067e3eda02ef224c59ea0de95734fb05bc9e5131e3f0b4a80816');
CREATE TABLE daily_failure (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL,
    reported_at INTEGER NOT NULL, -- the round's end: the latest round's reason wins
    PRIMARY KEY (concentrator, meter, day)
) WITHOUT ROWID;
INSERT INTO "daily_failure" VALUES('c-001','000000000009','2026-11-22','no_reply','no_reply on rs485-1',1795359600);
INSERT INTO "daily_failure" VALUES('c-001','000000000009','2026-11-23','no_reply','no_reply on rs485-1',1795446000);
INSERT INTO "daily_failure" VALUES('c-001','000000000009','2026-11-24','no_reply','no_reply on rs485-1',1795532400);
INSERT INTO "daily_failure" VALUES('c-002','000000000104','2026-11-24','route_failure','route_failure on rs485-1',1795532400);
CREATE TABLE daily_read (
    concentrator TEXT NOT NULL, meter TEXT NOT NULL, day TEXT NOT NULL,
    day_start INTEGER NOT NULL,   -- unix seconds of the data day's local midnight
    read_at INTEGER NOT NULL,     -- the earliest read of this freeze
    complete INTEGER NOT NULL,    -- 1 once a read carried every required value
    backfill INTEGER NOT NULL,    -- 1 while the only reads were backfill
    PRIMARY KEY (concentrator, meter, day)
) WITHOUT ROWID;
INSERT INTO "daily_read" VALUES('c-001','000000000001','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000001','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000001','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000001','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000002','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000002','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000002','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000002','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000003','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000003','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000003','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000003','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000004','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000004','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000004','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000004','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000005','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000005','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000005','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000005','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000006','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000006','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000006','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000006','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000007','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000007','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000007','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000007','2026-11-24',1795449600,1795450800,0,0);
INSERT INTO "daily_read" VALUES('c-001','000000000008','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000008','2026-11-22',1795276800,1795278000,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000008','2026-11-23',1795363200,1795364400,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000008','2026-11-24',1795449600,1795534200,1,0);
INSERT INTO "daily_read" VALUES('c-001','000000000009','2026-11-21',1795190400,1795191600,1,0);
INSERT INTO "daily_read" VALUES('c-002','000000000101','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-002','000000000102','2026-11-24',1795449600,1795450800,1,0);
INSERT INTO "daily_read" VALUES('c-002','000000000103','2026-11-24',1795449600,1795450800,1,0);
CREATE TABLE dirty_day (day TEXT PRIMARY KEY, gen INTEGER NOT NULL);
INSERT INTO "dirty_day" VALUES('2026-11-23',1);
INSERT INTO "dirty_day" VALUES('2026-11-22',1);
INSERT INTO "dirty_day" VALUES('2026-11-24',1);
CREATE TABLE lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
INSERT INTO "lease" VALUES('coverage','meterlink-central-1@old-host',1.79627172187301659576e+09);
CREATE TABLE published (
    day TEXT NOT NULL, measurement TEXT NOT NULL, series TEXT NOT NULL,
    PRIMARY KEY (day, measurement, series)
) WITHOUT ROWID;
INSERT INTO "published" VALUES('2026-11-24','coverage_streak','concentrator=c-001,meter=000000000009');
CREATE INDEX daily_read_day ON daily_read (day);
CREATE INDEX daily_failure_day ON daily_failure (day);
COMMIT;
