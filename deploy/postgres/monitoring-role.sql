-- Mamori's monitoring role on PostgreSQL 15: the least privilege every replication, WAL and
-- archiving check needs, plus the heartbeat table (the heartbeat migration).
--
-- Run it as a superuser, once per cluster, on the PRIMARY: roles, schemas, tables and grants
-- replicate to every standby by themselves.
--
--     psql -X -v ON_ERROR_STOP=1 -d postgres -f monitoring-role.sql
--     psql -X -d postgres -c '\password mamori'        -- or ALTER ROLE mamori PASSWORD '...'
--
-- or pass the password as a psql variable (it then shows in `ps` while psql runs):
--
--     psql -X -v ON_ERROR_STOP=1 -v mamori_password=SECRET -d postgres -f monitoring-role.sql
--
-- Idempotent: a second run changes nothing (and re-strips anything granted to mamori by hand
-- that the ALTER ROLE below names). The lab (lab/postgres.py) runs this file verbatim,
-- then sets a generated password. pg_hba.conf must let mamori in with a password (scram-sha-256).

-- A login role that owns nothing. CREATE ROLE has no IF NOT EXISTS, hence the DO block.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'mamori') THEN
        CREATE ROLE mamori LOGIN;
    END IF;
END
$$;

-- Spelled out so a re-run also takes back what no monitoring role needs. INHERIT is required:
-- mamori uses pg_monitor's rights without SET ROLE.
ALTER ROLE mamori WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- pg_monitor = pg_read_all_settings + pg_read_all_stats + pg_stat_scan_tables, and EXECUTE on
-- pg_ls_waldir() and pg_ls_archive_statusdir(). What the checks use it for:
--   pg_read_all_stats  every column of pg_stat_replication (client_addr, state, sent/write/
--                      flush/replay_lsn, *_lag, reply_time) and of pg_stat_wal_receiver
--                      (sender_host, sender_port, conninfo); without it those read NULL for
--                      sessions of other roles, i.e. for every walsender and the WAL receiver.
--   pg_read_all_settings  current_setting() of settings hidden from ordinary roles
--                      (archive_command, data_directory, ...).
--   pg_ls_archive_statusdir()  the archiving backlog: .ready files and the age of the oldest.
--   pg_ls_waldir()     WAL on disk (pg_wal size) against max_slot_wal_keep_size.
-- pg_stat_archiver, pg_replication_slots, pg_stat_wal, pg_control_*() and the LSN functions
-- need nothing: they are readable by every role. Granting a role twice is only a NOTICE.
GRANT pg_monitor TO mamori;

-- The heartbeat's schema, owned by whoever runs this file (a superuser), not by mamori: the
-- monitoring role can use what is in it but create, alter or drop nothing there.
CREATE SCHEMA IF NOT EXISTS mamori AUTHORIZATION CURRENT_USER;

-- The heartbeat migration. One row per cluster (source = the postgres check's `cluster` key,
-- default its name), shared by every agent that watches the cluster: each upserts (source, now(),
-- pg_current_wal_lsn()) on the primary every run (or every `heartbeat_interval`) and reads the
-- row on each standby: delay = the primary's now() - ts as replayed. Both times come from the
-- primary's clock (no skew), and the row keeps moving when the primary is idle, so the delay
-- stays honest. Each write is a commit: with archive_timeout set, an idle primary archives a
-- segment per archive_timeout (docs/checks/postgres.md, "What the heartbeat costs").
CREATE TABLE IF NOT EXISTS mamori.heartbeat (
    source text PRIMARY KEY,
    ts     timestamptz NOT NULL,
    lsn    pg_lsn
);

-- Reach objects in the schema (USAGE does not allow creating any).
GRANT USAGE ON SCHEMA mamori TO mamori;

-- INSERT ... ON CONFLICT (source) DO UPDATE needs INSERT and UPDATE, and SELECT for the
-- conflict check; SELECT is also the read on the standby. No DELETE/TRUNCATE: rows stay.
GRANT SELECT, INSERT, UPDATE ON mamori.heartbeat TO mamori;

-- The optional psql variable: set the password here instead of afterwards.
\if :{?mamori_password}
ALTER ROLE mamori PASSWORD :'mamori_password';
\endif
