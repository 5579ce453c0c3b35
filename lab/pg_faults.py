"""The Postgres pair's fault switches: `PgFaults(lab)` breaks and heals a running `PgLab`.

    await lab.faults.cut_link(); await lab.faults.restore_link()
    await lab.cut_link()                   # the same: PgLab has a delegating method for each

Every switch is a coroutine that returns once its effect is real: servers stopped, started,
frozen (SIGSTOP) or promoted; replay paused; the link cut or reset; archiving broken; a slot
left behind. `PgLab.reset()` undoes any mix of them. The pair itself (building, starting,
waiting, SQL) is lab/postgres.py.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING

from lab.postgres import LAGGING_SLOT, SLOT, PgLabError
from lab.process import stopped
from lab.wait import wait_until

if TYPE_CHECKING:
    from lab.postgres import PgLab, StopMode


class PgFaults:
    """The fault switches of one `PgLab` (see the module docstring). Not for concurrent use."""

    def __init__(self, lab: PgLab) -> None:
        self.lab = lab

    # --- servers --------------------------------------------------------------------------------------

    async def stop_primary(self, mode: StopMode = "fast") -> None:
        """Stop the primary ("fast" = clean shutdown, "immediate" = a crash); returns once the
        postmaster has exited. A fast stop waits for the walsender to hand the standby all WAL,
        so with the link cut it takes up to wal_sender_timeout. A frozen primary is thawed first."""
        await self.lab._stop_node(self.lab.primary, mode)

    async def start_primary(self) -> None:
        """Start the primary on its port; returns once it accepts connections. No-op if running."""
        await self.lab._start_node(self.lab.primary)

    async def stop_standby(self, mode: StopMode = "fast") -> None:
        """Stop the standby; returns once the postmaster has exited. Its slot becomes inactive."""
        await self.lab._stop_node(self.lab.standby, mode)

    async def start_standby(self) -> None:
        """Start the standby; returns once it accepts read-only connections (streaming follows
        within ~0.1 s if the link and primary are up: `wait_streaming()`). No-op if running."""
        await self.lab._start_node(self.lab.standby)

    async def freeze_primary(self) -> None:
        """SIGSTOP the postmaster and every child: the primary accepts TCP connections (the
        kernel completes handshakes) but never answers, and its walsender sends nothing.
        Returns once every process is stopped."""
        node = self.lab.primary
        if node.pid is None:
            raise PgLabError("the primary is not running")
        processes = node._child.freeze()
        await wait_until(
            "the primary's processes to stop",
            lambda: all(stopped(p) for p in processes),
            5.0,
            interval=0.005,
        )

    async def thaw_primary(self) -> None:
        """SIGCONT the primary's processes; returns once it answers a query again."""
        node = self.lab.primary
        node._child.thaw()
        if node.running:
            await self.lab._wait_ready(node, node.log_file.stat().st_size, 10.0)

    async def pause_replay(self) -> None:
        """pg_wal_replay_pause() on the standby; returns once pg_get_wal_replay_pause_state()
        says 'paused' (WAL keeps arriving, it is not applied)."""
        await self.lab._sql(self.lab.standby, "SELECT pg_wal_replay_pause()")
        await self.lab._until_sql(
            self.lab.standby, "SELECT pg_get_wal_replay_pause_state() = 'paused'", "replay paused"
        )

    async def resume_replay(self) -> None:
        """pg_wal_replay_resume() on the standby; returns once it is 'not paused'."""
        await self.lab._sql(self.lab.standby, "SELECT pg_wal_replay_resume()")
        await self.lab._until_sql(
            self.lab.standby, "SELECT pg_get_wal_replay_pause_state() = 'not paused'", "replay resumed"
        )

    async def promote_standby(self) -> None:
        """pg_promote() on the standby while the primary keeps running: split brain, two
        read-write servers. Returns once the standby is out of recovery. Only `reset()` (which
        rebuilds the standby) undoes it."""
        self.lab._standby_promoted = True
        rows = await self.lab._sql(self.lab.standby, "SELECT pg_promote(wait => true, wait_seconds => 30)")
        if not rows[0][0]:
            raise PgLabError("pg_promote() did not finish within 30 s")

    # --- the link -------------------------------------------------------------------------------------

    async def cut_link(self) -> None:
        """Partition the standby from the primary: the proxy stops moving bytes both ways and
        closes nothing. Each side notices only by its own timeout (wal_receiver_timeout on the
        standby, wal_sender_timeout on the primary); reconnects are accepted and held."""
        await asyncio.to_thread(self.lab.proxy.cut)

    async def restore_link(self) -> None:
        """Heal the partition: held bytes and connections flow at once. A connection that
        survived resumes streaming; otherwise the standby reconnects within
        wal_retrieve_retry_interval (1 s) plus its connect_timeout (2 s) at worst."""
        await asyncio.to_thread(self.lab.proxy.restore)

    async def reset_link(self) -> None:
        """Close the standby's current connections with a TCP RST both ways (the link stays up
        or cut as it was); the standby reconnects within wal_retrieve_retry_interval (1 s)."""
        await asyncio.to_thread(self.lab.proxy.reset)

    # --- archiving and slots --------------------------------------------------------------------------

    async def break_archiving(self) -> None:
        """Every archive attempt fails from now on (archive.sh sees the flag file and exits 1;
        no reload needed). The archiver retries 3 times a second apart, then waits for the next
        segment or 60 s; pg_stat_archiver.failed_count counts each attempt."""
        self.lab._require_archive()
        self.lab.archive_flag.touch()

    async def fix_archiving(self) -> None:
        """Archive attempts succeed again; wakes the archiver (a reload) and returns once no
        segment waits to be archived (if the primary is running and not frozen)."""
        self.lab._require_archive()
        self.lab.archive_flag.unlink(missing_ok=True)
        if self.lab.primary.running and not self.lab.primary.frozen:
            await self.lab._wait_archive_backlog_empty()

    async def slot_behind(self, mb: int, *, checkpoint: bool = True) -> int:
        """Create the physical slot `lagging` (immediately_reserve => true, nothing consumes it)
        if missing, write `mb` MiB of WAL, switch WAL and (by default) CHECKPOINT; return the
        bytes the slot retains (0 once the slot is lost).

        With the default max_slot_wal_keep_size (64MB): up to ~40 MiB the slot stays `reserved`;
        past 64 MiB it becomes `lost` (the checkpoint removes its WAL), or `unreserved` with
        `checkpoint=False`. The standby streams the same WAL, so it is not harmed.
        """
        await self.lab._sql(
            self.lab.primary,
            "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
            "(SELECT FROM pg_replication_slots WHERE slot_name = %s)",
            (LAGGING_SLOT, LAGGING_SLOT),
        )
        # Non-transactional logical messages: 1 MiB of WAL per call, nothing stored in tables.
        await self.lab._sql(
            self.lab.primary,
            "SELECT count(pg_logical_emit_message(false, 'mamori-lab', repeat('x', 1048576))) "
            "FROM generate_series(1, %s)",
            (mb,),
        )
        await self.lab._sql(self.lab.primary, "SELECT pg_switch_wal()")
        if checkpoint:
            await self.wait_standby_slot()
            await self.lab._sql(self.lab.primary, "CHECKPOINT", fetch=False)
        rows = await self.lab._sql(
            self.lab.primary,
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (LAGGING_SLOT,),
        )
        return int(rows[0][0])

    async def wait_standby_slot(self, timeout: float = 10.0) -> None:
        """While the standby streams, wait until its slot on the primary is within 16 MiB of the
        end of WAL (its flush feedback; paused replay does not matter). A checkpoint after a burst
        past max_slot_wal_keep_size would otherwise also remove WAL the standby still needs, and
        lose its slot, on a slow machine. Best effort: returns at once when the standby does not
        stream (stopped, link cut) and after `timeout` at most; never raises for that."""

        async def caught_up() -> bool:
            rows = await self.lab._sql(
                self.lab.primary,
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::bigint, "
                "EXISTS (SELECT FROM pg_stat_replication r WHERE r.application_name = s.slot_name "
                "AND r.state = 'streaming') FROM pg_replication_slots s WHERE s.slot_name = %s",
                (SLOT,),
            )
            return not rows or not rows[0][1] or int(rows[0][0]) < 16 * 1024 * 1024

        with suppress(TimeoutError):
            await wait_until("the standby's slot to catch up", caught_up, timeout, interval=0.05)

    async def drop_lagging_slot(self) -> None:
        """Drop the `lagging` slot if it exists (its WAL goes at the next checkpoint)."""
        await self.lab._sql(
            self.lab.primary,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            (LAGGING_SLOT,),
        )
