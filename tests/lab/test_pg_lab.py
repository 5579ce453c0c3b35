"""The Postgres lab for real: a PG 15 primary and streaming standby, the monitoring role, and
every fault switch, asserted with SQL. One cluster serves the module (tests/pg.py); each test
starts from `reset()`'s healthy baseline. Timings print with `-s`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest

from lab.postgres import MONITORING_ROLE_SQL, PgLab, PgLabError
from lab.wait import wait_until
from tests.pg import fixture_pg_cluster, fixture_pg_pair, one, query  # noqa: F401  (fixtures)

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def timed(what: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    print(f"{what}: {time.monotonic() - began:.3f} s")


async def until(dsn: str, sql: str, timeout: float, what: str) -> float:
    """Poll a one-boolean query until true; return the seconds waited."""
    return await wait_until(what, lambda: one(dsn, sql), timeout)


async def refuses(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


# --- the healthy pair ------------------------------------------------------------------------------


async def test_started_pair_streams_through_the_proxy_on_loopback_only(pg_pair: PgLab) -> None:
    lab = pg_pair
    print(f"session start: {lab.last_start_seconds:.3f} s; reset: {lab.last_reset_seconds:.3f} s")
    assert await one(lab.primary.superuser_dsn(), "SELECT pg_is_in_recovery()") is False
    assert await one(lab.standby.superuser_dsn(), "SELECT pg_is_in_recovery()") is True
    rows = await query(
        lab.primary.superuser_dsn(),
        "SELECT application_name, state, sync_state, host(client_addr) FROM pg_stat_replication",
    )
    assert rows == [("standby1", "streaming", "async", "127.0.0.1")]
    # reset() leaves the primary knowing where the standby is: every position at the end of WAL
    # (give or take the bgwriter's ~50-byte running-xacts record, logged every 15 s after writes).
    behind = await query(
        lab.primary.superuser_dsn(),
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn), "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), write_lsn), pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication",
    )
    assert len(behind) == 1 and all(0 <= b <= 100 for b in behind[0]), behind
    receiver = await query(
        lab.standby.superuser_dsn(),
        "SELECT status, slot_name, sender_host, sender_port FROM pg_stat_wal_receiver",
    )
    assert receiver == [("streaming", "standby1", "127.0.0.1", lab.proxy.port)]
    slots = await query(
        lab.primary.superuser_dsn(),
        "SELECT slot_name, slot_type, active, wal_status FROM pg_replication_slots",
    )
    assert slots == [("standby1", "physical", True, "reserved")]
    assert lab.proxy.connections == 1
    # Every TCP listener of both servers (and the proxy) is on 127.0.0.1, on the lab's ports.
    listening = set()
    for node in (lab.primary, lab.standby):
        assert node.pid is not None
        for conn in psutil.Process(node.pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.add((conn.laddr.ip, conn.laddr.port))
    assert listening == {("127.0.0.1", lab.primary.port), ("127.0.0.1", lab.standby.port)}
    # The superuser may connect on the Unix socket only.
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        await query(lab.primary.dsn("postgres"), "SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await query(lab.primary.dsn(password="wrong"), "SELECT 1")


async def test_monitoring_role_reads_every_view_the_checks_need(pg_pair: PgLab) -> None:
    primary, standby = pg_pair.primary.dsn(), pg_pair.standby.dsn()
    assert await one(primary, "SELECT current_user") == "mamori"
    assert await one(primary, "SELECT pg_has_role('mamori', 'pg_monitor', 'USAGE')") is True
    # The primary learns the standby's positions from its replies: right after a (re)connect on
    # an idle primary they are NULL until the first one (<= wal_sender_timeout / 2 here).
    waited = await until(
        primary, "SELECT replay_lsn IS NOT NULL FROM pg_stat_replication", 5.0, "replay_lsn reported"
    )
    print(f"replay_lsn non-null after {waited:.2f} s")
    rows = await query(
        primary,
        "SELECT application_name, host(client_addr), state, sent_lsn IS NOT NULL, write_lsn IS NOT NULL, "
        "flush_lsn IS NOT NULL, replay_lsn IS NOT NULL, reply_time IS NOT NULL, backend_start IS NOT NULL "
        "FROM pg_stat_replication",
    )
    assert rows == [("standby1", "127.0.0.1", "streaming", True, True, True, True, True, True)]
    # The primary-side queries of docs (shared reference), verbatim in substance, as mamori.
    row = (
        await query(
            primary,
            "SELECT pg_is_in_recovery(), pg_current_wal_lsn() - '0/0', "
            "(SELECT system_identifier FROM pg_control_system()), "
            "(SELECT timeline_id FROM pg_control_checkpoint()), (SELECT wal_bytes FROM pg_stat_wal)",
        )
    )[0]
    assert row[0] is False and row[1] > 0 and row[2] > 0 and row[3] == 1 and row[4] > 0
    archiver = await query(primary, "SELECT archived_count, failed_count FROM pg_stat_archiver")
    assert archiver == [(0, 0)]  # reset() zeroes the counters
    assert await one(primary, "SELECT count(*) >= 0 FROM pg_ls_archive_statusdir()") is True
    assert await one(primary, "SELECT count(*) > 0 FROM pg_ls_waldir()") is True
    assert await one(primary, "SELECT current_setting('archive_command') LIKE '%archive.sh %p %f'") is True
    slots = await query(
        primary,
        "SELECT slot_name, active, wal_status, safe_wal_size > 0, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) >= 0 FROM pg_replication_slots",
    )
    assert slots == [("standby1", True, "reserved", True, True)]
    # The standby side, with the sender fields only pg_read_all_stats shows.
    receiver = await query(
        standby,
        "SELECT status, sender_host, sender_port, conninfo LIKE '%application_name=standby1%', "
        "flushed_lsn IS NOT NULL, last_msg_receipt_time IS NOT NULL FROM pg_stat_wal_receiver",
    )
    assert receiver == [("streaming", "127.0.0.1", pg_pair.proxy.port, True, True, True)]
    row = (
        await query(
            standby,
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn() >= pg_last_wal_replay_lsn(), "
            "pg_get_wal_replay_pause_state(), (SELECT system_identifier FROM pg_control_system())",
        )
    )[0]
    assert row[:3] == (True, True, "not paused")
    # Least privilege: nothing beyond the grants.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await query(primary, "CREATE TABLE mamori.nope (x int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await query(primary, "DELETE FROM mamori.heartbeat")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await query(primary, "SELECT pg_switch_wal()")


async def test_heartbeat_upsert_on_the_primary_is_read_on_the_standby(pg_pair: PgLab) -> None:
    upsert = (
        "INSERT INTO mamori.heartbeat (source, ts, lsn) VALUES ('agent-1', now(), pg_current_wal_lsn()) "
        "ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts, lsn = EXCLUDED.lsn RETURNING ts"
    )
    await one(pg_pair.primary.dsn(), upsert)
    written = await one(pg_pair.primary.dsn(), upsert)  # the second one updates
    await pg_pair.wait_replayed()
    rows = await query(pg_pair.standby.dsn(), "SELECT source, ts FROM mamori.heartbeat")
    assert rows == [("agent-1", written)]


async def test_monitoring_sql_is_idempotent_and_takes_the_password_variable(pg_pair: PgLab) -> None:
    assert MONITORING_ROLE_SQL.name == "monitoring-role.sql"
    out = await pg_pair.run_monitoring_sql(("mamori_password", pg_pair.monitoring_password))
    assert "ERROR" not in out
    grants = await query(
        pg_pair.primary.superuser_dsn(),
        "SELECT privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = 'mamori' AND table_schema = 'mamori' AND table_name = 'heartbeat' ORDER BY 1",
    )
    assert grants == [("INSERT",), ("SELECT",), ("UPDATE",)]
    role = await query(
        pg_pair.primary.superuser_dsn(),
        "SELECT rolcanlogin, rolinherit, rolsuper, rolreplication, rolcreaterole, rolcreatedb "
        "FROM pg_roles WHERE rolname = 'mamori'",
    )
    assert role == [(True, True, False, False, False, False)]
    assert await one(pg_pair.primary.dsn(), "SELECT current_user") == "mamori"  # same password


async def test_the_docs_quote_the_sql_file_verbatim() -> None:
    docs = (ROOT / "docs" / "lab.md").read_text()
    quoted = docs.split("### The monitoring role", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    assert quoted == MONITORING_ROLE_SQL.read_text()


# --- the link --------------------------------------------------------------------------------------


async def test_cut_link_freezes_replay_and_the_receiver_gives_up_then_restore_catches_up(
    pg_pair: PgLab,
) -> None:
    lab = pg_pair
    standby = lab.standby.superuser_dsn()
    with timed("cut_link"):
        await lab.cut_link()
    began = time.monotonic()
    target = await lab.write_some(10)
    await asyncio.sleep(0.5)
    assert await one(standby, "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (target,)) is True
    # The partition closes nothing: the standby's connection is still held by the proxy.
    assert lab.proxy.connections >= 1
    await until(
        standby, "SELECT count(*) = 0 FROM pg_stat_wal_receiver WHERE status = 'streaming'", 10, "gone"
    )
    gone = time.monotonic() - began
    print(f"cut link: WAL receiver gone after {gone:.2f} s (wal_receiver_timeout 5s)")
    # 5 s after the last message received, which came at most wal_sender_timeout / 2 before the cut.
    assert 2.5 <= gone <= 7.0
    assert await one(standby, "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (target,)) is True
    with timed("restore_link + catch up"):
        await lab.restore_link()
        await lab.wait_replayed(target, timeout=10)
    await lab.wait_streaming(timeout=5)


async def test_reset_link_closes_the_connection_and_the_standby_reconnects(pg_pair: PgLab) -> None:
    lab = pg_pair
    primary = lab.primary.superuser_dsn()
    before = await one(primary, "SELECT pid FROM pg_stat_replication")
    accepted = lab.proxy.accepted
    with timed("reset_link"):
        await lab.reset_link()
    assert lab.proxy.connections == 0 or lab.proxy.accepted > accepted
    with timed("reconnect after reset_link"):
        await until(primary, f"SELECT count(*) = 1 FROM pg_stat_replication WHERE pid <> {before}", 5, "back")
    assert lab.proxy.accepted > accepted


# --- the servers -------------------------------------------------------------------------------------


async def test_freeze_primary_accepts_tcp_but_never_answers(pg_pair: PgLab) -> None:
    lab = pg_pair
    with timed("freeze_primary"):
        await lab.freeze_primary()
    assert lab.primary.pid is not None
    assert psutil.Process(lab.primary.pid).status() == psutil.STATUS_STOPPED
    with socket.create_connection(("127.0.0.1", lab.primary.port), timeout=1):  # the kernel accepts
        pass
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await psycopg.AsyncConnection.connect(lab.primary.dsn(connect_timeout=1))
    assert time.monotonic() - began < 1.5
    # libpq treats connect_timeout=1 as 2: its minimum. A probe wanting 1 s must time out itself.
    began = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        await psycopg.AsyncConnection.connect(lab.primary.dsn(connect_timeout=1))
    assert 1.8 <= time.monotonic() - began < 3.0
    with timed("thaw_primary"):
        await lab.thaw_primary()
    assert await one(lab.primary.dsn(), "SELECT 1") == 1


async def test_stop_and_start_primary(pg_pair: PgLab) -> None:
    lab = pg_pair
    pid = lab.primary.pid
    with timed("stop_primary"):
        await lab.stop_primary()
    assert lab.primary.pid is None and not psutil.pid_exists(pid or 0)
    assert await refuses(lab.primary.port)
    await until(
        lab.standby.superuser_dsn(), "SELECT count(*) = 0 FROM pg_stat_wal_receiver", 5, "no receiver"
    )
    assert await one(lab.standby.superuser_dsn(), "SELECT pg_is_in_recovery()") is True
    with timed("start_primary"):
        await lab.start_primary()
    with timed("standby streams again"):
        await lab.wait_streaming()
    with timed("stop_primary(immediate)"):
        await lab.stop_primary("immediate")
    with timed("start_primary after a crash"):
        await lab.start_primary()


async def test_stop_and_start_standby(pg_pair: PgLab) -> None:
    lab = pg_pair
    primary = lab.primary.superuser_dsn()
    with timed("stop_standby"):
        await lab.stop_standby()
    assert await refuses(lab.standby.port)
    await until(primary, "SELECT count(*) = 0 FROM pg_stat_replication", 2, "walsender gone")
    await until(
        primary, "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'standby1'", 5, "inactive"
    )
    with timed("start_standby"):
        await lab.start_standby()
    with timed("standby streams"):
        await lab.wait_streaming()


async def test_pause_replay_receives_but_does_not_apply(pg_pair: PgLab) -> None:
    lab = pg_pair
    standby = lab.standby.superuser_dsn()
    with timed("pause_replay"):
        await lab.pause_replay()
    assert await one(lab.standby.dsn(), "SELECT pg_is_wal_replay_paused()") is True
    target = await lab.write_some(10)
    await until(standby, f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn", 5, "received")
    await asyncio.sleep(0.3)
    assert await one(standby, "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (target,)) is True
    with timed("resume_replay"):
        await lab.resume_replay()
    await lab.wait_replayed(target, timeout=5)


async def test_promote_standby_is_split_brain_and_reset_rebuilds(pg_pair: PgLab) -> None:
    lab = pg_pair
    with timed("promote_standby"):
        await lab.promote_standby()
    assert await one(lab.primary.dsn(), "SELECT pg_is_in_recovery()") is False
    assert await one(lab.standby.dsn(), "SELECT pg_is_in_recovery()") is False
    # pg_control_checkpoint() keeps timeline 1 until the next checkpoint; the WAL file name does not.
    assert (
        await one(lab.standby.dsn(), "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        == "00000002"
    )
    assert (
        await one(lab.primary.dsn(), "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        == "00000001"
    )
    same = "SELECT system_identifier FROM pg_control_system()"
    assert await one(lab.primary.dsn(), same) == await one(lab.standby.dsn(), same)
    with timed("reset after promotion (rebuild)"):
        await lab.reset()
    assert await one(lab.standby.dsn(), "SELECT pg_is_in_recovery()") is True
    await lab.wait_streaming()


# --- archiving, slots, load --------------------------------------------------------------------------


async def test_break_archiving_fails_attempts_and_fix_archives_the_backlog(pg_pair: PgLab) -> None:
    lab = pg_pair
    primary = lab.primary.dsn()
    with timed("break_archiving"):
        await lab.break_archiving()
    await lab.write_some(1)
    segment = await one(lab.primary.superuser_dsn(), "SELECT pg_walfile_name(pg_switch_wal())")
    waited = await until(primary, "SELECT failed_count >= 1 FROM pg_stat_archiver", 5, "failing")
    print(f"first failed archive attempt after {waited:.2f} s")
    row = (await query(primary, "SELECT archived_count, last_failed_wal FROM pg_stat_archiver"))[0]
    assert row == (0, segment)
    ready = await query(primary, "SELECT name FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
    assert ready == [(f"{segment}.ready",)]
    assert not (lab.archive_dir / segment).exists()
    with timed("fix_archiving (backlog archived)"):
        await lab.fix_archiving()
    assert await one(primary, "SELECT last_archived_wal FROM pg_stat_archiver") == segment
    assert (lab.archive_dir / segment).stat().st_size == 16 * MiB


async def test_slot_behind_retains_wal_then_loses_it_past_max_slot_wal_keep_size(pg_pair: PgLab) -> None:
    lab = pg_pair
    primary = lab.primary.dsn()
    slot = "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots "
    with timed("slot_behind(20)"):
        retained = await lab.slot_behind(20)
    assert retained >= 20 * MiB
    rows = await query(primary, slot + "WHERE slot_name = 'lagging'")
    assert rows[0][0] == "reserved" and rows[0][1] >= retained
    with timed("slot_behind(70, checkpoint=False)"):
        await lab.slot_behind(70, checkpoint=False)
    assert await one(primary, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lagging'") == (
        "unreserved"
    )
    # The standby's own slot must have caught up before the checkpoint, or the 70 MiB burst
    # (past max_slot_wal_keep_size) takes its WAL too when the machine is slow.
    await lab.wait_standby_slot()
    await query(lab.primary.superuser_dsn(), "CHECKPOINT")
    rows = await query(primary, slot + "WHERE slot_name = 'lagging'")
    assert rows == [("lost", None)]
    # The standby kept up, so its own slot was never at risk.
    assert await one(primary, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'standby1'") == (
        "reserved"
    )
    await lab.drop_lagging_slot()
    assert await one(primary, "SELECT count(*) FROM pg_replication_slots") == 1


async def test_write_load_runs_pgbench_and_the_standby_keeps_up(pg_pair: PgLab) -> None:
    with timed("write_load(1)"):
        transactions = await pg_pair.write_load(1)
    assert transactions > 100
    with timed("standby catches up"):
        await pg_pair.wait_replayed(timeout=10)


async def test_reset_recovers_from_every_fault_at_once(pg_pair: PgLab) -> None:
    lab = pg_pair
    await lab.pause_replay()
    await lab.break_archiving()
    await lab.slot_behind(1)
    await lab.cut_link()
    await lab.stop_standby("immediate")
    await lab.freeze_primary()
    with timed("reset from every fault"):
        await lab.reset()
    primary = lab.primary.superuser_dsn()
    assert await query(primary, "SELECT state FROM pg_stat_replication") == [("streaming",)]
    assert await query(primary, "SELECT slot_name FROM pg_replication_slots") == [("standby1",)]
    assert await query(primary, "SELECT archived_count, failed_count FROM pg_stat_archiver") == [(0, 0)]
    assert await one(primary, "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'") == 0
    assert await one(lab.standby.superuser_dsn(), "SELECT pg_get_wal_replay_pause_state()") == "not paused"
    assert not lab.proxy.is_cut and not lab.archiving_broken and not lab.primary.frozen


AUTOANALYZE_DUE = (  # pg_statistic and TOAST tables excepted: autovacuum never analyzes them
    "SELECT count(*) > 0 FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.relid <> 'pg_statistic'::regclass AND s.schemaname <> 'pg_toast' "
    "AND s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8 "
    "+ current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)"
)


AUTOVACUUM_DUE = (
    "SELECT count(*) > 0 FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.n_dead_tup > 50 + 0.2 * greatest(c.reltuples, 0) "
    "OR s.n_ins_since_vacuum > 1000 + 0.2 * greatest(c.reltuples, 0)"
)


async def test_reset_leaves_autovacuum_nothing_to_do(pg_pair: PgLab) -> None:
    """An autoanalyze commits (so may a VACUUM that truncates): on a primary a test keeps idle,
    it would move the standby's pg_last_xact_replay_timestamp() a minute later. reset() does
    autovacuum's next round itself, with the standby's feedback made current first."""
    primary = pg_pair.primary.superuser_dsn()
    await pg_pair.write_some(5000)
    await query(
        primary, "UPDATE lab_writes SET payload = 'y' WHERE id IN (SELECT id FROM lab_writes LIMIT 500)"
    )
    await until(primary, f"SELECT ({AUTOANALYZE_DUE}) AND ({AUTOVACUUM_DUE})", 5, "autovacuum work due")
    with timed("reset with autovacuum work due"):
        await pg_pair.reset()
    for dbname in ("postgres", "template1"):
        dsn = pg_pair.primary.superuser_dsn(dbname=dbname)
        assert await one(dsn, AUTOANALYZE_DUE) is False, dbname
        assert await one(dsn, AUTOVACUUM_DUE) is False, dbname


# --- lifecycle (own labs, not the shared one) ----------------------------------------------------------


@pytest.mark.asyncio(loop_scope="function")
async def test_stop_twice_leaves_nothing_running_and_start_failure_cleans_up() -> None:
    directory = Path(tempfile.mkdtemp(prefix="mamori-pg-"))
    try:
        lab = PgLab(directory)
        try:
            await lab.stop()  # before start: nothing to do
            await lab.start()
            pids = [p.pid for node in (lab.primary, lab.standby) for p in _tree(node.pid)]
            ports = [lab.primary.port, lab.standby.port, lab.proxy.port]
            assert len(pids) >= 10
        finally:
            await lab.stop()
            await lab.stop()
        assert [pid for pid in pids if psutil.pid_exists(pid)] == []
        assert [port for port in ports if not await refuses(port)] == []
        # A start that fails half-way stops what it started: here the standby cannot be built.
        broken = PgLab(directory)
        broken._build_standby = _fail  # type: ignore[method-assign]
        with pytest.raises(PgLabError, match="standby build failed"):
            await broken.start()
        assert broken.primary.pid is None and broken.standby.pid is None
        assert await refuses(broken.primary.port)
    finally:
        shutil.rmtree(directory)


async def _fail() -> None:
    raise PgLabError("standby build failed")


def _tree(pid: int | None) -> list[psutil.Process]:
    assert pid is not None
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.asyncio(loop_scope="function")
async def test_missing_binaries_fail_loudly(tmp_path: Path) -> None:
    lab = PgLab(Path(tempfile.mkdtemp(prefix="mamori-pg-")), bin_dir=tmp_path / "nowhere")
    try:
        with pytest.raises(PgLabError, match="install the Debian package postgresql"):
            await lab.start()
    finally:
        await lab.stop()
        shutil.rmtree(lab.directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user only matters when we run as root")
@pytest.mark.asyncio(loop_scope="function")
async def test_a_directory_the_postgres_user_cannot_reach_is_named(tmp_path: Path) -> None:
    lab = PgLab(tmp_path / "pg")  # pytest's tmp_path sits under a 0700 root directory
    try:
        with pytest.raises(PgLabError, match="cannot reach"):
            await lab.start()
    finally:
        await lab.stop()


_CHILD = """
import asyncio, json, sys
from pathlib import Path
from lab.postgres import PgLab

