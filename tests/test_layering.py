"""The import contracts of pyproject.toml ([tool.importlinter]) hold on this tree, and really
fail when broken: each case adds one forbidden import to a copy of the tree, so a contract that
stopped checking (a renamed module, a wrong option) fails here instead of passing silently."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

KERNEL = "the kernel imports no plug-in and no runtime module"
INDEPENDENT = "checks, exporters and alerts never import each other"
PLUGINS = "checks, exporters and alerts import no runtime module"
NO_LAB = "nothing shipped imports the lab, the tests or the benchmarks"


def lint_copy(tmp_path: Path, module: str = "", line: str = "") -> subprocess.CompletedProcess[str]:
    """lint-imports on a copy of the shipped packages, with `line` appended to `module`'s file."""
    for package in ("agent", "checks", "exporters", "alerts"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    if module:
        path = tmp_path / (module.replace(".", "/") + ".py")
        path.write_text(path.read_text() + f"\n{line}\n")
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extra (import-linter)"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    done = lint_copy(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (KERNEL, INDEPENDENT, PLUGINS, NO_LAB):
        assert f"{name} KEPT" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("agent.model", "import checks.base", KERNEL),
        ("agent.errors", "from agent import runtime", KERNEL),
        ("checks.tcp", "import alerts.model", INDEPENDENT),
        ("alerts.engine", "import exporters.samples", INDEPENDENT),
        ("exporters.samples", "import agent.scheduler", PLUGINS),
        ("alerts.model", "import lab", NO_LAB),
        ("agent.text", "import tests.conftest", NO_LAB),
        ("checks.net", "import bench.common", NO_LAB),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    done = lint_copy(tmp_path, module, line)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{broken} BROKEN" in done.stdout
    assert re.search(rf"^- +{re.escape(module)} -> ", done.stdout, re.MULTILINE), done.stdout
