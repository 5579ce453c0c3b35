"""bench.capacity's pure helpers: the access-log reader, interpolation, histogram deltas and the
Prometheus API answers."""

from __future__ import annotations

import json
import math

import pytest

from bench.capacity import (
    TARGETS,
    buckets_delta,
    figures,
    interpolate,
    judge,
    parse_matrix,
    parse_vector,
    probed_checks,
)


def test_probed_checks_reads_the_check_number_of_each_probe() -> None:
    lines = [
        '127.0.0.1 "GET /?c=0 HTTP/1.1" 200 73 "mamori/0.1"',
        '127.0.0.1 "GET /?c=17 HTTP/1.1" 200 73 "mamori/0.1"',
        '127.0.0.1 "GET /?c=17 HTTP/1.1" 200 73 "mamori/0.1"',
        '127.0.0.1 "GET /health HTTP/1.1" 200 3 "python-urllib"',
        '127.0.0.1 "GET /?c=x HTTP/1.1" 200 73 "mamori/0.1"',
    ]
    assert probed_checks(lines) == {0, 17}


def test_interpolate_is_linear_between_samples_and_clamped_outside() -> None:
    samples = [(10.0, 1.0), (12.0, 3.0), (14.0, 3.0)]
    assert interpolate(samples, 11.0) == pytest.approx(2.0)
    assert interpolate(samples, 13.5) == pytest.approx(3.0)
    assert interpolate(samples, 5.0) == 1.0
    assert interpolate(samples, 99.0) == 3.0
    with pytest.raises(ValueError):
        interpolate([], 1.0)


def test_buckets_delta_subtracts_bucket_by_bucket() -> None:
    before = {0.001: 5.0, 0.1: 8.0, math.inf: 9.0}
    after = {0.001: 15.0, 0.1: 28.0, math.inf: 30.0}
    assert buckets_delta(before, after) == {0.001: 10.0, 0.1: 20.0, math.inf: 21.0}
    assert buckets_delta({}, after) == after


def test_parse_vector_and_matrix() -> None:
    vector = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"status": "ok"}, "value": [1765000000.5, "1234"]}],
        },
    }
    assert parse_vector(json.dumps(vector)) == [({"status": "ok"}, 1234.0)]
    matrix = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1.5, "0.2"], [16.5, "0.3"]]}]},
    }
    assert parse_matrix(json.dumps(matrix)) == [(1.5, 0.2), (16.5, 0.3)]
    empty = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    assert parse_matrix(json.dumps(empty)) == []
    with pytest.raises(RuntimeError, match="bad_data"):
        parse_vector(json.dumps({"status": "error", "error": "bad_data"}))


def test_judge_applies_the_issue_targets() -> None:
    size = {
        "runs_ratio": 0.995,
        "skipped_runs": 0.0,
        "ratio_agent_to_blackbox": 0.8,
        "lateness_ms": {"p99": 750.0},
        "scrape": {"max_ms": 120.0, "failed": 0, "direct_get_gzip": {"wall_ms": 160.0}},
        "agent": {"rss_mb": 243.0},
        "startup": {"ready_s": 3.0},
    }
    assert judge(size) == {
        "runs": "PASS",
        "cpu": "MISS",
        "lateness": "MISS",
        "scrape": "PASS",
        "scrape_agent_part": "MISS",
        "rss": "MISS",
        "ready": "PASS",
    }
    size["scrape"] = {"max_ms": 900.0, "failed": 0, "direct_get_gzip": {"wall_ms": 90.0}}
    assert judge(size)["scrape"] == "MISS" and judge(size)["scrape_agent_part"] == "PASS"
    size["scrape"] = {"max_ms": 900.0, "failed": 1, "direct_get_gzip": {"wall_ms": 90.0}}
    assert judge(size)["scrape_agent_part"] == "MISS"  # a failed scrape fails both


def test_figures_render_one_column_per_size_and_the_verdicts() -> None:
    size = {
        "checks": 10000,
        "runs_per_s": 662.0,
        "runs_per_s_expected": 666.67,
        "runs_ratio": 0.993,
        "skipped_runs": 0.0,
        "lateness_ms": {"p50": 2.0, "p99": None},
        "agent": {"cpu_ms_per_probe": 0.8, "cpu_cores": 0.53, "rss_mb": 243.0, "peak_rss_mb": 250.0},
        "blackbox_exporter": {"cpu_ms_per_probe": None, "probes_per_s": 0.0},
        "ratio_agent_to_blackbox": None,
        "scrape": {
            "p50_ms": 1300.0,
            "max_ms": 1400.0,
            "failed": 0,
            "samples": 260044,
            "direct_get": {"bytes": 20_400_000},
            "direct_get_gzip": {"bytes": 1_100_000, "content_encoding": "gzip", "wall_ms": 240.0},
            "prometheus_floor": {"durations_ms": [900.0, 1000.0, 1100.0], "p50_ms": 1000.0, "failed": 0},
            "agent_part_p50_ms": 300.0,
        },
        "startup": {"ready_s": 4.0, "first_complete_results_s": 16.0},
    }
    size["verdicts"] = judge(size)
    result = {
        "date": "2026-12-07T07:00:00+00:00",
        "machine": {"nproc": 2, "cpu_model": "x", "python": "3.11.7"},
        "parameters": {
            "interval_s": 15.0,
            "check_timeout_s": 5.0,
            "prometheus": "prometheus, version 2.42.0",
            "scrape_interval_s": 15.0,
            "seconds": 45.0,
            "blackbox_exporter": "blackbox_exporter, version 0.23.0",
            "anchor": "after",
            "anchor_seconds_alone": 30.0,
        },
        "targets": TARGETS,
        "sizes": [size],
    }
    text = "\n".join(figures(result))
    assert "| figure | 10 000 checks | target (at 10000) | |" in text
    assert "| lateness p50 / p99 ms | 2 / **n/a** | p99 ≤ 100 ms | **MISS** |" in text
    assert "| RSS MB (peak) | **243** (250) | ≤ 120 | **MISS** |" in text
    assert "| Prometheus's own part: the same page from nginx, p50 ms | 1000 |  |  |" in text
    part = "| the agent's part: slowest of 3 direct gzip GETs while it probes, ms | **240** |"
    part += " ≤ 150 ms | **MISS** |"
    assert part in text
    assert "| scrape p50 less Prometheus's own, ms | 300 |  |  |" in text
