"""Test lanes: every test gets exactly one of the markers `unit`, `service`, `e2e`, `deploy`.

- `deploy`: tests/deploy/ (the image, the wheel, the shipped deployment files);
- `e2e`: runs `agentctl` or the agent as a process of its own;
- `service`: starts a real program of a Debian package (PostgreSQL, HAProxy, nginx, Mosquitto,
  Prometheus or promtool, Alertmanager or amtool, Docker…), or is slow (the SLOW table);
- `unit`: everything else — in-process, fast; `make unit` runs it in under a minute.

The lane is decided here, by directory, module and the fixtures a test uses, and a small table
for the tests no rule sees, so that no test file carries a marker of its own. The first rule that
matches wins, in the order deploy, e2e, service, unit.
"""

from __future__ import annotations

import pytest

LANES = ("unit", "service", "e2e", "deploy")  # registered in pyproject.toml (strict markers)

# Fixtures that start a real service.
SERVICE_FIXTURES = frozenset(
    {
        "pg_cluster",  # tests/pg.py: a PostgreSQL primary + standby
        "lab",  # the web lab: app servers behind a real HAProxy
        "broker",  # Mosquitto
        "alertmanager",  # Alertmanager
        "docker_engine",  # a real Docker Engine (tests/docker/)
        "chromium",  # a headless Chromium (tests/agent/test_status_page.py)
    }
)
DOCKER_FIXTURE = "docker_engine"
E2E_FIXTURES = frozenset({"agent_proc"})

# Table entries are a directory ("tests/lab/"), a module ("tests/x.py") or a test ("tests/x.py::test_y",
# every parametrization of it).
DEPLOY = ("tests/deploy/",)
E2E = (
    "tests/test_demo.py",
    "tests/checks/test_google_calendar.py",  # its fixture runs `agentctl validate` on production.yml
    "tests/agent/test_alertctl.py",
    "tests/agent/test_cli.py",
    "tests/agent/test_event_loop.py::test_agentctl_check_refuses_a_bad_value_in_one_line",
    "tests/agent/test_event_loop.py::test_agentctl_run_refuses_a_bad_value_in_one_line",
    "tests/agent/test_gate.py",
    "tests/agent/test_restart_schedule.py",
    "tests/agent/test_signals.py",
    *(
        f"tests/agent/test_endpoint.py::{name}"
        for name in (
            "test_2000_idle_connections_do_not_lock_scrapers_out",
            "test_a_100_mb_body_is_refused_without_being_read",
            "test_a_1_mb_header_is_refused_and_the_connection_closed",
            "test_a_burst_of_300_clients_is_answered",
            "test_a_malformed_request_gets_400",
            "test_agentctl_check_does_not_import_aiohttp",
            "test_an_agent_without_state_files_does_not_load_sqlite",
            "test_an_http2_preface_is_refused_not_405",
            "test_pipelined_requests_of_clients_that_hang_up_cost_no_memory",
            "test_slowloris_clients_do_not_delay_a_scrape",
        )
    ),
    *(
        f"tests/agent/test_config.py::{name}"
        for name in (
            "test_validate_cli_accepts_the_embedded_default_and_reports_missing_files",
            "test_validate_cli_prints_errors_without_traceback",
            "test_validate_cli_refuses_hostile_files_in_one_line",
            "test_validate_prints_warnings_and_still_exits_0",
        )
    ),
    *(
        f"tests/agent/test_statefile.py::{name}"
        for name in (
            "test_a_damaged_state_file_is_moved_aside_logged_counted_and_the_agent_starts",
            "test_a_file_that_is_not_sqlite_is_refused_and_left_alone",
            "test_a_full_disk_at_start_refuses_in_one_line_and_leaves_no_empty_file",
            "test_a_second_start_on_its_own_new_files_moves_nothing",
            "test_an_unwritable_alert_state_file_refuses_to_start_in_one_line",
            "test_an_unwritable_directory_refuses_to_start_in_one_line",
            "test_an_unwritable_outbox_refuses_to_start_in_one_line",
            "test_empty_state_files_are_moved_aside_and_counted_not_taken_for_new",
            "test_sound_state_files_on_a_full_disk_refuse_to_start_in_one_line",
            "test_the_cli_reports_a_damaged_alert_state_file_in_one_line_and_moves_nothing",
        )
    ),
    "tests/alerts/test_notifiers.py::test_slack_webhook_token_echoed_in_a_500_reaches_no_log_store_or_notify_test",
    "tests/checks/test_postgres.py::test_agentctl_check_prints_the_replication_summary",
    "tests/exporters/test_oci.py::test_the_agent_does_not_log_the_sdks_circuit_breaker_line_at_start",
)
DOCKER = "tests/docker/"  # the real Docker Engine: service lane, run last
SERVICE: tuple[str, ...] = (
    "tests/lab/",
    DOCKER,
    "tests/alerts/test_failover_catalogue.py",  # real Postgres, Mosquitto, Prometheus, Alertmanager
)

