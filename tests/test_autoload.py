"""The start-up hook: grown adapters load in processes that never `import peft_grow` (docs/sharing.md).

`peft_grow_autoload.pth` (written into wheels and editable installs by setup.py) runs
`_peft_grow_autoload.install()` at interpreter start; the first `import peft` then imports peft_grow, which
registers GROW. Every check but the packaging one runs in a fresh interpreter (`sys.executable`), offline, on a
grown adapter saved over the real stories260K model in examples/data.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import _peft_grow_autoload as autoload
from peft_grow import GrowConfig
from peft_grow import evaluation as ev

pytestmark = pytest.mark.slow  # fresh interpreters and subprocesses: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "examples" / "data" / "stories260K"
DATA = ROOT / "tests" / "data" / "tasks"
PTH_NAME = "peft_grow_autoload.pth"
IDS = [[1, 403, 407, 261, 378, 4, 259, 308, 278, 95]]  # any ids below the vocabulary size (512)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (autoload.ENV_OFF, "PYTHONPATH")}
    return env | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"} | extra


def run_python(code: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh interpreter of this environment, from a folder outside the repository."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(**env))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def hook_installed():
    """Every test here needs this environment's install to carry the hook (make install / pip install -e .)."""
    found = [Path(folder) / PTH_NAME for folder in site.getsitepackages() if (Path(folder) / PTH_NAME).is_file()]
    if not found:
        pytest.fail(
            f"{PTH_NAME} is not in {site.getsitepackages()}: this environment was installed before the start-up "
            "hook existed. Reinstall: pip install --no-deps -e . (or make install)."
        )


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A grown adapter over stories260K whose new tensors moved, as training moves them (so it is not the base)."""
    path = tmp_path_factory.mktemp("autoload") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL_DIR), GrowConfig(k=2, layers=[1, 3]))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(path)
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(MODEL_DIR)
    return path


def test_off_switch_values(monkeypatch):
    for value, off in [("", False), ("0", False), ("1", True), ("true", True), ("yes", True)]:
        monkeypatch.setenv(autoload.ENV_OFF, value)
        assert autoload.disabled() is off, value
    monkeypatch.delenv(autoload.ENV_OFF)
    assert not autoload.disabled()


def test_start_up_imports_neither_torch_nor_peft(tmp_path):
    result = run_python(
        """
        import json, sys
        heavy = [name for name in ("torch", "peft", "peft_grow", "transformers") if name in sys.modules]
        finders = [type(finder).__name__ for finder in sys.meta_path]
        print(json.dumps({"heavy": heavy, "finders": finders, "hook": "_peft_grow_autoload" in sys.modules}))
        """,
        tmp_path,
    )
    state = last_json(result)
    assert state["heavy"] == []
    assert state["hook"] and "PeftGrowAutoload" in state["finders"]  # the hook is there, waiting for peft


def test_auto_peft_model_loads_a_grown_adapter_without_the_import(adapter, tmp_path):
    out = tmp_path / "logits.pt"
    result = run_python(
        f"""
        import json, sys
        import torch
        assert "peft_grow" not in sys.modules and "peft" not in sys.modules
        from peft import AutoPeftModelForCausalLM
        assert "peft_grow" in sys.modules  # imported by the hook once peft finished importing
        assert not any(type(f).__name__ == "PeftGrowAutoload" for f in sys.meta_path)  # and the hook is gone
        model = AutoPeftModelForCausalLM.from_pretrained({str(adapter)!r}).eval()
        with torch.no_grad():
            torch.save(model(torch.tensor({IDS})).logits, {str(out)!r})
        print(json.dumps({{"config": type(model.peft_config["default"]).__name__}}))
        """,
        tmp_path,
    )
    assert last_json(result) == {"config": "GrowConfig"}
    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        base_logits = base(torch.tensor(IDS)).logits
        expected = PeftModel.from_pretrained(base, adapter).eval()(torch.tensor(IDS)).logits
    got = torch.load(out)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - base_logits).abs().max() > 1e-3  # the adapter is applied, not silently dropped


def test_off_switch_leaves_peft_alone(adapter, tmp_path):
    """With PEFT_GROW_NO_AUTOLOAD=1 nothing is imported, and a grown adapter fails as it did before the hook."""
    result = run_python(
        f"""
        import json, sys
        import peft
        state = {{"hook": "_peft_grow_autoload" in sys.modules, "peft_grow": "peft_grow" in sys.modules}}
        try:
            peft.AutoPeftModelForCausalLM.from_pretrained({str(adapter)!r})
        except KeyError as error:
            state["error"] = repr(error)
        print(json.dumps(state))
        """,
        tmp_path,
        PEFT_GROW_NO_AUTOLOAD="1",
    )
    assert last_json(result) == {"hook": False, "peft_grow": False, "error": "KeyError('GROW')"}


def test_explicit_import_still_works_and_registers_once(tmp_path):
    result = run_python(
        """
        import json, sys
        import peft_grow  # imports peft itself: the hook sees peft_grow under way and leaves the work to it
        from peft.utils import PeftType
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
        finders = [type(f).__name__ for f in sys.meta_path]
        print(json.dumps({"config": PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GROW].__name__, "finders": finders}))
        """,
        tmp_path,
    )
    state = last_json(result)
    assert state["config"] == "GrowConfig" and "PeftGrowAutoload" not in state["finders"]


def test_a_failing_peft_grow_import_does_not_break_peft(tmp_path):
    shadow = tmp_path / "shadow" / "peft_grow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise RuntimeError("broken install")\n')
    result = run_python(
        """
        import json, sys, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import peft
        ours = [str(w.message) for w in caught if w.category is RuntimeWarning and "peft-grow" in str(w.message)]
        print(json.dumps({"peft": peft.__name__, "warnings": ours, "peft_grow": "peft_grow" in sys.modules}))
        """,
        tmp_path,
        PYTHONPATH=str(shadow.parent),
    )
    state = last_json(result)
    assert state["peft"] == "peft" and not state["peft_grow"]
    (message,) = state["warnings"]
    assert "RuntimeError: broken install" in message and "PEFT_GROW_NO_AUTOLOAD=1" in message


def test_lm_eval_command_line_loads_a_grown_adapter(adapter, tmp_path):
    """lm-eval's own command line (not `python -m peft_grow.evaluation`), with a packaged task."""
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={MODEL_DIR},add_bos_token=True,peft={adapter}",
        "--include_path",
        str(ev.TASKS_DIR),
        "--tasks",
        "grow_copa",
        "--limit",
        "4",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "results"),
    ]
    env = _env(PEFT_GROW_DATA=str(DATA))  # the packaged tasks read their data folder from here
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (tmp_path / "results").rglob("results_*.json")
    scores = json.loads(written.read_text())
    assert scores["n-samples"]["grow_copa"] == {"original": 20, "effective": 4}
    assert 0.0 <= scores["results"]["grow_copa"]["acc,none"] <= 1.0
    assert str(adapter) in json.dumps(scores["config"])  # the adapter, not the bare base model, was evaluated


