"""PEFT's own generic test suite (`PeftCommonTester`) run against GROW, offline: a conformance check.

PEFT's source distribution ships its tests. This script downloads the sdist of the installed peft version into
~/.cache/peft-grow/peft-src (once; pip is the only network access), copies the tester files into a temporary run
folder with a conftest that makes them run offline, adds GROW rows to PEFT's parametrization lists, runs pytest on

  tests/test_custom_models.py::TestPeftCustomModel   GROW on the `MLP` / `MLP2` mocks (lin0 up, lin1 down)
  tests/test_decoder_models.py::TestDecoderModels    GROW on tiny decoders built locally from configs, under the
                                                     Hub ids PEFT's tests name (nothing is downloaded)

selecting the GROW cases (`-k GrowConfig`), and prints passed / failed / skipped / errors per file, and each failure
with the first line of its error. Failures listed in KNOWN_FAILURES (docs/conformance.md explains each) are
reported as known; the exit status is 1 only if a test failed that is not known.

    python -m benchmarks.peft_conformance                      # both files, about 80 s on 2 CPU cores
    python -m benchmarks.peft_conformance --only custom -k merge
    python -m benchmarks.peft_conformance --keep               # keep the run folder (junit XML, conftest)

Importing this module from the generated conftest also gives pytest the plugin hooks below (`pytest_configure`,
`pytest_pycollect_makemodule`); they do nothing outside such a run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

CACHE = Path(os.environ.get("PEFT_GROW_CACHE", Path.home() / ".cache" / "peft-grow")) / "peft-src"
TESTER_FILES = ("testing_common.py", "testing_utils.py", "test_custom_models.py", "test_decoder_models.py")
TARGETS = {
    "custom": "tests/test_custom_models.py::TestPeftCustomModel",
    "decoder": "tests/test_decoder_models.py::TestDecoderModels",
}
RUN_ENV = "PEFT_CONFORMANCE_RUN"  # set for the pytest process: the run folder (models.json lives there)
SELECT = "GrowConfig"  # every GROW case's test id names the config class

# GROW rows for TestPeftCustomModel: (test name, mock model id, config class, config kwargs). `MLP` is
# lin0 (10 -> 20), ReLU, dropout, lin1 (20 -> 2): an MLP outside any numbered layer stack, grown by full-name regexes.
_MLP = {"up_modules": ["lin0"], "down_modules": ["lin1"]}
CUSTOM_ROWS = [
    ("Vanilla MLP 1 GROW", "MLP", _MLP),
    ("Vanilla MLP 2 GROW train", "MLP", {**_MLP, "mode": "train"}),
    ("Vanilla MLP 3 GROW k3", "MLP", {**_MLP, "k": 3}),
    ("Vanilla MLP 4 GROW zero init", "MLP", {**_MLP, "init": "zero"}),
    ("Vanilla MLP 5 GROW MLP2", "MLP2", _MLP),
]
# GROW rows for TestDecoderModels' ALL_CONFIGS (crossed with every model id of PEFT_DECODER_MODELS_TO_TEST)
DECODER_ROWS = [
    {"task_type": "CAUSAL_LM"},
    {"task_type": "CAUSAL_LM", "mode": "train"},
]

# Tiny decoders standing in for the Hub ids of PEFT_DECODER_MODELS_TO_TEST: model_type and config kwargs.
_SMALL = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
_GPT = dict(n_embd=32, n_inner=40, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
TINY_DECODERS = {
    "peft-internal-testing/tiny-random-OPTForCausalLM": (
        "opt",
        dict(
            hidden_size=32,
            ffn_dim=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=128,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        ),
    ),
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": ("gpt2", _GPT),
    "peft-internal-testing/tiny-random-GPTJForCausalLM": ("gptj", dict(_GPT, rotary_dim=4)),
    "trl-internal-testing/tiny-random-LlamaForCausalLM": ("llama", dict(_SMALL, num_key_value_heads=2)),
    "peft-internal-testing/tiny-dummy-qwen2": ("qwen2", dict(_SMALL, num_key_value_heads=2)),
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": (
        "gemma3_text",
        dict(_SMALL, num_key_value_heads=2, head_dim=8),
    ),
}

# Failures explained in docs/conformance.md: (test-name regex, category). Anything else is unexpected.
_LIMITS = "tests/test_peft_conformance_limits.py::"
KNOWN_FAILURES: list[tuple[str, str]] = [
    (
        r"^test_save_pretrained(_selected_adapters)?_pickle\[",
        f"design: pickled adapters are refused ({_LIMITS}test_pickled_adapters_are_saved_but_refused_at_loading)",
    ),
    (
        r"^test_adapter_dtype_autocast\[(True|False)-True-dtype[01]-",  # autocast on, float16 / bfloat16 base
        f"design: loaded for inference, new weights keep the base dtype "
        f"({_LIMITS}test_adapter_loaded_for_inference_keeps_the_base_dtype)",
    ),
    (
        r"^test_active_adapter\[",
        f"design: one grown adapter active at a time ({_LIMITS}test_two_grown_adapters_cannot_be_active_together)",
    ),
    (
        r"^test_merge_layers_multi\[",
        f"design: one grown adapter merged at a time ({_LIMITS}test_two_grown_adapters_cannot_be_merged_together)",
    ),
    (
        r"^test_(set_adapter_non_overlapping_modules\w*|multiple_active_adapters_with_\w+|set_requires_grad)"
        r"\[GrowConfig\]$",
        "tester assumption: a config built from target_modules alone on DeepMLP "
        f"({_LIMITS}test_grow_targets_come_from_up_and_down_modules_not_target_modules)",
    ),
]


# ----------------------------------------------------------------------------------------------------------------
# the runner


def peft_version() -> str:
    return importlib.metadata.version("peft")


def tester_sources(version: str) -> Path:
    """The `tests/` folder of peft's sdist for `version`, downloaded and unpacked into CACHE if missing."""
    tests = CACHE / f"peft-{version}" / "tests"
    if all((tests / name).is_file() for name in TESTER_FILES):
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"peft-{version}.tar.gz"
    if not archive.is_file():
        print(f"downloading the peft=={version} sdist into {CACHE} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + [f"peft=={version}", "-d", str(CACHE)],
            check=True,
        )
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(f"peft-{version}/tests/")]
        tar.extractall(CACHE, members=members, filter="data")
    missing = [name for name in TESTER_FILES if not (tests / name).is_file()]
    if missing:
        raise SystemExit(f"the peft=={version} sdist in {CACHE} has no tests/{missing[0]}; cannot run the tester")
    return tests


