"""The benchmarks, the examples and the tests import one another as packages from the repository root (pytest's
`pythonpath`; `python -m benchmarks.NAME` for a benchmark), never by editing `sys.path`; no benchmark imports an
example, an example imports only peft_grow and libraries, no benchmark reads a data folder outside the
repository unless it is given one, and no function in peft_grow/, benchmarks/ or examples/ is over 60 lines."""

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peft_grow import evaluation as ev

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", [f"benchmarks.{b}" for b in BENCHMARKS] + [f"examples.{e}" for e in EXAMPLES])
def test_every_benchmark_and_example_imports_by_its_package_name(name):
    importlib.import_module(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["exactness", "layer_selection"])  # they import peft_grow.testing, stories
def test_a_benchmark_starts_as_a_module_from_the_repository_root(name):
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def test_no_script_edits_sys_path():
    """The one exception: peft_conformance.py writes a conftest for PEFT's own test files, copied to a temporary
    folder outside the repository, that loads the benchmark's plugin hooks from benchmarks/."""
    edit = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=")
    found = [
        str(path.relative_to(ROOT))
        for folder in ("benchmarks", "examples", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if path != Path(__file__).resolve() and edit.search(path.read_text(encoding="utf-8"))
    ]
    assert found == ["benchmarks/peft_conformance.py"]


def test_retention_takes_its_data_folder_from_an_argument_or_the_environment(monkeypatch, capsys):
    from benchmarks import retention

    monkeypatch.delenv(ev.DATA_ENV, raising=False)
    with pytest.raises(SystemExit):
        retention.parse_args([])
    assert f"pass --data-dir or set ${ev.DATA_ENV}" in capsys.readouterr().err
    assert retention.parse_args(["--data-dir", "tasks"]).data_dir == "tasks"
    monkeypatch.setenv(ev.DATA_ENV, "elsewhere")
    assert retention.parse_args([]).data_dir == "elsewhere"


def imported_modules(path: Path) -> set[str]:
    """The top-level names a file imports (relative imports count as their own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(path.parent.name if node.level else node.module.split(".")[0])
    return names


def test_no_benchmark_imports_an_example_and_examples_import_only_the_package_and_libraries():
    """Examples run as scripts from a fresh checkout (`python examples/demo.py`), so they cannot lean on the
    repository's other folders; what a benchmark shares with the demo lives in benchmarks/stories.py."""
    found = {
        str(path.relative_to(ROOT)): sorted(names)
        for folder, banned in (("benchmarks", {"examples"}), ("examples", {"benchmarks", "examples", "tests"}))
        for path in (ROOT / folder).glob("*.py")
        if (names := imported_modules(path) & banned)
    }
    assert found == {}


LONGEST_FUNCTION = 60  # lines, decorators aside


def test_no_function_is_longer_than_a_screen():
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for folder in ("peft_grow", "benchmarks", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert not found, f"functions over {LONGEST_FUNCTION} lines: {found}"