def test_wheel_and_editable_wheel_carry_the_pth(tmp_path):
    """setup.py puts the .pth at the root of both wheels, from a copy of the sources (the checkout stays clean)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "_peft_grow_autoload.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "peft_grow", source / "peft_grow", ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
        import setuptools.build_meta as backend
        print(backend.build_wheel({str(tmp_path / "wheel")!r}))
        print(backend.build_editable({str(tmp_path / "editable")!r}))
    """
    (tmp_path / "wheel").mkdir()
    (tmp_path / "editable").mkdir()
    run_python(code, source)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    (editable,) = (tmp_path / "editable").glob("*.whl")
    for built in (wheel, editable):
        with zipfile.ZipFile(built) as archive:
            pth = archive.read(PTH_NAME).decode()
            record = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))).decode()
        assert pth.startswith("import os;") and '__import__("_peft_grow_autoload").install()' in pth, built.name
        assert pth.count("\n") == 1 and f"{PTH_NAME}," in record, built.name
    with zipfile.ZipFile(wheel) as archive:
        assert "_peft_grow_autoload.py" in archive.namelist()
    with zipfile.ZipFile(editable) as archive:
        finder = next(n for n in archive.namelist() if n.endswith("_finder.py"))
        assert "'_peft_grow_autoload':" in archive.read(finder).decode()  # the editable finder maps the module
        # the editable finder's own .pth must run first, so that ours can import the module
        assert sorted(n for n in archive.namelist() if n.endswith(".pth"))[-1] == PTH_NAME
