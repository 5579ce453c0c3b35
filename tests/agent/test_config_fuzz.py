"""The config loader against random input (issue 12, item 13): whatever the text, `config.parse`
returns an AgentConfig or raises ConfigError whose every line is `file[:line]: path: message`, in
bounded time and memory. Deterministic (derandomized), a few hundred examples, a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
ENV = {"HOST": "127.0.0.1", "PORT": "5432", "EMPTY": ""}
FUZZ = settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,  # timed below, with a bound that does not depend on hypothesis' own
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 64 * 2**20

# Pieces of YAML that reach the loader's corners: anchors, aliases, merges, tags, flow and block
# collections, special floats, variables, quotes, comments, documents.
TOKENS = [
    "agent", "checks", "alerts", "notifiers", "exporters", "outbox", "x-a", "name", "type", "host",
    "port", "url", "interval", "timeout", "tags", "rules", "check", "tag", "retries", "verdict",
    "tcp", "http", "lb", "host", "mqtt", "http://h:0/", "127.0.0.1", "[::1]", "a\"b",
    ":", ": ", "- ", "-", ",", "[", "]", "{", "}", "?", "|", ">", "'", '"', "#", "\n", "\n  ",
    "\n    ", "\t", " ", "&a ", "&b ", "*a", "*b", "<<: ", "<<", "=", "!!python/object/apply:os.system ",
    "!!set ", "!!binary ", "!!int ", "!!timestamp ", "!!str ", "!x ", "!", ".inf", "-.inf", ".nan",
    "1.0e+300", "100000d", "1ms", "true", "null", "~", "0", "65536", "1:30", "0x1F", "2025-03-01",
    "${HOST}", "${1HOST}", "${UNSET}", "${EMPTY:-d}", "$$", "${", "---", "...", "%YAML 1.1",
    "\\u0000", "\x00", "\x1b", "\ufeff", "é", "\U0001f600",
]  # fmt: skip

yaml_text = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=120).map("".join)

LEAVES = ["1", "x", ".inf", "'${HOST}'", "'q'", "[]", "{}", "=", "<<"] * 4 + ["'${1X}'", "!!int z", "!!str 5"]
TAGS = [""] * 20 + ["!!python/tuple ", "!!omap ", "!!seq ", "!!map ", "!x "]


@st.composite
def anchored(draw: st.DrawFn) -> str:
    """Documents of anchors that hold earlier ones (and sometimes themselves), as sequences or
    as mappings with `<<` merges: the shapes of alias bombs, recursive anchors and merge chains."""
    lines = []
    for i in range(draw(st.sampled_from(range(1, 11)))):
        refs = [f"*a{j}" for j in range(i + draw(st.sampled_from([0] * 15 + [1])))]
        item = st.sampled_from(LEAVES + refs)
        items = draw(st.lists(item, min_size=1, max_size=12))
        grow: bool = draw(st.booleans())
        if refs and grow:  # the previous anchor, many times: growth by a factor
            items += [refs[-1]] * draw(st.sampled_from(range(2, 13)))
        tag = draw(st.sampled_from(TAGS))
        as_list: bool = draw(st.booleans())
        if as_list:
            value = f"{tag}[{', '.join(items)}]"
        else:
            merges = [f"<<: {r}" for r in draw(st.lists(st.sampled_from(refs), max_size=2))] if refs else []
            value = tag + "{" + ", ".join(merges + [f"k{k}: {v}" for k, v in enumerate(items)]) + "}"
        lines.append(f"x-{i}: &a{i} {value}")
    use = draw(st.sampled_from(["[t]", "*a0", f"*a{len(lines) - 1}"]))
    lines.append(f"checks:\n  - {{name: a, type: tcp, host: '${{HOST}}', port: 1, tags: {use}}}")
    return "\n".join(lines) + "\n"


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TOKENS),
    st.text(max_size=20),
)
KEYS = st.one_of(st.sampled_from(TOKENS), st.text(max_size=10))
structures = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=60,
)
small = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
# Shaped like a config, so validation (not only the YAML layer) is reached.
CHECK = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "db"]), "type": st.sampled_from(["tcp", "http", "lb", "host"])},
    optional={
        "host": SCALARS, "port": SCALARS, "url": SCALARS, "interval": SCALARS, "timeout": SCALARS,
        "retries": SCALARS, "retry_backoff": SCALARS, "method": SCALARS, "body_matches": small,
        "verdict": small, "backends": small, "tags": small,
    },
)  # fmt: skip
configs = st.fixed_dictionaries(
    {"checks": st.lists(CHECK, max_size=4)},
    optional={
        "agent": st.dictionaries(st.sampled_from(["name", "interval", "timeout", "listen"]), SCALARS),
        "alerts": small,
        "notifiers": small,
        "exporters": small,
    },
)


def parse_once(text: str) -> None:
    try:
        cfg = config.parse(text, "f.yml", env=ENV)
    except ConfigError as exc:
        assert exc.issues, "a ConfigError names at least one problem"
        for issue in exc.issues:
            line = str(issue)
            assert len(line.splitlines()) == 1 and line.startswith("f.yml"), line
    else:
        assert isinstance(cfg, config.AgentConfig)


def assert_bounded(text: str) -> None:
    """Time is measured on a plain run, memory on a second one under tracemalloc (which is slow,
    and would also count the first import of a check's module)."""
    t0 = time.perf_counter()
    parse_once(text)
    elapsed = time.perf_counter() - t0
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f}s for {text[:200]!r}"
    tracemalloc.start()
    try:
        parse_once(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"{peak / 2**20:.0f} MiB for {text[:200]!r}"


@settings(FUZZ, max_examples=300)
@given(yaml_text)
def test_random_yaml_text_never_escapes(text: str) -> None:
    assert_bounded(text)


@FUZZ
@given(anchored())
def test_random_anchors_aliases_and_merges_never_escape(text: str) -> None:
    assert_bounded(text)


@settings(FUZZ, max_examples=200)
@given(structures)
def test_random_structures_never_escape(data: Any) -> None:
    assert_bounded(yaml.safe_dump(data, allow_unicode=True))


@settings(FUZZ, max_examples=250)
@given(configs)
def test_random_configs_never_escape(data: Any) -> None:
    assert_bounded(yaml.safe_dump(data, allow_unicode=True))


# The largest documents the size cap lets through, one of each shape. Each is parsed in a child
# process, whose peak RSS is what an operator would see.
WORST = {
    "many-nodes": '"checks: [" + "1," * (2**21 - 10) + "1]\\n"',  # 4 MiB of nodes: refused at 100 000
    "deep": '"checks: " + "[" * 2_000_000 + "]" * 2_000_000',  # 4 MB of nesting
    "aliases": '"x: &a [" + ",".join(["1"] * 1000) + "]\\ny: [" + ",".join(["*a"] * 99) + "]\\n"',
    "mapping": '"x:\\n" + "".join(f"  k{i}: {i}\\n" for i in range(99_000))',  # valid, just under
    "comment": '"# " + "c" * (4 * 2**20 - 100)',
    "long-string": '"x: \'" + "y" * (4 * 2**20 - 100) + "\'\\n"',
}
CHILD = """
import resource, sys, time
from agent import config
text = eval(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    config.parse(text, "f.yml", env={})
except config.ConfigError as exc:
    assert all(len(str(i).splitlines()) == 1 for i in exc.issues)
elapsed = time.perf_counter() - t0
print(elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("name", list(WORST))
def test_the_worst_documents_within_the_size_cap_are_bounded(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, WORST[name]], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    elapsed, grown = map(float, done.stdout.split())
    assert elapsed < 3.0, f"{name}: {elapsed:.2f}s"  # about 1.5 s here: 100 000 nodes composed
    assert grown < 100 * 2**20, f"{name}: {grown / 2**20:.0f} MiB"
