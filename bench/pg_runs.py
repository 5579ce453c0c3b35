"""10 000 runs of one `postgres` check against the lab pair, back to back: wall and CPU per run,
statements per run, and the connections left afterwards (the leak check of issue 4).

    python -m bench.pg_runs [RUNS]

Statements come from pg_stat_database.xact_commit (every autocommit statement is one transaction);
connections from pg_stat_activity rows with application_name mamori. Writes bench/results/pg_runs.json.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agent.model import Status
from agent.runner import execute
from bench.common import write_result
from checks.postgres.check import PostgresCheck
from checks.postgres.config import PostgresConfig
from lab.postgres import PgLab
from tests.pg import one

COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"
CONNS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mamori'"


async def main(runs: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mamori-pg-runs-"))
    lab = PgLab(directory)
    await lab.start()
    try:
        cfg = PostgresConfig.model_validate(
            {
                "name": "bench", "type": "postgres", "interval": 5, "timeout": 2,
                "password": lab.monitoring_password, "expected_standbys": ["standby1"],
                "nodes": [
                    {"name": "primary", "host": "127.0.0.1", "port": lab.primary.port},
                    {"name": "standby", "host": "127.0.0.1", "port": lab.standby.port,
                     "application_name": "standby1"},
                ],
            }
        )  # fmt: skip
        check = PostgresCheck(cfg)
        await execute(check)
        nodes = (lab.primary.superuser_dsn(), lab.standby.superuser_dsn())
        await asyncio.sleep(1.0)
        before = [int(await one(d, COMMITS)) for d in nodes]
        cpu0, t0 = time.process_time(), time.perf_counter()
        not_ok = 0
        for _ in range(runs):
            not_ok += (await execute(check)).status is not Status.OK
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await asyncio.sleep(1.0)  # pg_stat_database is flushed at most once a second
        after = [int(await one(d, COMMITS)) for d in nodes]
        statements = [(a - b - 1) / runs for a, b in zip(after, before, strict=True)]
        left = [int(await one(d, CONNS)) for d in nodes]
        await check.aclose()
        closed = [int(await one(d, CONNS)) for d in nodes]
        figures = {
            "runs": runs, "not_ok": not_ok, "wall_ms_per_run": wall / runs * 1e3,
            "cpu_ms_per_run": cpu / runs * 1e3, "statements_per_run_primary": statements[0],
            "statements_per_run_standby": statements[1], "connections_open_after_runs": left,
            "connections_after_aclose": closed,
        }  # fmt: skip
        write_result("pg_runs", {"runs": runs, "check_interval_s": 5, "timeout_s": 2}, figures)
        print(
            f"pg_runs: {runs} runs, {not_ok} not OK; {figures['wall_ms_per_run']:.2f} ms wall, "
            f"{figures['cpu_ms_per_run']:.2f} ms CPU per run; statements per run: primary "
            f"{statements[0]:.2f}, standby {statements[1]:.2f}; mamori connections after the runs "
            f"{left} (one per node), after aclose() {closed}"
        )
    finally:
        await lab.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