def build_tiny_decoders(folder: Path) -> dict[str, str]:
    """Save each tiny decoder under `folder`; return {Hub id: local path}."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    paths = {}
    for model_id, (model_type, kwargs) in TINY_DECODERS.items():
        path = folder / model_id.split("/")[-1]
        config = AutoConfig.for_model(model_type, **kwargs)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        paths[model_id] = str(path)
    return paths


def prepare_run(run: Path, sources: Path, files: list[str]) -> None:
    tests = run / "tests"
    tests.mkdir(parents=True)
    for name in TESTER_FILES:
        shutil.copy(sources / name, tests / name)
    (tests / "__init__.py").write_text("")
    # PEFT's copied test files run in a temporary folder outside the repository; their conftest loads this very
    # module (the plugin hooks below) from the folder it lies in. No repository folder imports another this way.
    (tests / "conftest.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from peft_conformance import pytest_configure, pytest_pycollect_makemodule  # noqa: E402,F401\n"
    )
    (run / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    models = build_tiny_decoders(run / "models") if "decoder" in files else {}
    (run / "models.json").write_text(json.dumps(models, indent=1))


def run_pytest(run: Path, which: str, keyword: str | None) -> Path:
    junit = run / f"junit-{which}.xml"
    expression = SELECT if not keyword else f"{SELECT} and ({keyword})"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env[RUN_ENV] = str(run)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    command = [sys.executable, "-m", "pytest", TARGETS[which], "-k", expression, "-q", "-p", "no:randomly"]
    command += ["-c", str(run / "pytest.ini"), "--rootdir", str(run), f"--junitxml={junit}", "--tb=line"]
    print(f"\n== {TARGETS[which]} (-k {expression!r})", flush=True)
    subprocess.run(command, cwd=run, env=env, check=False)
    return junit


def known_reason(name: str) -> int | None:
    """The number (1-based) of the KNOWN_FAILURES entry that explains a failed test, or None."""
    for number, (pattern, _) in enumerate(KNOWN_FAILURES, start=1):
        if re.search(pattern, name):
            return number
    return None


def summarize(junits: dict[str, Path]) -> int:
    """Print the counts and failures; return the number of failures and errors that are not known."""
    print("\n== summary")
    rows, failures, unexpected = _read_junits(junits)
    _print_counts(rows)
    unexpected += _print_failures(failures)
    print(f"\n{unexpected} unexpected failure(s)")
    return unexpected


def _read_junits(junits: dict[str, Path]) -> tuple[list[tuple[str, Counter]], list[tuple[str, str, str, str]], int]:
    """(file, outcome counts) per junit report, the failures and errors as (file, test, outcome, first line of the
    message), and the number of reports missing (each reported as it is found)."""
    rows, failures, missing = [], [], 0
    for which, junit in junits.items():
        counts = Counter()
        if not junit.is_file():
            print(f"{TARGETS[which]}: no junit report (pytest did not run; see its output above)")
            missing += 1
            continue
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, first = _outcome(case)
            if outcome not in ("passed", "skipped"):
                failures.append((which, case.get("name"), outcome, first))
            counts[outcome] += 1
        rows.append((which, counts))
    return rows, failures, missing


def _outcome(case: ET.Element) -> tuple[str, str]:
    """A test case's outcome ("passed", "failed", "errors" or "skipped") and the first line of its message."""
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
            message = (child.get("message") or child.text or "").strip().splitlines()
            return outcome, message[0] if message else ""
    return "passed", ""


