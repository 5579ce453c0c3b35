"""What an idle primary's WAL costs (issue 15 item 6): the heartbeat, `archive_timeout` and slots.

Every run's heartbeat is a commit, so with `archive_timeout` set an idle primary archives one
16 MiB segment per `archive_timeout`, and an inactive slot keeps each of them. The real-pair tests
scale the documented `archive_timeout = 60s` down to 1 s (and the heartbeat from every 5 s to
every 0.25 s) so that a few seconds show what a day costs; docs/checks/postgres.md ("What the
heartbeat costs") quotes the figures they print (`pytest -s`). `heartbeat_interval` spaces the
writes; an inactive slot nobody expects is a warning long before `slot_retained_warning`.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import replace

import pytest

from agent.config import ConfigError
from agent.model import Reason, Status
from agent.runner import execute
from checks.postgres.check import PostgresCheck
from checks.postgres.cluster import Slot
from lab.postgres import PgLab
from tests.checks.test_postgres import (
    NODES,
    POLICY,
    delay,
    has,
    opened,
    parse_check,
    pg_check,
    primary,
    run_until,
    standby,
    value,
    verdict,
)
from tests.pg import fixture_pg_cluster, fixture_pg_pair, one, query  # noqa: F401  (fixtures)

lab_test = pytest.mark.asyncio(loop_scope="session")
SEGMENT = 16 << 20

# ============================================================================================
# The rules, on hand-built states and configs
# ============================================================================================


@pytest.mark.parametrize(
    ("slot", "expected", "status"),
    [
        (Slot("orphan", inactive_for=300.0, retained_bytes=SEGMENT), (), Status.WARNING),
        (Slot("orphan", inactive_for=299.0, retained_bytes=SEGMENT), (), Status.OK),  # not yet
        (Slot("orphan", inactive_for=None), (), Status.OK),  # not seen inactive by this check
        (Slot("orphan", active=True), (), Status.OK),
        (Slot("backup", inactive_for=900.0), ("backup",), Status.OK),  # expected: retention rules only
    ],
)  # fmt: skip
def test_an_inactive_slot_nobody_expects_is_a_warning(
    slot: Slot, expected: tuple[str, ...], status: Status
) -> None:
    policy = replace(POLICY, slot_inactive_warning=300.0, expected_slots=("pg2", *expected))
    v = verdict(primary(slots=(slot,)), standby(), policy=policy)
    assert v.status is status, v.message
    if status is Status.WARNING:
        assert v.reason is Reason.SLOT_RETENTION
        assert v.message == (
            "pg1: inactive slot orphan is not expected (no configured standby or expected_slots names "
            "it) and has been inactive for 5m00s: it retains 16.0 MiB and keeps all WAL from now on "
            "until it is dropped"
        )


def test_heartbeat_interval_and_expected_slots_config() -> None:
    cfg = parse_check(NODES + "    expected_standbys: [s1]\n    expected_slots: [barman]\n")
    assert cfg.heartbeat_interval is None  # every run, as before
    assert cfg.policy().expected_slots == ("barman", "s1", "pg1", "pg2")
    assert cfg.policy().slot_inactive_warning == 300.0
    cfg = parse_check(
        NODES
        + "    interval: 5s\n    timeout: 2s\n    heartbeat_interval: 1m\n    slot_inactive_warning: null\n"
    )
    assert (cfg.heartbeat_interval, cfg.policy().slot_inactive_warning) == (60.0, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (NODES + "    interval: 10s\n    heartbeat_interval: 5s\n",
         "pg.yml:6: checks[0].heartbeat_interval: heartbeat_interval (5s) must be at least interval (10s): "
         "the heartbeat is written by a run"),
        (NODES + "    rpo: 5m\n    heartbeat_interval: 5m\n",
         "pg.yml:6: checks[0].heartbeat_interval: heartbeat_interval (5m00s) must be less than "
         "lag_critical (5m00s): a delay is measured once per heartbeat"),
        (NODES + "    expected_slots: [Backup]\n",
         "pg.yml:5: checks[0].expected_slots: invalid slot name 'Backup': a slot name is 1 to 63 "
         "lower-case letters, digits or _"),
        (NODES + "    expected_slots: [b, b]\n",
         "pg.yml:5: checks[0].expected_slots: expected slots must be unique: b"),
    ],
)  # fmt: skip
def test_config_errors(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_check(body)
    assert str(exc.value) == error


# ============================================================================================
# On the real pair
# ============================================================================================


async def _archived(lab: PgLab) -> int:
    return int(await one(lab.primary.superuser_dsn(), "SELECT archived_count FROM pg_stat_archiver"))


async def _segments_while_running(check: PostgresCheck, lab: PgLab, seconds: float) -> tuple[int, float]:
    """Run the check every 0.25 s for `seconds`; the segments archived meanwhile and the largest
    heartbeat delay read."""
    before = await _archived(lab)
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        result = await execute(check)
        # The slot 'orphan' soon retains more than the lab's max_slot_wal_keep_size: unreserved.
        assert result.reason in (Reason.OK, Reason.SLOT_RETENTION), result.message
        worst = max(worst, delay(result))
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.2)  # the switch the last heartbeat causes, and its archiving
    return await _archived(lab) - before, worst


@lab_test
async def test_an_idle_primary_archives_a_segment_per_archive_timeout_and_a_slot_keeps_them(
    pg_pair: PgLab,
) -> None:
    admin = pg_pair.primary.superuser_dsn()
    await query(admin, "ALTER SYSTEM SET archive_timeout = '1s'")
    await query(admin, "SELECT pg_reload_conf()")
    try:
        await query(admin, "CHECKPOINT")  # a new slot reserves WAL from the last checkpoint on
        await query(admin, "SELECT pg_create_physical_replication_slot('orphan', true)")
        await asyncio.sleep(1.5)  # the reload reaches the checkpointer; nothing to switch yet
        seconds = 4.0
        async with opened(pg_check(pg_pair, interval=0.25, timeout=0.25)) as check:
            every_run, _ = await _segments_while_running(check, pg_pair, seconds)
        retained = int(
            await one(
                admin,
                "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots "
                "WHERE slot_name = 'orphan'",
            )
        )
        async with opened(pg_check(pg_pair, interval=0.25, timeout=0.25, heartbeat_interval=3)) as check:
            spaced, worst_delay = await _segments_while_running(check, pg_pair, seconds)
        newest = max(pg_pair.archive_dir.glob("0*"), key=lambda p: p.stat().st_mtime)
        packed = len(gzip.compress(await asyncio.to_thread(newest.read_bytes), compresslevel=6))
        print(
            f"\narchive_timeout 1s, heartbeat every 0.25s: {every_run} segments in {seconds:g}s; "
            f"heartbeat_interval 3s: {spaced}; slot 'orphan' retains {retained / SEGMENT:.1f} segments; "
            f"an archived segment is {newest.stat().st_size} bytes, {packed} gzipped"
        )
        # One segment per archive_timeout while anything is written, each kept by the slot.
        assert every_run >= seconds * 0.6, every_run
        assert retained >= (every_run - 1) * SEGMENT
        assert newest.stat().st_size == SEGMENT  # a switched segment is archived whole...
        assert packed < SEGMENT / 100  # ...but it is mostly zeros
        # A heartbeat every 3 s: at most a segment per heartbeat, however short archive_timeout.
        assert spaced <= seconds / 3 + 1, spaced
        # Between heartbeats the standby keeps the delay measured with the last one.
        assert worst_delay < 1.0, worst_delay
    finally:
        await query(admin, "ALTER SYSTEM RESET archive_timeout")
        await query(admin, "SELECT pg_reload_conf()")
        await query(
            admin,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'orphan'",
        )


@lab_test
async def test_an_inactive_slot_nobody_expects_warns_long_before_it_retains_much(pg_pair: PgLab) -> None:
    admin = pg_pair.primary.superuser_dsn()
    await query(admin, "CHECKPOINT")  # a new slot reserves WAL from the last checkpoint on
    for name in ("orphan", "backup"):
        await query(admin, "SELECT pg_create_physical_replication_slot(%s, true)", (name,))
    try:
        async with opened(
            pg_check(pg_pair, expected_slots=["backup"], slot_inactive_warning="0.5s")
        ) as check:
            first = await execute(check)
            assert (first.status, first.reason) == (Status.OK, Reason.OK), first.message  # just seen
            for slot, expected in (("orphan", 0), ("backup", 1), ("standby1", 1)):
                assert value(first, "mamori_pg_slot_expected", node="primary", slot=slot) == expected
            await asyncio.sleep(0.6)
            result = await execute(check)
            assert (result.status, result.reason) == (Status.WARNING, Reason.SLOT_RETENTION), result.message
            assert "primary: inactive slot orphan is not expected" in result.message
            assert "backup" not in result.message  # expected: only the retention thresholds apply
            assert value(result, "mamori_pg_slot_retained_bytes", node="primary", slot="orphan") < 1 << 20
            # An expected standby's slot that goes inactive keeps its handling: the standby is
            # missing, the slot itself is not an issue.
            await pg_pair.stop_standby()
            down = (await run_until(check, lambda r: r.reason is Reason.STANDBY_MISSING, timeout=5))[-1]
            assert value(down, "mamori_pg_slot_active", node="primary", slot="standby1") == 0
            assert "slot standby1" not in down.message
            assert "inactive slot orphan is not expected" in down.message
            assert not has(down, "mamori_pg_slot_expected", node="primary", slot="nope")
    finally:
        await query(
            admin,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name IN ('orphan', 'backup')",
        )