async def main() -> None:
    lab = PgLab(Path(sys.argv[1]))
    await lab.start()
    pids, ports = [lab.primary.pid, lab.standby.pid], [lab.primary.port, lab.standby.port]
    print(json.dumps({"pids": pids, "ports": ports}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.asyncio(loop_scope="function")
async def test_servers_die_with_a_killed_python() -> None:
    directory = Path(tempfile.mkdtemp(prefix="mamori-pg-"))
    shm: list[str] = []
    child = _spawn_child(directory)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        started = json.loads(line)
        shm = _shmem_ids(directory)
        processes = [p for pid in started["pids"] for p in _tree(pid)]
        child.send_signal(signal.SIGKILL)
        child.wait()
        with timed("servers gone after SIGKILL of their Python"):
            _, alive = psutil.wait_procs(processes, timeout=10)
        assert alive == []
        assert [port for port in started["ports"] if not await refuses(port)] == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        _remove_shmem(shm)
        shutil.rmtree(directory)


def _spawn_child(directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)], stdout=subprocess.PIPE, cwd=ROOT)


def _remove_shmem(ids: list[str]) -> None:
    """A postmaster killed by SIGKILL cannot remove its SysV segment (a few bytes): do it for it."""
    for shmid in ids:
        subprocess.run(["ipcrm", "-m", shmid], check=False, capture_output=True)


def _shmem_ids(directory: Path) -> list[str]:
    """The SysV shared memory ids in each postmaster.pid (line 7: "key id")."""
    ids = []
    for name in ("primary", "standby"):
        lines = (directory / name / "postmaster.pid").read_text().splitlines()
        ids.append(lines[6].split()[1])
    return ids