# Tests that take 0.4 s or more on a loaded 2-core machine (`pytest --durations`):
# fuzzing, real timeouts and backoffs, a whole agent in-process. They run in the service lane so
# that `make unit` stays under a minute. A new slow test belongs here too.
SLOW: dict[str, tuple[str, ...]] = {
    "tests/agent/test_agent.py": (
        "test_agent_serves_results_and_metrics",
        "test_ready_and_a_metric_say_durability_is_degraded_while_the_disk_is_full",
    ),
    "tests/agent/test_config_fuzz.py": (
        "test_random_anchors_aliases_and_merges_never_escape",
        "test_random_configs_never_escape",
        "test_random_structures_never_escape",
        "test_random_yaml_text_never_escapes",
        "test_the_worst_documents_within_the_size_cap_are_bounded",
    ),
    "tests/agent/test_event_loop.py": ("test_the_agent_logs_its_loop_at_start",),
    "tests/agent/test_yamldoc_plain.py": (
        "test_random_structures_load_the_same",
        "test_random_yaml_text_loads_the_same",
    ),
    "tests/agent/test_endpoint.py": (
        "test_a_big_exposition_passes_promtool_and_its_gzip_is_the_same_body",
        "test_a_connection_over_the_bound_closes_the_oldest_not_the_newcomer",
        "test_a_head_sent_byte_by_byte_is_cut_at_its_deadline",
        "test_a_scrape_while_results_arrive_shows_every_check_once_from_one_moment",
        "test_an_idle_keep_alive_connection_and_an_unread_answer_are_closed",
    ),
    "tests/agent/test_reload_config.py": (
        "test_a_slow_load_runs_off_the_event_loop_and_a_loader_bug_is_one_counted_line",
        "test_a_reload_removes_a_check_through_the_pipeline",
    ),
    "tests/agent/test_runner.py": (
        "test_a_retry_gets_what_is_left_of_the_timeout_and_keeps_its_phase_and_samples",
        "test_a_target_that_never_answers_is_the_checks_own_timeout_within_the_budget",
        "test_tcp_retries_share_the_budget_too",
    ),
    "tests/agent/test_scheduler.py": ("test_a_check_that_ignores_its_timeout_is_cut_off",),
    "tests/agent/test_secrets.py": (
        "test_credentials_echoed_by_a_target_appear_nowhere",
        "test_the_state_files_of_a_running_agent_are_private",
    ),
    "tests/alerts/test_delivery.py": (
        "test_real_pagerduty_notifier_5xx_for_minutes_429_bursts_and_a_restart",
    ),
    "tests/alerts/test_disk_full.py": (
        "test_a_delivery_that_cannot_be_recorded_is_not_sent_again",
        "test_a_trigger_dropped_past_the_bound_is_forgotten_never_resolved_alone",
        "test_a_trigger_made_on_a_full_disk_is_sent_once_there_is_space_then_its_resolve",
        "test_failure_and_recovery_on_a_full_disk_send_trigger_then_resolve_never_a_lone_resolve",
    ),
    "tests/alerts/test_notifiers.py": ("test_slack_rate_limit_spaces_sends_by_one_second",),
    "tests/alerts/test_reload.py": (
        "test_reload_restarts_alerting_with_state",
        "test_reload_while_the_state_file_cannot_be_written_keeps_alerting_running",
    ),
    "tests/alerts/test_rules.py": ("test_promtool_test_rules",),
    "tests/checks/test_docker.py": ("test_hung_engine_is_unknown_within_the_timeout",),
    "tests/checks/test_docker_fuzz.py": (
        "test_whatever_the_engine_socket_sends_is_json_or_a_docker_error",
        "test_whatever_the_engine_socket_sends_the_docker_check_is_a_result",
    ),
    "tests/checks/test_host.py": ("test_a_hung_statfs_costs_one_thread_not_one_per_run",),
    "tests/checks/test_http.py": ("test_no_message_of_a_hostile_target_shows_internals",),
    "tests/checks/test_http_fuzz.py": (
        "test_whatever_a_target_sends_is_a_result",
        "test_whatever_a_target_sends_over_tls_is_a_result",
        "test_whatever_lb_members_send_is_a_verdict",
    ),
    "tests/checks/test_lb.py": ("test_backends_by_ip_keep_the_public_name_for_tls",),
    "tests/checks/test_pg_backup.py": ("test_a_hanging_command_is_killed_at_the_deadline",),
    "tests/checks/test_postgres.py": (
        "test_a_server_that_is_not_postgres_is_a_result_not_an_exception",
        "test_judge_never_raises_on_any_mix_of_nulls",
    ),
    "tests/exporters/test_mqtt.py": (
        "test_a_broker_restart_loses_nothing",
        "test_a_client_certificate",
    ),
    "tests/exporters/test_oci.py": (
        "test_429_waits_retry_after_500_backs_off_and_a_hung_request_times_out",
        "test_a_backlog_drains_at_once_paced_under_max_requests_per_second_and_a_lone_tail_lingers",
        "test_a_backlog_of_few_streams_goes_many_points_per_stream_up_to_1000_per_request",
        "test_a_result_arriving_as_the_agent_stops_is_flushed_and_the_pump_stops",
        "test_a_running_agent_exports_its_checks_and_reports_the_outbox",
        "test_an_encrypted_key_with_its_passphrase_from_a_file",
        "test_instance_principal_through_the_metadata_service_and_federation",
        "test_nan_is_skipped_and_counted_empty_and_long_label_values_are_made_acceptable",
        "test_pacing_that_cannot_keep_up_says_so_once",
        "test_points_land_with_their_dimensions_units_and_original_timestamps",
        "test_results_older_than_the_window_are_dropped_and_counted_the_rest_delivered_once",
        "test_steady_state_40_checks_at_2s_send_full_requests_at_a_third_of_the_rate",
        "test_ten_minute_outage_and_a_restart_every_point_inside_the_window_exactly_once",
        "test_the_fake_refuses_what_the_sdk_would_send_wrong",
    ),
    "tests/exporters/test_otel.py": (
        "test_503_is_retried_by_the_running_pump",
        "test_agent_exports_results_and_spans",
        "test_sdk_retries_stay_within_the_timeout",
    ),
    "tests/exporters/test_outbox.py": ("test_reads_are_paged_whatever_the_backlog",),
    "tests/exporters/test_outbox_durability.py": ("test_the_run_loop_waits_out_a_saved_retry_after",),
    "tests/grafana/test_dashboards.py": (
        "test_every_panel_has_data_on_the_lab",
        "test_variables",
    ),
    "tests/test_layering.py": (
        "test_a_forbidden_import_breaks_its_contract",
        "test_the_tree_keeps_every_contract",
    ),
    "tests/test_metrics_catalog.py": ("test_emitted_metrics_match_the_catalog",),
    "tests/test_oci_alarms.py": (
        "test_429_through_the_cli_is_waited_out",
        "test_a_change_made_in_the_console_is_put_back_and_foreign_tags_are_kept",
        "test_a_compartment_with_more_alarms_than_a_page",
        "test_a_create_whose_answer_is_lost_is_retried_without_a_second_alarm",
        "test_a_key_the_service_does_not_know_is_one_line_and_exit_1",
        "test_alarms_not_in_the_file_are_reported_and_kept_unless_pruned",
        "test_changing_one_alarm_in_the_file_updates_exactly_that_one",
        "test_dry_run_and_plan_make_no_write_calls",
        "test_first_apply_creates_every_alarm_as_declared_and_a_second_writes_nothing",
        "test_list_shows_the_compartment_and_what_the_file_manages",
        "test_the_fake_refuses_what_the_service_refuses",
        "test_throttling_and_server_errors_are_retried_a_bounded_number_of_times",
    ),
}
SERVICE += tuple(f"{module}::{name}" for module, names in SLOW.items() for name in names)


def _matches(nodeid: str, table: tuple[str, ...]) -> bool:
    test = nodeid.split("[", 1)[0]
    path = test.split("::", 1)[0]
    return any(
        test == entry or path == entry or (entry.endswith("/") and path.startswith(entry)) for entry in table
    )


def lane_of(item: pytest.Item) -> str:
    nodeid = item.nodeid
    fixtures = set(getattr(item, "fixturenames", ()))
    if _matches(nodeid, DEPLOY):
        return "deploy"
    if _matches(nodeid, E2E) or fixtures & E2E_FIXTURES:
        return "e2e"
    if _matches(nodeid, SERVICE) or fixtures & SERVICE_FIXTURES:
        return "service"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(lane_of(item))
    # Tests on the real Docker Engine run last, and the machine's image cache (a debootstrap of
    # ~1 min on a fresh machine) is built meanwhile, in a thread, while the rest of the suite runs.
    docker = [
        item
        for item in items
        if item.nodeid.startswith(DOCKER) or DOCKER_FIXTURE in getattr(item, "fixturenames", ())
    ]
    if docker:
        from lab.docker import missing_binaries, prepare_in_background

        items[:] = [item for item in items if item not in docker] + docker
        if not missing_binaries():
            prepare_in_background()
