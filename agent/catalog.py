"""Every metric Mamori emits, in one table: name -> (type, labels beyond check/target, help).

`docs/metrics.md` is generated from this table (`make docs`), and tests assert that what the
agent actually emits matches it both ways. Names keep blackbox_exporter's where the meaning is
identical, so existing dashboards and rules keep working; everything else is `mamori_…`.

Sample labels listed here are the ones a check adds; the exporter adds `check` and `target` to
every per-check sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    type: MetricType
    labels: tuple[str, ...]
    help: str
    source: str  # which part emits it, for the docs table


def _m(type_: MetricType, labels: str, help_: str, source: str) -> MetricSpec:
    return MetricSpec(type_, tuple(labels.split()) if labels else (), help_, source)


PER_CHECK_LABELS = ("check", "target")

# Closed label sets: every value a label of these per-check metrics can have, for what checks a
# query against the catalog (exporters/oci_alarms: an alarm on another value never fires).
# `mamori_check_status{type}`: the check types (checks/__init__.py's REGISTRY) and the fleet's
# results (checks/fleet.py); tests/test_metrics_catalog.py holds the two to this list.
CHECK_TYPES = ("http", "tcp", "host", "lb", "docker", "postgres", "pg_backup", "fleet")

# `mamori_pg_failover_ready{reason}`: why the cluster can (not) fail over, one at a time
# (checks/postgres/cluster.py judges them in this order). The cluster-wide ones first; then a
# standby's own problems, from the furthest from ready to the closest: the best standby's problem
# is the cluster's.
READY_REASONS = (
    "ready",
    "split_brain",
    "sysid_mismatch",
    "no_standby",
    "standby_down",
    "receiver_down",
    "timeline_mismatch",
    "replay_paused",
    "lag_exceeds_rpo",
)

# `mamori_pg_failover_recommended{reason}`.
RECOMMENDED_REASONS = (
    "primary_reachable",
    "primary_unknown",
    "primary_down_standby_ready",
    "primary_down_standby_not_ready",
)
# `mamori_pg_primary_witness{state}`: what one witness says of a cluster's primary (issue 15).
WITNESS_STATES = ("reachable", "down", "unknown")

# Per-check samples: the exporter labels each with check and target.
CHECK_METRICS: dict[str, MetricSpec] = {
    # every check (added by the exporter from the result itself)
    "probe_success": _m(
        "gauge", "", "1 if the check succeeded (status OK or WARNING), else 0.", "all checks"
    ),
    "probe_duration_seconds": _m("gauge", "", "How long the last run took, in seconds.", "all checks"),
    "mamori_check_status": _m(
        "gauge",
        "type reason",
        "Status of the last run: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; reason from the closed list in docs/reasons.md.",
        "all checks",
    ),
    "mamori_check_last_run_timestamp_seconds": _m(
        "gauge", "", "Unix time the last run started.", "all checks"
    ),
    "mamori_check_attempts": _m(
        "gauge", "", "Attempts made in the last run (retries included).", "all checks"
    ),
    # http
    "probe_http_duration_seconds": _m(
        "gauge",
        "phase",
        "Duration of each phase of the HTTP request (resolve, connect, tls, processing, transfer), summed over redirects.",
        "http",
    ),
    "probe_http_status_code": _m("gauge", "", "Status code of the final HTTP response (0 if none).", "http"),
    "probe_http_version": _m("gauge", "", "HTTP version of the final response, e.g. 1.1.", "http"),
    "probe_http_redirects": _m("gauge", "", "Number of redirects followed.", "http"),
    "probe_http_ssl": _m("gauge", "", "1 if the final request used TLS.", "http"),
    "probe_http_content_length": _m(
        "gauge", "", "Length of the final response body in bytes, as received.", "http"
    ),
    "probe_failed_due_to_regex": _m("gauge", "", "1 if a body/expect regex condition failed.", "http tcp"),
    "probe_dns_lookup_time_seconds": _m("gauge", "", "Time taken to resolve the target name.", "http tcp"),
    "probe_ip_protocol": _m("gauge", "", "IP protocol used: 4 or 6 (0 if not connected).", "http tcp"),
    # TLS (http and tcp)
    "probe_ssl_earliest_cert_expiry": _m(
        "gauge", "", "Unix time of the earliest expiry in the presented certificate chain.", "http tcp"
    ),
    "probe_ssl_last_chain_expiry_timestamp_seconds": _m(
        "gauge",
        "",
        "Unix time of the earliest expiry in the verified chain (the chain that matters for trust).",
        "http tcp",
    ),
    "probe_tls_version_info": _m("gauge", "version", "TLS version negotiated (value 1).", "http tcp"),
    # tcp
    "mamori_tcp_duration_seconds": _m(
        "gauge", "phase", "Duration of each phase of a TCP check (resolve, connect, tls, expect).", "tcp"
    ),
    # lb: the group and its members (member = lb, address-N or a backend's name)
    "mamori_group_members": _m(
        "gauge", "role", "Members of a load-balancer group by role (address, backend).", "lb"
    ),
    "mamori_group_members_healthy": _m("gauge", "role", "Members answering correctly, by role.", "lb"),
    "mamori_group_healthy_needed": _m(
        "gauge", "", "Healthy backends the verdict policy needs (all, any, quorum).", "lb"
    ),
    "mamori_member_success": _m(
        "gauge", "member role", "1 if the member answered correctly (OK or WARNING).", "lb"
    ),
    "mamori_member_status": _m("gauge", "member role reason", "Member status (0-3) with its reason.", "lb"),
    "mamori_member_duration_seconds": _m("gauge", "member role", "How long the member's probe took.", "lb"),
    "mamori_member_http_status_code": _m(
        "gauge", "member role", "HTTP status code the member answered (0 if none).", "lb"
    ),
    "mamori_member_http_duration_seconds": _m(
        "gauge", "member role phase", "Duration of each HTTP phase of the member's probe.", "lb"
    ),
    # host
    "mamori_host_cpu_usage_ratio": _m("gauge", "", "CPU busy ratio (0-1) since the previous run.", "host"),
    "mamori_host_cpus": _m("gauge", "", "Logical CPUs.", "host"),
    "mamori_host_load1": _m("gauge", "", "1-minute load average.", "host"),
    "mamori_host_load5": _m("gauge", "", "5-minute load average.", "host"),
    "mamori_host_load15": _m("gauge", "", "15-minute load average.", "host"),
    "mamori_host_memory_total_bytes": _m("gauge", "", "Physical memory.", "host"),
    "mamori_host_memory_available_bytes": _m(
        "gauge", "", "Memory available for new work without swapping.", "host"
    ),
    "mamori_host_memory_usage_ratio": _m("gauge", "", "1 - available/total.", "host"),
    "mamori_host_swap_total_bytes": _m("gauge", "", "Swap space.", "host"),
    "mamori_host_swap_used_bytes": _m("gauge", "", "Swap in use.", "host"),
    "mamori_host_swap_usage_ratio": _m("gauge", "", "Swap used/total (0 when there is no swap).", "host"),
    "mamori_host_filesystem_size_bytes": _m("gauge", "mountpoint fstype", "Filesystem size.", "host"),
    "mamori_host_filesystem_avail_bytes": _m(
        "gauge", "mountpoint fstype", "Bytes available to unprivileged users.", "host"
    ),
    "mamori_host_filesystem_usage_ratio": _m(
        "gauge", "mountpoint fstype", "Used/(used+avail), as df reports it.", "host"
    ),
    "mamori_host_disk_read_bytes_total": _m("counter", "device", "Bytes read from a block device.", "host"),
    "mamori_host_disk_written_bytes_total": _m(
        "counter", "device", "Bytes written to a block device.", "host"
    ),
    "mamori_host_network_received_bytes_total": _m(
        "counter", "interface", "Bytes received on an interface.", "host"
    ),
    "mamori_host_network_transmitted_bytes_total": _m(
        "counter", "interface", "Bytes sent on an interface.", "host"
    ),
    "mamori_host_network_errors_total": _m(
        "counter", "interface direction", "Receive/transmit errors on an interface.", "host"
    ),
    "mamori_host_processes": _m("gauge", "", "Number of processes.", "host"),
    "mamori_host_boot_time_seconds": _m("gauge", "", "Unix time the host booted.", "host"),
    "mamori_host_uptime_seconds": _m("gauge", "", "Seconds since the host booted.", "host"),
    # docker
    "mamori_container_running": _m(
        "gauge", "container", "1 if the container is running (State.Status running), else 0.", "docker"
    ),
    "mamori_container_healthy": _m(
        "gauge",
        "container",
        "Docker healthcheck: 1 healthy, 0 unhealthy or starting, -1 no healthcheck.",
        "docker",
    ),
    "mamori_container_restarts_total": _m(
        "counter",
        "container",
        "Restarts of the container by Docker (RestartCount); starts again from 0 for a re-created container.",
        "docker",
    ),
    "mamori_container_oom_killed": _m(
        "gauge",
        "container",
        "1 if the container's last exit was an out-of-memory kill (State.OOMKilled).",
        "docker",
    ),
    "mamori_container_exit_code": _m(
        "gauge",
        "container",
        "Exit code of the container's last run (State.ExitCode; 0 while running).",
        "docker",
    ),
    "mamori_containers": _m(
        "gauge",
        "state",
        "Selected containers by state: created, running, paused, restarting, removing, exited, dead.",
        "docker",
    ),
    # postgres: per node (node = the configured name), per standby (standby = its application_name,
    # as the primary's pg_stat_replication shows it), per slot; cluster = the check's `cluster`
    "mamori_pg_up": _m("gauge", "node", "1 if the node answered the probe query, else 0.", "postgres"),
    "mamori_pg_in_recovery": _m(
        "gauge", "node", "pg_is_in_recovery(): 1 on a standby, 0 on a primary.", "postgres"
    ),
    "mamori_pg_timeline": _m(
        "gauge",
        "node",
        "Timeline: a primary's insert timeline; a standby's received timeline (else its last restartpoint's).",
        "postgres",
    ),
    "mamori_pg_connections": _m("gauge", "node", "Client backends connected.", "postgres"),
    "mamori_pg_max_connections": _m("gauge", "node", "The max_connections setting.", "postgres"),
    "mamori_pg_xid_age": _m(
        "gauge", "node", "Age of the oldest unfrozen transaction ID: max(age(datfrozenxid)).", "postgres"
    ),
    "mamori_pg_xid_age_ratio": _m(
        "gauge", "node", "mamori_pg_xid_age / 2^31: 1 is transaction ID wraparound.", "postgres"
    ),
    "mamori_pg_wal_lsn_bytes": _m(
        "gauge", "node", "A primary's current WAL LSN, in bytes (rate() of it is the WAL rate).", "postgres"
    ),
    "mamori_pg_wal_rate_bytes_per_second": _m(
        "gauge", "node", "WAL written by a primary per second since the check's previous run.", "postgres"
    ),
    "mamori_pg_standby_state": _m(
        "gauge",
        "node standby state",
        "A standby connected to this primary (pg_stat_replication), value 1; state: startup, catchup, streaming, stopping.",
        "postgres",
    ),
    "mamori_pg_standby_lag_bytes": _m(
        "gauge",
        "node standby stage",
        "How far a standby is behind the primary's current LSN, in bytes, by stage: sent, write, flush, replay.",
        "postgres",
    ),
    "mamori_pg_standby_lag_seconds": _m(
        "gauge",
        "node standby stage",
        "pg_stat_replication write/flush/replay_lag. NULL reads 0 only when streaming and replayed up to the current LSN; otherwise absent (unknown).",
        "postgres",
    ),
    "mamori_pg_standby_feedback_age_seconds": _m(
        "gauge", "node standby", "Seconds since the standby's last feedback message (reply_time).", "postgres"
    ),
    "mamori_pg_archiver_enabled": _m("gauge", "node", "1 if archive_mode is on or always.", "postgres"),
    "mamori_pg_archiver_failing": _m(
        "gauge",
        "node",
        "1 if the last archive attempt failed (last_failed_time > last_archived_time).",
        "postgres",
    ),
    "mamori_pg_archiver_archived_total": _m(
        "counter", "node", "WAL segments archived (pg_stat_archiver.archived_count).", "postgres"
    ),
    "mamori_pg_archiver_failed_total": _m(
        "counter", "node", "Failed archive attempts (pg_stat_archiver.failed_count).", "postgres"
    ),
    "mamori_pg_archiver_last_archived_age_seconds": _m(
        "gauge",
        "node",
        "Seconds since the last successful archive; grows on an idle primary, so never alert on it alone.",
        "postgres",
    ),
    "mamori_pg_archiver_ready_files": _m(
        "gauge", "node", "WAL segments waiting to be archived (.ready files).", "postgres"
    ),
    "mamori_pg_archiver_ready_oldest_age_seconds": _m(
        "gauge",
        "node",
        "Age of the oldest .ready file (WAL waiting to be archived), 0 when none.",
        "postgres",
    ),
    "mamori_pg_archiver_ready_files_warning": _m(
        "gauge",
        "node",
        "The configured ready_backlog_warning: .ready files from which archiving is failing (archive_failing).",
        "postgres",
    ),
    "mamori_pg_archiver_ready_oldest_age_warning_seconds": _m(
        "gauge",
        "node",
        "The configured (or default) archive_age_warning: the oldest .ready file's age from which archiving is failing (archive_failing).",
        "postgres",
    ),
    "mamori_pg_slot_active": _m(
        "gauge", "node slot", "1 if a consumer is connected to the slot.", "postgres"
    ),
    "mamori_pg_slot_expected": _m(
        "gauge",
        "node slot",
        "1 if the check expects the slot (a configured or expected standby's, or in expected_slots): "
        "an inactive slot that is not expected is a warning.",
        "postgres",
    ),
    "mamori_pg_slot_retained_bytes": _m(
        "gauge",
        "node slot",
        "WAL the slot retains: the node's current (or replayed) LSN - restart_lsn.",
        "postgres",
    ),
    "mamori_pg_slot_wal_status": _m(
        "gauge",
        "node slot wal_status",
        "The slot's wal_status, value 1: reserved, extended, unreserved, lost (none if never reserved).",
        "postgres",
    ),
    "mamori_pg_slot_safe_wal_size_bytes": _m(
        "gauge",
        "node slot",
        "WAL that can still be written before the slot is lost (absent while max_slot_wal_keep_size = -1).",
        "postgres",
    ),
    "mamori_pg_wal_receive_lsn_bytes": _m(
        "gauge", "node", "A standby's last WAL LSN received and flushed, in bytes.", "postgres"
    ),
    "mamori_pg_wal_replay_lsn_bytes": _m(
        "gauge", "node", "A standby's last WAL LSN replayed, in bytes.", "postgres"
    ),
    "mamori_pg_apply_backlog_bytes": _m(
        "gauge", "node", "WAL a standby has received but not replayed yet.", "postgres"
    ),
    "mamori_pg_replay_paused": _m(
        "gauge", "node", "1 if WAL replay is paused (or a pause is requested) on the standby.", "postgres"
    ),
    "mamori_pg_wal_receiver_status": _m(
        "gauge",
        "node status",
        "A standby's WAL receiver status, value 1: streaming, starting, waiting, restarting, stopping, stopped, none (not running).",
        "postgres",
    ),
    "mamori_pg_wal_receiver_last_message_age_seconds": _m(
        "gauge",
        "node",
        "Seconds since the WAL receiver last heard from its upstream (keepalives keep it fresh on an idle primary).",
        "postgres",
    ),
    "mamori_pg_last_xact_replay_age_seconds": _m(
        "gauge",
        "node",
        "now() - pg_last_xact_replay_timestamp() on a standby: grows on an idle primary, so it is not replication lag.",
        "postgres",
    ),
    "mamori_pg_heartbeat_delay_seconds": _m(
        "gauge",
        "node",
        "Replication delay of a standby: the primary's now() - the heartbeat time the standby has replayed. When no primary answers this agent, the standby's clock: the time since a heartbeat last reached it, not a lag (the lag rules are quiet then).",
        "postgres",
    ),
    "mamori_pg_cluster_primaries": _m(
        "gauge",
        "cluster",
        "Nodes answering this agent as primary (more than 1 is split brain; 0: no primary reachable from here, so what only a primary knows is unknown from here).",
        "postgres",
    ),
    "mamori_pg_cluster_sysid_mismatch": _m(
        "gauge", "cluster", "1 if a node's system identifier differs from the primary's.", "postgres"
    ),
    "mamori_pg_cluster_timeline_divergence": _m(
        "gauge", "cluster", "1 if a standby is on another timeline than the primary.", "postgres"
    ),
    "mamori_pg_expected_standby_connected": _m(
        "gauge",
        "cluster standby",
        "1 if an expected standby streams from the primary, else 0; absent when no primary answers this agent (unknown from here).",
        "postgres",
    ),
    "mamori_pg_node_streaming": _m(
        "gauge",
        "cluster node",
        "1 if the primary streams to this configured standby node (its pg_stat_replication), else 0; absent when no primary answers this agent (unknown from here).",
        "postgres",
    ),
    "mamori_pg_rpo_seconds": _m("gauge", "cluster", "The configured recovery point objective.", "postgres"),
    "mamori_pg_lag_warning_seconds": _m(
        "gauge", "cluster", "The configured lag_warning: a standby's delay from which it warns.", "postgres"
    ),
    "mamori_pg_rpo_exposure_seconds": _m(
        "gauge",
        "cluster",
        "Seconds of committed data at risk: the smaller of the standby gap and the archive gap.",
        "postgres",
    ),
    "mamori_pg_rpo_standby_gap_seconds": _m(
        "gauge", "cluster", "Replication delay of the most up-to-date standby.", "postgres"
    ),
    "mamori_pg_rpo_archive_gap_seconds": _m(
        "gauge",
        "cluster",
        "How far back the commits the archive lacks may reach: the oldest .ready file's age, or, when none waits, the time since the last archived segment (grows on an idle primary without archive_timeout; not a failure).",
        "postgres",
    ),
    "mamori_pg_failover_ready": _m(
        "gauge",
        "cluster reason",
        "1 if a standby could take over now, else 0; reason: ready, split_brain, sysid_mismatch, no_standby, standby_down, receiver_down, timeline_mismatch, replay_paused, lag_exceeds_rpo.",
        "postgres",
    ),
    "mamori_pg_failover_recommended": _m(
        "gauge",
        "cluster reason",
        "1 if, from this agent's vantage point, the primary is down and a standby is ready; reason: primary_reachable, primary_unknown (no primary answers, not yet down: a timeout within stall_grace), primary_down_standby_ready, primary_down_standby_not_ready.",
        "postgres",
    ),
    "mamori_pg_primary_witness": _m(
        "gauge",
        "cluster witness zone state",
        "What one witness says of the cluster's primary: 1 for its current state (reachable, down, unknown), 0 for the others. witness: agent:<agent>, standby:<node>, app:<check> (an lb check: also app:<check>/<backend>); zone: where the witness stands (empty when not configured).",
        "postgres, http, lb",
    ),
    # fleet: the verdict on the witnesses (checks/fleet.py), check `fleet:<cluster>`
    "mamori_fleet_agents": _m(
        "gauge",
        "cluster",
        "Live agents reporting on the cluster: a view younger than window_intervals check intervals, status not offline.",
        "fleet",
    ),
    "mamori_fleet_primary_down_votes": _m(
        "gauge",
        "cluster",
        "Witnesses of the live agents' views that say the primary is down (each witness once).",
        "fleet",
    ),
    "mamori_fleet_quorum": _m(
        "gauge",
        "cluster",
        "Down votes needed to confirm: min_votes (with quorum set, at least the live agents it requires).",
        "fleet",
    ),
    "mamori_fleet_primary_down_confirmed": _m(
        "gauge",
        "cluster",
        "1 if the primary is down, confirmed: no witness sees it reachable, at least min_votes see it down in at least min_zones zones, and no agent that saw it alive within lost_window is gone; else 0.",
        "fleet",
    ),
    "mamori_fleet_primary_down_zones": _m(
        "gauge", "cluster", "Distinct non-empty zones of the witnesses that say the primary is down.", "fleet"
    ),
    "mamori_fleet_lost_witnesses": _m(
        "gauge",
        "cluster",
        "Agents that said the primary was reachable within lost_window and are now offline or silent (a confirmation is then inconclusive).",
        "fleet",
    ),
    "mamori_fleet_witnesses": _m(
        "gauge",
        "cluster state",
        "Witnesses of the live agents' views in each state (reachable, down, unknown), each witness once, its strongest report.",
        "fleet",
    ),
    "mamori_fleet_verdict": _m(
        "gauge",
        "cluster verdict",
        "The fleet's verdict on the primary: 1 for the current one (alive, confirmed, inconclusive, none), 0 for the others.",
        "fleet",
    ),
    # pg_backup
    "mamori_pg_backup_age_seconds": _m("gauge", "", "Age of the newest base backup.", "pg_backup"),
    "mamori_pg_backup_last_timestamp_seconds": _m(
        "gauge", "", "Unix time the newest base backup finished.", "pg_backup"
    ),
    "mamori_pg_backups": _m(
        "gauge", "", "Backups the source lists (directory entries, pgBackRest backups).", "pg_backup"
    ),
    "mamori_pg_pitr_window_seconds": _m(
        "gauge",
        "",
        "How far back a restore can go: now - the oldest restorable point (when the source can say).",
        "pg_backup",
    ),
}

# The agent's own health: not per check/target.
AGENT_METRICS: dict[str, MetricSpec] = {
    "mamori_agent_info": _m(
        "gauge",
        "agent version",
        "Agent name and version, plus the agent's configured labels (value 1).",
        "agent",
    ),
    "mamori_agent_start_time_seconds": _m("gauge", "", "Unix time the agent started.", "agent"),
    "mamori_checks_configured": _m("gauge", "", "Checks in the running config.", "agent"),
    "mamori_check_runs_total": _m("counter", "check status", "Check runs by resulting status.", "scheduler"),
    "mamori_check_run_duration_seconds": _m(
        "histogram",
        "",
        "Wall time of check runs, all checks together (per check: probe_duration_seconds).",
        "scheduler",
    ),
    "mamori_probe_attempts_total": _m(
        "counter",
        "check outcome",
        "Attempts made by check runs, retries included, by outcome: success or failure.",
        "scheduler",
    ),
    "mamori_check_errors_total": _m(
        "counter",
        "check",
        "Runs that ended in a bug (an exception escaping a check; reason check_error).",
        "scheduler",
    ),
    "mamori_scheduler_lateness_seconds": _m(
        "histogram",
        "",
        "How late runs start against their schedule (concurrency limit included).",
        "scheduler",
    ),
    "mamori_scheduler_skipped_runs_total": _m(
        "counter",
        "check",
        "Scheduled runs skipped because the previous run of the check was still going.",
        "scheduler",
    ),
    "mamori_scheduler_running_checks": _m("gauge", "", "Check runs in progress.", "scheduler"),
    "mamori_sink_queue_depth": _m("gauge", "sink", "Results waiting in a sink's queue.", "pipeline"),
    "mamori_sink_queue_capacity": _m("gauge", "sink", "Capacity of a sink's queue.", "pipeline"),
    "mamori_sink_dropped_total": _m(
        "counter", "sink", "Results dropped because a sink's queue was full (oldest first).", "pipeline"
    ),
    "mamori_sink_errors_total": _m("counter", "sink", "Results a sink failed to consume.", "pipeline"),
    "mamori_alert_notifications_total": _m(
        "counter",
        "route outcome",
        "Send attempts of the agent's own notifier by route and outcome (delivered, retry, rejected).",
        "alerts",
    ),
    "mamori_alert_outbox_depth": _m(
        "gauge",
        "route",
        "Notifications waiting to be delivered, by route: in the durable outbox, or in memory while the alert state file cannot be written.",
        "alerts",
    ),
    "mamori_alert_network_down": _m(
        "gauge", "", "1 while the connectivity guard holds the agent's own network for down.", "alerts"
    ),
    "mamori_alert_notifications_dropped_total": _m(
        "counter",
        "route reason",
        "Notifications of the agent's own notifier lost before they were stored, by reason: disk_full or write_error (the alert state file could not be written while more than 1000 waited in memory, or when the agent stopped).",
        "alerts",
    ),
    "mamori_outbox_depth": _m(
        "gauge", "sink", "Results in the durable outbox a push exporter has not sent yet.", "exporters"
    ),
    "mamori_outbox_oldest_age_seconds": _m(
        "gauge",
        "sink",
        "Age of the oldest result a push exporter has not sent yet (0 when none).",
        "exporters",
    ),
    "mamori_outbox_bytes": _m("gauge", "", "Size of the results stored in the durable outbox.", "exporters"),
    "mamori_outbox_dropped_total": _m(
        "counter",
        "sink reason",
        "Results a push exporter will never send, by reason: capacity (the outbox cap), expired (older than the service accepts), invalid (the service refused them), disk_full or write_error (the outbox could not store them).",
        "exporters",
    ),
    "mamori_export_sent_total": _m("counter", "sink", "Results a push exporter has delivered.", "exporters"),
    "mamori_export_samples_skipped_total": _m(
        "counter",
        "sink reason",
        "Samples a push exporter left out of results it sent: non_finite, invalid_name, invalid_dimensions.",
        "exporters",
    ),
    "mamori_export_failures_total": _m(
        "counter", "sink", "Pushes that failed and are retried (with backoff).", "exporters"
    ),
    "mamori_durability_degraded": _m(
        "gauge",
        "file",
        "1 while writes to a state file (the alert state file, the outbox) fail, e.g. the disk is full; /ready answers 503 meanwhile.",
        "agent",
    ),
    "mamori_state_file_recovered_total": _m(
        "counter",
        "file reason",
        "State files found damaged or empty (0 bytes) at start-up, moved aside to <name>.damaged-<time> and started empty, since the agent started.",
        "agent",
    ),
    "mamori_config_reloads_total": _m(
        "counter", "outcome", "Config reloads (SIGHUP) by outcome: success or failure.", "agent"
    ),
    "mamori_config_last_reload_success_timestamp_seconds": _m(
        "gauge", "", "Unix time of the last successful config load.", "agent"
    ),
}


# The detailed series: what a check with `series: basic` (or `agent.series: basic`) leaves out of
# what it exports (exporters/samples.py), for an agent probing thousands of targets. Kept in
# `basic`: the harness's series, the http status code, the certificate expiry, everything of
# host, docker, postgres, pg_backup and fleet (one or a few checks per agent), and an lb's
# member verdicts.
DETAIL_METRICS = frozenset(
    {
        "probe_http_duration_seconds",
        "probe_http_version",
        "probe_http_redirects",
        "probe_http_ssl",
        "probe_http_content_length",
        "probe_failed_due_to_regex",
        "probe_dns_lookup_time_seconds",
        "probe_ip_protocol",
        "probe_tls_version_info",
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "mamori_tcp_duration_seconds",
        "mamori_member_duration_seconds",
        "mamori_member_http_status_code",
        "mamori_member_http_duration_seconds",
    }
)


def all_metrics() -> dict[str, MetricSpec]:
    return {**CHECK_METRICS, **AGENT_METRICS}


def render_markdown() -> str:
    """docs/metrics.md, generated: `make docs`. A test keeps the file equal to this."""
    out = [
        "# Metrics",
        "",
        "Generated from `agent/catalog.py` by `make docs`; a test fails when this file, the catalog",
        "and what the agent emits disagree. Every per-check metric also carries the labels `check`",
        "(the check's name) and `target` (what it probes: no credentials, no query string).",
        "Names shared with blackbox_exporter mean exactly what they mean there.",
        "",
        "## Per check",
        "",
        "| metric | type | labels | from | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, spec in CHECK_METRICS.items():
        labels = ", ".join(("check", "target", *spec.labels))
        out.append(f"| `{name}` | {spec.type} | {labels} | {spec.source} | {spec.help} |")
    detail = ", ".join(f"`{name}`" for name in CHECK_METRICS if name in DETAIL_METRICS)
    out += [
        "",
        "## Detailed series (`series: basic` leaves them out)",
        "",
        "A check with `series: basic` (or every check, with `agent.series: basic`) exports its",
        "results without these, so an agent probing thousands of targets costs its Prometheus",
        "a third of the series; the default, `full`, is blackbox_exporter's set. The agent's own",
        "alert rules and `/api/v1/results` still see every sample. How many series each check",
        "type emits: `docs/checks/common.md`.",
        "",
        detail + ".",
        "",
        "## The agent itself",
        "",
        "| metric | type | labels | from | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, spec in AGENT_METRICS.items():
        labels = ", ".join(spec.labels) or "-"
        out.append(f"| `{name}` | {spec.type} | {labels} | {spec.source} | {spec.help} |")
    out += [
        "",
        "`mamori_agent_info` also carries every label configured under `agent.labels` (site, role, …).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")  # noqa: T201
