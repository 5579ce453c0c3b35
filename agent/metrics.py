"""The agent's own metrics: counters, gauges and histograms (with labels), collectors read at
scrape time, and their rendering in Prometheus' text exposition format (version 0.0.4).

    registry = MetricRegistry()
    runs = MetricCounter("mamori_check_runs_total", "Runs ...", ("check", "status"), registry)
    runs.labels(check="api", status="ok").inc()
    registry.register(collector)        # anything with `collect() -> Iterable[MetricFamily]`
    text = registry.render()            # what /metrics serves before the per-check results
    snap = registry.snapshot()          # on the loop: a frozen copy of every value ...
    text = render_snapshot(snap)        # ... rendered anywhere, e.g. in a worker thread
    parts = render_snapshot_parts(snap) # the same as bytes to join (/metrics does)

Why not prometheus_client: the agent needs a small part of it (three instrument types, no
`_created` series, text format only), the part it does not need costs about 1 MB of the default
config's 50 MB RSS budget (its HTTP servers, urllib, wsgiref at import), and rendering is ours to
make fast and bounded anyway (the per-check results are rendered by exporters/prometheus.py).
The output is the same text prometheus_client renders for the same instruments, byte for byte
(`tests/agent/test_metrics.py` renders both and compares; prometheus_client stays a test
dependency as the reference parser).

Everything here is called from the event loop thread (no locks), except `render_snapshot()`: a
snapshot is immutable, so a scrape renders it in a worker thread and the loop only copies values
(each instrument keeps its children's label text rendered once, when the child is made). A family
with a sample group per check (the agent's per-check counters, agent/telemetry.py) is a
`LinesFamily` instead: each group keeps its own lines rendered as bytes whenever a value changes,
so a snapshot holds references to those bytes and a scrape only joins them.
Names, help and label names are the catalog's (agent/catalog.py); a name registered twice is a
bug and raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

MetricKind = Literal["counter", "gauge", "histogram"]


class MetricSample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class MetricFamily:
    """One metric and its samples, as a collector yields it. A counter's name is given with or
    without `_total` and is rendered with it."""

    def __init__(self, name: str, help_text: str, kind: MetricKind, labels: Sequence[str] = ()) -> None:
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.help = help_text
        self.kind: MetricKind = kind
        self.labels = tuple(labels)
        self.samples: list[MetricSample] = []

    @property
    def exposed_name(self) -> str:
        """The name on the HELP and TYPE lines (a counter's with `_total`)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def add_metric(self, values: Sequence[str], value: float) -> None:
        """One sample with these label values (in the order of `labels`)."""
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: expected {len(self.labels)} label values, got {len(values)}")
        labels = dict(zip(self.labels, values, strict=True))
        self.samples.append(MetricSample(self.exposed_name, labels, float(value)))


class GaugeFamily(MetricFamily):
    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), value: float | None = None
    ) -> None:
        super().__init__(name, help_text, "gauge", labels)
        if value is not None:
            self.add_metric((), value)


class CounterFamily(MetricFamily):
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, "counter", labels)


class FrozenFamily(NamedTuple):
    """An instrument's values at one moment: its HELP/TYPE text, then each sample's rendered
    name and labels (`name{a="b"} `) with its value."""

    header: str
    prefixes: list[str]
    values: list[float]


class FrozenLines(NamedTuple):
    """A `LinesFamily` at one moment: its HELP/TYPE text, then its sample lines as their owners
    keep them rendered (each chunk one or more whole lines)."""

    header: bytes
    chunks: list[bytes]


Frozen = MetricFamily | FrozenFamily | FrozenLines


class Collector(Protocol):
    def collect(self) -> Iterable[MetricFamily]: ...


@runtime_checkable
class Freezable(Protocol):
    """A collector that can freeze its values for `render_snapshot()` cheaply (an instrument, a
    `LinesFamily`); any other collector is collected at snapshot time."""

    def collect(self) -> Iterable[MetricFamily]: ...

    def freeze(self) -> Frozen: ...