def _print_counts(rows: list[tuple[str, Counter]]) -> None:
    print(f"{'file':<28} {'passed':>7} {'failed':>7} {'skipped':>8} {'errors':>7}")
    for which, counts in rows:
        file = TARGETS[which].split("::")[0].split("/")[-1]
        print(f"{file:<28} {counts['passed']:>7} {counts['failed']:>7} {counts['skipped']:>8} {counts['errors']:>7}")


def _print_failures(failures: list[tuple[str, str, str, str]]) -> int:
    """Each failure, marked with the KNOWN_FAILURES entry that explains it, then those entries; returns the number
    of failures none explains."""
    if failures:
        print(
            "\nfailures: test, first line of the error, [known N] (see below and docs/conformance.md) or [UNEXPECTED]"
        )
    unexpected = 0
    seen = set()
    for which, name, outcome, first in failures:
        known = known_reason(name)
        unexpected += known is None
        seen.add(known)
        print(f"  {which} {name} {outcome}: {first[:160]} {f'[known {known}]' if known else '[UNEXPECTED]'}")
    for number, (_, category) in enumerate(KNOWN_FAILURES, start=1):
        if number in seen:
            print(f"  [known {number}] {category}")
    return unexpected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(TARGETS), help="run one file only")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (junit XML, conftest, models)")
    parser.add_argument("-k", dest="keyword", help="a pytest -k expression, combined with the GROW selection")
    args = parser.parse_args(argv)
    files = [args.only] if args.only else list(TARGETS)
    version = peft_version()
    sources = tester_sources(version)
    run = Path(tempfile.mkdtemp(prefix="peft-conformance-"))
    try:
        print(f"peft {version}: tester from {sources}; run folder {run}", flush=True)
        prepare_run(run, sources, files)
        junits = {which: run_pytest(run, which, args.keyword) for which in files}
        unexpected = summarize(junits)
    finally:
        if args.keep:
            print(f"\nrun folder kept: {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
    return 1 if unexpected else 0


# ----------------------------------------------------------------------------------------------------------------
# the pytest plugin (imported by the run folder's conftest.py)


def _stub_missing_modules() -> None:
    """testing_common imports diffusers only for an isinstance check against StableDiffusionPipeline."""
    if importlib.util.find_spec("diffusers") is None:
        diffusers = types.ModuleType("diffusers")
        diffusers.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
        sys.modules["diffusers"] = diffusers


def pytest_configure(config) -> None:
    if RUN_ENV not in os.environ:
        return
    _stub_missing_modules()
    import peft_grow  # noqa: F401  (registers GROW with PEFT)

    testing_utils = importlib.import_module("tests.testing_utils")

    @contextlib.contextmanager
    def offline(model_id):  # PEFT's hub_online_once lets the first access per id go online; stay offline
        yield

    testing_utils.hub_online_once = offline


def _inject_custom(module) -> None:
    from peft_grow import GrowConfig

    module.TEST_CASES.extend((name, model_id, GrowConfig, kwargs) for name, model_id, kwargs in CUSTOM_ROWS)
    module.ALL_PEFT_CONFIG_CLASSES.append(GrowConfig)


def _inject_decoder(module) -> None:
    from peft_grow import GrowConfig

    module.ALL_CONFIGS.extend((GrowConfig, kwargs) for kwargs in DECODER_ROWS)
    paths = json.loads((Path(os.environ[RUN_ENV]) / "models.json").read_text())
    auto = module.AutoModelForCausalLM

    class LocalCausalLM:
        """AutoModelForCausalLM with the Hub ids of PEFT's tests mapped to the tiny local decoders."""

        @classmethod
        def from_pretrained(cls, model_id, *args, **kwargs):
            return auto.from_pretrained(paths.get(model_id, model_id), *args, **kwargs)

    module.TestDecoderModels.transformers_class = LocalCausalLM

    # Two of PEFT's skips whose reasons do not hold for GROW, lifted for GrowConfig only: `check_beft_config` skips
    # the merge tests on Llama and Gemma3 for every method (its BeftConfig test is an isinstance on the class, always
    # False), and `_skip_if_conv1d_not_supported` skips GPT-2 for methods without Conv1D support (GROW has it).
    check_beft_config = module.check_beft_config
    module.check_beft_config = lambda cls, *args: None if cls is GrowConfig else check_beft_config(cls, *args)
    common = importlib.import_module("tests.testing_common")
    skip_conv1d = common._skip_if_conv1d_not_supported
    common._skip_if_conv1d_not_supported = lambda mid, cls, kw: None if cls is GrowConfig else skip_conv1d(mid, cls, kw)


_INJECT = {"test_custom_models": _inject_custom, "test_decoder_models": _inject_decoder}


def pytest_pycollect_makemodule(module_path, parent):
    """Import PEFT's test module before pytest does, and add the GROW rows to its parametrization lists (the
    parametrize marks hold the lists themselves, which pytest reads when it generates the tests)."""
    inject = _INJECT.get(Path(module_path).stem)
    if RUN_ENV in os.environ and inject is not None:
        module = importlib.import_module(f"tests.{Path(module_path).stem}")
        if not getattr(module, "_grow_injected", False):
            inject(module)
            module._grow_injected = True
    return None


if __name__ == "__main__":
    sys.exit(main())
