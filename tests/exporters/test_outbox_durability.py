"""The outbox on a real full file system (a small tmpfs, tests/conftest.py `small_fs`), its retry
schedule across restarts, and the migration of files written before the schedule existed.

Issue 11, items 5, 8 and 9: bytes counted only once stored; results lost to a full disk counted
as drops with a reason; the file named once in the log; the pump's failure log rate-limited; a
Retry-After given before a restart (kill -9 included) waited out after it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from agent.delivery.outcome import PushResult
from agent.delivery.pump import Pump
from agent.outbox import Outbox, Record, encode
from exporters.base import ExportCollector
from tests.conftest import SmallFs
from tests.exporters.test_outbox import Clock, Recorder, drain, result


def families(box: Outbox, pumps: list[Pump[Record]]) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in ExportCollector(box, pumps).collect():
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


async def test_a_full_disk_drops_with_a_reason_and_leaves_no_phantom_bytes(
    small_fs: SmallFs, caplog: pytest.LogCaptureFixture
) -> None:
    one = len(encode(result(1)))
    box = Outbox(small_fs.path / "outbox.db", one * 20, ["a", "b"])  # room for 20 results
    clock = Clock()
    a, b = Recorder("a"), Recorder("b")
    pumps = [Pump(a, box, clock, wall=clock), Pump(b, box, clock, wall=clock)]
    box.append([result(i) for i in range(5)])
    for pump in pumps:
        await drain(pump, clock)
    assert box.bytes == 0

    small_fs.fill()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mamori.statefile"):
        for i in range(5, 55):  # 50 results while the disk is full: far past the cap
            box.append([result(i)])
        assert box.bytes == 0  # nothing was stored, so nothing is counted (it was 50 * one)
        assert box.health.degraded and "database or disk is full" in box.health.error
        assert box.dropped[("a", "disk_full")] == box.dropped[("b", "disk_full")] == 50
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors  # once per spell, naming the file and sqlite's words
        assert f"cannot write the outbox {small_fs.path / 'outbox.db'}: database or disk is full" in (
            errors[0].getMessage()
        )
        metrics = families(box, pumps)
        assert metrics["mamori_outbox_dropped_total"][("a", "disk_full")] == 50
        assert metrics["mamori_outbox_bytes"][()] == 0

        small_fs.free()
        for i in range(55, 70):  # 15 results: under the cap, so none may go as "capacity"
            box.append([result(i)])
        assert not box.health.degraded
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any("is writable again" in m for m in infos), infos
    for pump in pumps:
        await drain(pump, clock)
    assert a.received == b.received == [result(i) for i in (*range(5), *range(55, 70))]
    assert box.dropped[("a", "capacity")] == box.dropped[("b", "capacity")] == 0
    assert box.bytes == 0
    box.close()


async def test_acks_during_a_full_disk_are_not_resent_and_reach_the_file_later(small_fs: SmallFs) -> None:
    path = small_fs.path / "outbox.db"
    box = Outbox(path, 10**6, ["a"])
    box.append([result(i) for i in range(10)])
    clock = Clock()
    rec = Recorder("a", batch=4)
    pump = Pump(rec, box, clock, wall=clock)
    small_fs.fill()
    await drain(pump, clock)  # sends everything; the acks cannot be written
    assert rec.received == [result(i) for i in range(10)] and rec.calls == 3  # each batch once
    assert box.depth("a") == 0 and box.health.degraded
    small_fs.free()
    box.append([result(10)])  # the next write that succeeds carries the cursor along
    assert not box.health.degraded
    box.close()
    again = Outbox(path, 10**6, ["a"])
    assert [r.result for r in again.read("a", 100)] == [result(10)]
    again.close()


async def test_the_pump_logs_an_outbox_failure_once_a_minute_not_every_5s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a"])
    box.append([result(1)])
    pump = Pump(Recorder("a"), box)
    now = [1000.0]
    monkeypatch.setattr("agent.logs.time.monotonic", lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="mamori.exporters"):
        for _ in range(24):  # two minutes of a failure every 5 s
            pump._log_failure("DatabaseError: database disk image is malformed")
            now[0] += 5
        pump._log_failure("OperationalError: disk I/O error")  # a new error is news
    assert [r.getMessage() for r in caplog.records] == [
        "exporter a: outbox failed: DatabaseError: database disk image is malformed (retrying every 5s)",
        "exporter a: outbox failed: DatabaseError: database disk image is malformed (retrying every 5s)",
        "exporter a: outbox failed: OperationalError: disk I/O error (retrying every 5s)",
    ]
    box.close()


async def test_a_retry_after_survives_a_restart_without_close(tmp_path: Path) -> None:
    """The file as kill -9 leaves it: the connection is never closed (no checkpoint)."""
    path = tmp_path / "o.db"
    box = Outbox(path, 10**6, ["a"])
    box.append([result(i) for i in range(3)])
    clock = Clock(1_700_000_000.0)
    throttled = Recorder("a", script=lambda recs, n: PushResult(0, "HTTP 429", retry_after=30.0))
    pump = Pump(throttled, box, clock, wall=clock)
    assert await pump.step() == 30.0
    assert await pump.step() == 30.0  # a second 429 in a row: streak 2
    # "kill -9": a new Outbox on the same file while the old connection stays open, unclosed.
    clock.t += 11  # the restarted agent is up 11 s later
    again = Outbox(path, 10**6, ["a"])
    ok = Recorder("a")
    restarted = Pump(ok, again, clock, wall=clock)
    assert restarted.streak == 2 and restarted.not_before == pytest.approx(1_700_000_000.0 + 30 + 30)
    assert await restarted.drain(3.0) is False and ok.calls == 0  # inside Retry-After: no push
    clock.t += 19
    assert await restarted.drain(3.0) is True
    assert ok.received == [result(i) for i in range(3)]
    assert again.schedule("a") == (0.0, 0)  # delivered: the schedule is cleared on disk too
    box.close()
    again.close()


async def test_the_run_loop_waits_out_a_saved_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, 10**6, ["a"])
    box.append([result(1)])
    wall = Clock(1_700_000_000.0)
    box.set_schedule("a", wall.t + 0.5, 1)  # as a 429 with Retry-After: 0.5 left it
    box.close()
    box = Outbox(path, 10**6, ["a"])
    rec = Recorder("a")
    loop_time = asyncio.get_running_loop().time
    began = loop_time()
    pump = Pump(rec, box, wall=lambda: wall.t + (loop_time() - began))
    pump.start()
    try:
        for _ in range(200):
            if rec.received:
                break
            await asyncio.sleep(0.02)
        assert rec.received == [result(1)]
        assert loop_time() - began >= 0.5
    finally:
        await pump.stop()
        box.close()


def test_an_outbox_written_before_the_schedule_existed_opens_and_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path, isolation_level=None)  # the version 0 schema, as shipped before
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(
        """
        CREATE TABLE results (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, size INTEGER NOT NULL,
            payload TEXT NOT NULL);
        CREATE TABLE cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
        """
    )
    for i in range(3):
        payload = encode(result(i))
        db.execute(
            "INSERT INTO results (started_at, size, payload) VALUES (?, ?, ?)", (0.0, len(payload), payload)
        )
    db.execute("INSERT INTO cursors VALUES ('a', 1)")
    db.close()

    box = Outbox(path, 10**6, ["a"])
    assert [r.result for r in box.read("a", 10)] == [result(1), result(2)]  # the cursor kept
    assert box.schedule("a") == (0.0, 0)
    box.set_schedule("a", 123.0, 4)
    box.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT sink, seq, next_attempt_at, streak FROM cursors").fetchall() == [
        ("a", 1, 123.0, 4)
    ]
    db.close()
    box = Outbox(path, 10**6, ["a"])  # and opens again as version 1
    assert box.schedule("a") == (123.0, 4)
    box.close()


def test_a_failure_after_a_success_is_logged_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.logs import FailureLog

    monkeypatch.setattr("agent.logs.time.monotonic", lambda: 1000.0)
    failures = FailureLog(logging.getLogger("mamori.test"))
    with caplog.at_level(logging.ERROR, logger="mamori.test"):
        failures.failed("disk full", "x %s", "1")
        failures.failed("disk full", "x %s", "2")  # the same, within the minute: quiet
        failures.ok()  # it worked in between: the next failure is news
        failures.failed("disk full", "x %s", "3")
    assert [r.getMessage() for r in caplog.records] == ["x 1", "x 3"]


def test_an_outbox_written_by_the_previous_release_keeps_its_unsent_results_and_schedule(
    tmp_path: Path,
) -> None:
    """A version 1 outbox (as the release before the one delivery engine wrote it): each sink's
    unsent results, with their original timestamps, and its retry schedule are kept."""
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(
        """
        CREATE TABLE results (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, size INTEGER NOT NULL,
            payload TEXT NOT NULL);
        CREATE TABLE cursors (
            sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, next_attempt_at REAL NOT NULL DEFAULT 0,
            streak INTEGER NOT NULL DEFAULT 0);
        PRAGMA user_version = 1;
        """
    )
    for i in range(4):
        payload = encode(result(i))
        db.execute(
            "INSERT INTO results (started_at, size, payload) VALUES (?, ?, ?)",
            (result(i).started_at, len(payload), payload),
        )
    db.execute("INSERT INTO cursors VALUES ('a', 1, 0, 0), ('b', 3, 1234.5, 7)")
    db.close()

    box = Outbox(path, 10**6, ["a", "b"])
    assert [r.result for r in box.read("a", 10)] == [result(1), result(2), result(3)]
    assert [r.result for r in box.read("b", 10)] == [result(3)]
    assert (box.schedule("a"), box.schedule("b")) == ((0.0, 0), (1234.5, 7))
    assert box.depth("a") == 3 and box.bytes > 0
    box.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