class MetricRegistry:
    """The agent's metrics: instruments and collectors, in the order registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        name = getattr(collector, "name", None)
        if isinstance(name, str):
            if name in self._names:
                raise ValueError(f"metric {name!r} registered twice")
            self._names.add(name)
        self._collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        """Safe to call for a collector that is not registered."""
        if collector in self._collectors:
            self._collectors.remove(collector)
            self._names.discard(getattr(collector, "name", ""))

    def collect(self) -> Iterator[MetricFamily]:
        for collector in list(self._collectors):
            yield from collector.collect()

    def snapshot(self) -> list[Frozen]:
        """Every metric's current values, frozen: cheap (values are copied, text is not made)."""
        out: list[Frozen] = []
        for collector in list(self._collectors):
            if isinstance(collector, Freezable):
                out.append(collector.freeze())
            else:
                out.extend(collector.collect())
        return out

    def render(self) -> str:
        return render_snapshot(self.snapshot())

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample, or None (for tests and the CLI)."""
        wanted = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return None


# --- instruments ---------------------------------------------------------------------------


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # not cumulative; the last bound is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)
G = TypeVar("G")


class _Instrument(Generic[C]):
    """A metric with children per label values; unlabelled, it is its own single child."""

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], registry: MetricRegistry | None
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], C] = {}
        self._prefixes: dict[tuple[str, ...], str] = {}  # in the order of _children
        if not self.label_names:
            self._add_child(())
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def collect(self) -> Iterator[MetricFamily]:
        raise NotImplementedError

    def _sample_name(self) -> str:
        return self.name

    def _header(self, kind: MetricKind) -> str:
        name = f"{self.name}_total" if kind == "counter" else self.name
        return f"# HELP {name} {escape_help(self.help)}\n# TYPE {name} {kind}\n"

    def _add_child(self, key: tuple[str, ...]) -> C:
        child = self._children[key] = self._new_child()
        self._prefixes[key] = sample_prefix(self._sample_name(), self._labels(key))
        return child

    def freeze(self) -> Frozen:
        """The values now, for `render_snapshot()` (an instrument without a fast path collects)."""
        return next(iter(self.collect()))

    def labels(self, *values: str, **by_name: str) -> C:
        """The child for these label values (created at 0 on first use)."""
        if by_name:
            if values or set(by_name) != set(self.label_names):
                raise ValueError(f"{self.name}: expected labels {self.label_names}, got {tuple(by_name)}")
            values = tuple(by_name[n] for n in self.label_names)
        if len(values) != len(self.label_names) or not self.label_names:
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._add_child(key)
        return child

    def remove(self, *values: str) -> None:
        """Forget one child. KeyError if there is none."""
        key = tuple(str(v) for v in values)
        del self._children[key]
        del self._prefixes[key]

    def _only(self) -> C:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {self.label_names}: use .labels(...)")
        return self._children[()]

    def _labels(self, key: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(self.label_names, key, strict=True))


class MetricCounter(_Instrument[CounterChild]):
    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), registry: MetricRegistry | None = None
    ) -> None:
        super().__init__(name.removesuffix("_total"), help_text, labels, registry)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _sample_name(self) -> str:
        return f"{self.name}_total"

    def freeze(self) -> Frozen:
        values = [c.value for c in self._children.values()]
        return FrozenFamily(self._header("counter"), list(self._prefixes.values()), values)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def collect(self) -> Iterator[MetricFamily]:
        family = CounterFamily(self.name, self.help, self.label_names)
        sample = family.exposed_name
        family.samples = [MetricSample(sample, self._labels(k), c.value) for k, c in self._children.items()]
        yield family


class MetricGauge(_Instrument[GaugeChild]):
    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), registry: MetricRegistry | None = None
    ) -> None:
        super().__init__(name, help_text, labels, registry)

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def freeze(self) -> Frozen:
        values = [c.value for c in self._children.values()]
        return FrozenFamily(self._header("gauge"), list(self._prefixes.values()), values)

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    def collect(self) -> Iterator[MetricFamily]:
        family = GaugeFamily(self.name, self.help, self.label_names)
        family.samples = [
            MetricSample(self.name, self._labels(k), c.value) for k, c in self._children.items()
        ]
        yield family


class MetricHistogram(_Instrument[HistogramChild]):
    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
        registry: MetricRegistry | None = None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        super().__init__(name, help_text, labels, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def collect(self) -> Iterator[MetricFamily]:
        family = MetricFamily(self.name, self.help, "histogram", self.label_names)
        for key, child in self._children.items():
            labels = self._labels(key)
            cumulative = 0
            for bound, count in zip(child.bounds, child.counts, strict=True):
                cumulative += count
                le = {**labels, "le": go_float(bound)}
                family.samples.append(MetricSample(f"{self.name}_bucket", le, float(cumulative)))
            family.samples.append(MetricSample(f"{self.name}_count", labels, float(cumulative)))
            family.samples.append(MetricSample(f"{self.name}_sum", labels, child.sum))
        yield family


class LinesFamily(Generic[G]):
    """A family whose samples come in groups (one per check, say), each group an object that keeps
    its own lines rendered as bytes (`lines(group)`, one or more whole lines) and lists its samples
    on demand (`samples(group)`, for `collect()`: tests and the CLI). Groups are rendered in the
    order of `groups`, a mapping its owner adds to and removes from; `freeze()` (on the loop) takes
    references to the groups' bytes, never a copy of values that a later change could alter."""

    def __init__(
        self,
        name: str,
        help_text: str,
        kind: MetricKind,
        labels: Sequence[str],
        groups: Mapping[str, G],
        lines: Callable[[G], bytes],
        samples: Callable[[G], Iterable[tuple[Sequence[str], float]]],
        registry: MetricRegistry | None = None,
    ) -> None:
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.help = help_text
        self.kind: MetricKind = kind
        self.label_names = tuple(labels)
        exposed = f"{self.name}_total" if kind == "counter" else self.name
        self._header = f"# HELP {exposed} {escape_help(help_text)}\n# TYPE {exposed} {kind}\n".encode()
        self._groups = groups
        self._lines = lines
        self._samples = samples
        if registry is not None:
            registry.register(self)

    def freeze(self) -> Frozen:
        return FrozenLines(self._header, list(map(self._lines, self._groups.values())))

    def collect(self) -> Iterator[MetricFamily]:
        family = MetricFamily(self.name, self.help, self.kind, self.label_names)
        for group in self._groups.values():
            for values, value in self._samples(group):
                family.add_metric(values, value)
        yield family


