"""The durable outbox (agent/outbox.py) and the pump (exporters/base.py), with a recording exporter:
cursors per sink, the size cap with counted drops, restarts, replay order and timestamps, paging,
retries with backoff and Retry-After, partial pushes, and the config sections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from agent import config
from agent.backoff import backoff
from agent.delivery.outcome import PushResult
from agent.delivery.pump import Pump
from agent.errors import ConfigError, StartupError
from agent.model import CheckResult, Reason, Sample, Status, result_from_json
from agent.outbox import Outbox, Record, decode, encode
from exporters.base import ExportCollector, OutboxSink

T0 = 1_700_000_000.0


def result(i: int, check: str = "web") -> CheckResult:
    return CheckResult(
        check,
        "http",
        "https://shop.example/",
        Status.CRITICAL if i % 3 == 0 else Status.OK,
        T0 + 15 * i,
        0.012 + i / 1000,
        (
            Sample("probe_http_status_code", 200.0),
            Sample("probe_http_duration_seconds", 0.004, (("phase", "tls"),)),
        ),
        message=f"run {i}",
        reason=Reason.TIMEOUT if i % 3 == 0 else Reason.OK,
        attempts=1 + i % 2,
    )


class Recorder:
    """A PushExporter double: `script(records, call)` decides each answer (default: take all)."""

    def __init__(
        self,
        name: str = "rec",
        batch: int = 100,
        script: Callable[[Sequence[Record], int], PushResult] | None = None,
    ) -> None:
        self.name = name
        self.batch = batch
        self.script = script
        self.calls = 0
        self.received: list[CheckResult] = []
        self.started = 0
        self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def push(self, records: Sequence[Record]) -> PushResult:
        self.calls += 1
        answer = self.script(records, self.calls) if self.script else PushResult(len(records))
        self.received += [r.result for r in records[: answer.handled]]
        return answer

    async def aclose(self) -> None:
        self.closed += 1


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def drain(pump: Pump[Record], clock: Clock, limit: int = 10_000) -> list[float]:
    """Run the pump on the fake clock until nothing is left; returns the waits it asked for."""
    waits: list[float] = []
    for _ in range(limit):
        delay = await pump.step()
        if delay is None:
            return waits
        if delay:
            waits.append(delay)
            clock.t += delay
    raise AssertionError("never drained")


def test_result_json_round_trip() -> None:
    r = result(3)
    assert result_from_json(json.loads(json.dumps(r.to_json()))) == r


async def test_each_sink_has_its_own_cursor_and_rows_go_when_all_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a", "b"])
    box.append([result(i) for i in range(10)])
    fast, slow = Recorder("a"), Recorder("b", script=lambda recs, n: PushResult(0, "HTTP 503"))
    clock = Clock()
    await drain(Pump(fast, box, clock, rand=lambda: 0.0), clock)
    assert fast.received == [result(i) for i in range(10)]  # in order, equal, original timestamps
    assert (box.depth("a"), box.depth("b")) == (0, 10)
    assert box.bytes > 0  # b still needs them
    await Pump(slow, box, clock).step()
    slow.script = None
    await drain(Pump(slow, box, clock), clock)
    assert slow.received == fast.received
    assert box.bytes == 0  # both acked: deleted
    box.close()


async def test_restart_resumes_after_the_last_ack_and_a_new_sink_starts_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, 10**6, ["a"])
    box.append([result(i) for i in range(5)])
    first = Recorder(
        "a", batch=2, script=lambda recs, n: PushResult(len(recs)) if n == 1 else PushResult(0, "down")
    )
    clock = Clock()
    pump = Pump(first, box, clock, rand=lambda: 0.0)
    assert await pump.step() == 0.0
    assert await pump.step() == 0.5
    box.close()  # the agent stops mid-outage

    box = Outbox(path, 10**6, ["a", "new"])
    box.append([result(5)])
    assert box.depth("a") == 4 and box.depth("new") == 1
    again = Recorder("a")
    await drain(Pump(again, box, clock), clock)
    assert first.received + again.received == [result(i) for i in range(6)]  # exactly once, in order
    box.close()
    box = Outbox(path, 10**6, ["new"])  # "a" removed from the config: it holds nothing back
    assert box.depth("new") == 1 and box.bytes > 0
    await drain(Pump(Recorder("new"), box, clock), clock)
    assert box.bytes == 0
    box.close()


async def test_the_size_cap_drops_oldest_and_counts_per_sink(tmp_path: Path) -> None:
    one = len(encode(result(1)))
    box = Outbox(tmp_path / "o.db", one * 20, ["down", "up"])
    up = Recorder("up")
    clock = Clock()
    up_pump = Pump(up, box, clock)
    for i in range(100):
        box.append([result(i)])
        if i % 10 == 9:
            await drain(up_pump, clock)  # "up" keeps up; "down" never sends
    assert box.bytes <= one * 20 + one
    assert len(up.received) == 100 and box.dropped[("up", "capacity")] == 0
    kept = box.depth("down")
    assert 15 <= kept <= 21
    assert box.dropped[("down", "capacity")] == 100 - kept
    down = Recorder("down")
    await drain(Pump(down, box, clock), clock)
    assert down.received == [result(i) for i in range(100 - kept, 100)]  # the newest survive, in order
    box.close()


async def test_reads_are_paged_whatever_the_backlog(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**8, ["a"])
    box.append([result(i) for i in range(2000)])
    sizes: list[int] = []

    def script(recs: Sequence[Record], n: int) -> PushResult:
        sizes.append(len(recs))
        return PushResult(len(recs))

    clock = Clock()
    await drain(Pump(Recorder("a", batch=300, script=script), box, clock), clock)
    assert max(sizes) == 300 and sum(sizes) == 2000
    box.close()


async def test_failures_back_off_and_honour_retry_after_and_prefixes_continue_at_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a"])
    box.append([result(i) for i in range(6)])
    answers = iter(
        [
            PushResult(0, "HTTP 503"),
            PushResult(0, "HTTP 503"),
            PushResult(0, "HTTP 429", retry_after=7.0),
            PushResult(2),  # a request's limit: two taken, go on at once
            PushResult(1, "HTTP 500"),  # one taken, then a failure: back off (streak restarted)
            PushResult(3, dropped={"expired": 1}),
        ]
    )
    rec = Recorder("a", script=lambda recs, n: next(answers))
    clock = Clock()
    pump = Pump(rec, box, clock, rand=lambda: 0.0)
    waits = await drain(pump, clock)
    assert waits == [0.5, 1.0, 7.0, 0.5]  # the partial success ended the streak: 0.5 s again
    assert box.depth("a") == 0
    assert pump.sent == 5 and pump.failures == 4
    assert box.dropped[("a", "expired")] == 1
    assert [backoff(n, lambda: 1.0) for n in (1, 2, 9, 10, 50)] == [1.0, 2.0, 256.0, 300.0, 300.0]
    box.close()


async def test_an_exporter_that_raises_is_retried_not_fatal(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a"])
    box.append([result(1)])

    def script(recs: Sequence[Record], n: int) -> PushResult:
        if n == 1:
            raise RuntimeError("bug")
        return PushResult(len(recs))

    clock = Clock()
    rec = Recorder("a", script=script)
    assert await drain(Pump(rec, box, clock, rand=lambda: 0.0), clock) == [0.5]
    assert rec.received == [result(1)]
    box.close()


async def test_outbox_sink_wakes_pumps_and_the_collector_reports(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a"])
    rec = Recorder("a")
    pump = Pump(rec, box)
    sink = OutboxSink(box, [pump])
    pump.start()
    try:
        for i in range(3):
            await sink.consume(result(i))
        for _ in range(200):
            if len(rec.received) == 3:
                break
            await asyncio.sleep(0.01)
        assert rec.received == [result(i) for i in range(3)] and rec.started == 1
        families = {m.name: m for m in ExportCollector(box, [pump]).collect()}
        assert families["mamori_export_sent"].samples[0].value == 3
        assert families["mamori_outbox_depth"].samples[0].value == 0
        assert {s.labels["reason"] for s in families["mamori_outbox_dropped"].samples} == {
            "capacity",
            "disk_full",
            "write_error",
        }
    finally:
        await sink.aclose()
        await sink.aclose()
    assert rec.closed == 1


def test_an_unusable_outbox_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(
        StartupError,
        match=r"^cannot create the directory of the outbox .*/file/o.db: .*/file or a parent is not a",
    ):
        Outbox(tmp_path / "file" / "o.db", 10**6, ["a"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("outbox: {max_size: lots}\n", "t.yml:1: outbox.max_size: invalid size 'lots'"),
        ("outbox: {pth: /x}\n", "t.yml:1: outbox.pth: unknown key"),
        ("exporters: {a: 1}\n", "t.yml:1: exporters: expected a list of exporters"),
        (
            "exporters:\n  - {name: x, type: kafka}\n",
            "t.yml:2: exporters[0].type: unknown exporter type 'kafka'",
        ),
        ("exporters:\n  - {name: x}\n", "t.yml:2: exporters[0].type: required key is missing"),
        (
            "checks: [{name: status, type: tcp, host: 127.0.0.1, port: 1}]\n"
            "exporters:\n  - {name: bus, type: mqtt, host: 127.0.0.1}\n",
            "t.yml:3: exporters[0]: check 'status' would publish to a reserved topic",
        ),
        (
            "agent: {name: a/b}\nexporters:\n  - {name: bus, type: mqtt, host: 127.0.0.1}\n",
            "t.yml:3: exporters[0]: agent.name",
        ),
    ],
)
def test_config_sections_are_validated_at_load(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(text, "t.yml", env={})
    assert str(err.value).startswith(message), str(err.value)


async def test_a_reconnected_exporter_ends_the_retry_wait(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6, ["a"])
    box.append([result(1)])
    up = False
    rec = Recorder("a", script=lambda recs, n: PushResult(len(recs)) if up else PushResult(0, "down"))
    rec.reconnected = asyncio.Event()  # type: ignore[attr-defined]
    pump = Pump(rec, box, rand=lambda: 1.0)
    pump.streak = 20  # a long outage: the next wait would be 5 minutes
    pump.start()
    try:
        for _ in range(100):
            if rec.calls:
                break
            await asyncio.sleep(0.01)
        assert rec.calls == 1 and rec.received == []
        up = True
        rec.reconnected.set()  # type: ignore[attr-defined]
        for _ in range(200):
            if rec.received:
                break
            await asyncio.sleep(0.01)
        assert rec.received == [result(1)]
    finally:
        await pump.stop()
        box.close()


def test_rows_are_the_results_one_encoding_and_rows_of_the_previous_encoding_still_decode() -> None:
    tagged = result(1).with_(tags=("edge",))
    assert json.loads(encode(tagged)) == tagged.to_json()  # the encoding of /api/v1/results
    assert decode(encode(tagged)) == tagged
    # A row an older agent wrote (a list, no tags) in a file this agent opens.
    old = (
        '["web","http","https://shop.example/",0,1700000015.0,0.013,'
        '[["probe_http_status_code",200.0,[]]],"run 1","ok",2]'
    )
    assert decode(old) == result(1).with_(samples=result(1).samples[:1], duration=0.013, tags=())


def test_an_outbox_file_with_rows_of_the_previous_encoding_is_read_after_an_upgrade(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "o.db"
    box = Outbox(path, 10**6, ["a"])
    box.append([result(1), result(2)])
    box.close()
    db = sqlite3.connect(path)
    old = '["web","http","https://shop.example/",0,1700000015.0,0.013,[],"run 1","ok",2]'
    db.execute("UPDATE results SET payload = ? WHERE seq = (SELECT MIN(seq) FROM results)", (old,))
    db.commit()
    db.close()
    box = Outbox(path, 10**6, ["a"])
    assert [r.result for r in box.read("a", 10)] == [
        result(1).with_(samples=(), duration=0.013),
        result(2),
    ]
    box.close()