# --- the text format -------------------------------------------------------------------------


def go_float(value: float) -> str:
    """A float as Prometheus (and prometheus_client) writes it: `1.0`, `+Inf`, `1e+06`."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    # Go switches to exponents sooner than Python (prometheus_client's floatToGoString).
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def sample_prefix(name: str, labels: dict[str, str]) -> str:
    """A sample's line up to its value: `name{a="b",c="d"} ` (labels sorted by name, as
    prometheus_client writes them)."""
    if not labels:
        return f"{name} "
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} "


def render_snapshot(snapshot: Iterable[Frozen]) -> str:
    """The text of a `MetricRegistry.snapshot()`; safe in any thread."""
    return b"".join(render_snapshot_parts(snapshot)).decode()


def render_snapshot_parts(snapshot: Iterable[Frozen]) -> list[bytes]:
    """The text of a `MetricRegistry.snapshot()` as UTF-8 pieces to join, in order; safe in any
    thread. A `FrozenLines` family's bytes are passed on as they are, not copied."""
    parts: list[bytes] = []
    text: list[str] = []
    numbers: dict[float, str] = {}  # counters repeat small values: format each once
    for item in snapshot:
        if isinstance(item, FrozenLines):
            if text:
                parts.append("".join(text).encode())
                text.clear()
            parts.append(item.header)
            parts.extend(item.chunks)
        else:
            _render_text(item, text, numbers)
    if text:
        parts.append("".join(text).encode())
    return parts


def _render_text(item: MetricFamily | FrozenFamily, parts: list[str], numbers: dict[float, str]) -> None:
    if isinstance(item, FrozenFamily):
        parts.append(item.header)
        for prefix, value in zip(item.prefixes, item.values, strict=True):
            if value == 0:  # most of them; -0.0 == 0.0 but is written "-0.0"
                text = "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
            else:
                cached = numbers.get(value)
                if cached is None:
                    cached = numbers[value] = go_float(value)
                text = cached
            parts.append(f"{prefix}{text}\n")
    else:
        parts.append(render_family(item))


def render_family(family: MetricFamily) -> str:
    name = family.exposed_name
    lines = [f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {family.kind}\n"]
    for sample in family.samples:
        if sample.labels:
            # Sorted by name, as prometheus_client writes them.
            pairs = sorted(sample.labels.items())
            labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
            lines.append(f"{sample.name}{{{labels}}} {go_float(sample.value)}\n")
        else:
            lines.append(f"{sample.name} {go_float(sample.value)}\n")
    return "".join(lines)
