"""One command for a GPU that is lent rarely and briefly: the test suite on CUDA, exactness on the Gemma3-1B shape,
and the speed figures against their goals, in one report (JSON and Markdown) written into the folder it is given.

    make gpu-check                       # on a CUDA machine: its own python3, this repository on the path
    make gpu-check DRY=1                 # anywhere (CI does it): the same tests collected, the same plan built,
                                         # exactness and speed run at a tiny shape on the CPU
    python -m benchmarks.gpu_check --out DIR [--dry-run] [--parts tests exactness speed]

Parts, each timed:

  tests      pytest on every test module that builds models through peft_grow.testing (they run on CUDA when it
             is there, in float32 and bfloat16 where dtype-parametrised), without the tests marked slow (fresh
             interpreters, subprocesses) or cpu_only (they cannot use a GPU); failures listed by test id with their
             first error line, and modules that could not be imported (a package missing on that machine) named
  exactness  the Gemma3-1B shape with random weights (no download), bfloat16 and float32, k = 2 and 3, G-Freeze
             and G-Train: the largest logit difference from the base at initialisation, and after save, reload
             and merge of an adapter whose new weights are not an identity
  speed      benchmarks/speed.py's GPU setting, a few rounds: the grown training step against the merged,
             equally wide model (goal at most 1.05x), unmerged decode against merged (1.10x), and an adapter
             loaded for inference in bfloat16 against merged in prefill (1.05x)

On an H100 the whole check is sized to finish in under 8 minutes (the device tool's calls last at most 10).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
ZOO_NAMES = ("tiny_model", "helpers import DEVICE", "from helpers import")  # modules that build the zoo's models
PYTEST_MARKERS = "not slow and not cpu_only"
GOALS = {  # ratio name: (measured variant, reference variant, at most)
    "grown training step / merged equally wide": ("g-freeze", "wide-ref", 1.05),
    "unmerged decode / merged decode": ("grown (unmerged) decode", "merged decode", 1.10),
    "bf16 adapter prefill / merged prefill": ("grown (unmerged) prefill", "merged prefill", 1.05),
}


def zoo_test_files() -> list[Path]:
    """The test modules that build their models through peft_grow.testing (by way of tests/helpers.py)."""
    return sorted(p for p in TESTS.glob("test_*.py") if any(n in p.read_text(encoding="utf-8") for n in ZOO_NAMES))


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    for package in ("transformers", "peft", "trl", "datasets"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def run_tests(out: Path, dry: bool, timeout: int) -> dict:
    """pytest in a fresh interpreter; with `dry`, collection only."""
    files = zoo_test_files()
    report = out / "tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", PYTEST_MARKERS, "-q", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors", f"--junitxml={report}", *map(str, files)]
    if dry:
        command.append("--collect-only")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        return {"files": len(files), "timed_out": timeout, "output_tail": (stopped.stdout or "")[-2000:]}
    result = {"files": len(files), "exit_code": done.returncode, "output_tail": done.stdout[-1500:]}
    if dry:
        result["collected"] = sum(1 for line in done.stdout.splitlines() if "::" in line)
        result["collection_errors"] = [line for line in done.stdout.splitlines() if line.startswith("ERROR ")]
        return result
    return result | junit_summary(report)


def junit_summary(path: Path) -> dict:
    """Counts, and each failure or error by test id with the first line of its message."""
    if not path.is_file():
        return {"failures": [], "note": "pytest wrote no report"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            counts["failed"] += 1
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failures.append({"test": test_id, "first_line": message[0][:300] if message else ""})
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"failures": failures}


def exactness_cases(dry: bool) -> list[dict]:
    shape = "tiny gemma3 (CPU dry run)" if dry else "Gemma3-1B"
    return [
        {"shape": shape, "dtype": dtype, "k": k, "mode": mode}
        for dtype in ("bfloat16", "float32")
        for k in (2, 3)
        for mode in ("freeze", "train")
    ]


def gemma_base(dry: bool, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from peft_grow.testing import GEMMA3_1B

    shape = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, vocab_size=128) if dry else {}
    config = AutoConfig.for_model("gemma3_text", **(GEMMA3_1B | shape))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()


@torch.no_grad()
def exactness_case(case: dict, dry: bool, device: torch.device) -> dict:
    """Logit differences: grown at initialisation against the base; a random-new-weights adapter after save and
    reload against itself, and merged against unmerged. New weights in the model's dtype (as loaded for
    inference with autocast_adapter_dtype=False)."""
    from peft import PeftModel, get_peft_model

    from peft_grow import GrowConfig

    dtype = getattr(torch, case["dtype"])
    base = gemma_base(dry, dtype, device)
    ids = torch.randint(0, base.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1)).to(device)
    expected = base(input_ids=ids).logits.float()
    config = {"k": case["k"], "mode": case["mode"]}
    grown = get_peft_model(copy.deepcopy(base), GrowConfig(**config), autocast_adapter_dtype=False)
    start = grown(input_ids=ids).logits.float()
    del grown
    moved = get_peft_model(
        copy.deepcopy(base), GrowConfig(**config, init_weights=False), autocast_adapter_dtype=False
    ).eval()
    trained = moved(input_ids=ids).logits.float()
    with tempfile.TemporaryDirectory() as folder:
        moved.save_pretrained(folder)
        del moved
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), folder, autocast_adapter_dtype=False).eval()
    after_reload = reloaded(input_ids=ids).logits.float()
    merged = reloaded.merge_and_unload()(input_ids=ids).logits.float()
    scale = expected.abs().max().item()
    return case | {
        "logit_scale": scale,
        "init_max_diff": (start - expected).abs().max().item(),
        "init_bit_identical": torch.equal(start, expected),
        "reload_max_diff": (after_reload - trained).abs().max().item(),
        "merge_max_diff": (merged - trained).abs().max().item(),
    }


def run_exactness(dry: bool, device: torch.device) -> dict:
    rows = []
    for case in exactness_cases(dry):
        try:
            rows.append(exactness_case(case, dry, device))
        except Exception as error:  # one failing case must not hide the others: it is reported with its error
            rows.append(case | {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"cases": rows}


def run_speed(dry: bool, repeats: int, guard: bool) -> dict:
    from benchmarks import speed

    setting = "tiny" if dry else "gemma3-1b"
    training, inference, ids = speed.run(setting, repeats, warmup=1, decode_tokens=8 if dry else 16, guarded=guard)
    by_name = {m.name: m for m in training + inference}
    goals = {}
    for name, (mine, theirs, limit) in GOALS.items():
        ratio, spread = by_name[mine].ratio(by_name[theirs])
        goals[name] = {"ratio": ratio, "iqr": spread, "at_most": limit, "met": ratio <= limit}
    return {
        "setting": setting,
        "repeats": repeats,
        "goals": goals,
        "tables": speed.report(setting, training, inference, ids.device),
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# GPU check" + (" (dry run: no GPU, tiny shapes, tests collected only)" if report["dry_run"] else ""),
        "",
        f"Device: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, trl {env['trl']}, Python {env['python']}. Seconds per part: "
        + ", ".join(f"{part} {seconds:.0f}" for part, seconds in report["seconds"].items())
        + ".",
        "",
    ]
    tests = report.get("tests")
    if tests:
        lines += ["## Tests", ""]
        if "collected" in tests:
            lines.append(f"{tests['collected']} tests collected from {tests['files']} modules.")
        elif "timed_out" in tests:
            lines.append(f"Stopped after {tests['timed_out']} s.")
        else:
            lines.append(
                f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, {tests.get('skipped', 0)} "
                f"skipped, from {tests['files']} modules."
            )
            lines += [f"- `{f['test']}`: {f['first_line']}" for f in tests.get("failures", [])]
        lines.append("")
    exactness = report.get("exactness")
    if exactness:
        lines += [
            "## Exactness",
            "",
            "| shape | dtype | k | mode | logit scale | at init (max diff) | bit-identical | after reload | merged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in exactness["cases"]:
            if "error" in c:
                lines.append(f"| {c['shape']} | {c['dtype']} | {c['k']} | {c['mode']} | {c['error']} |||||")
                continue
            lines.append(
                f"| {c['shape']} | {c['dtype']} | {c['k']} | {c['mode']} | {c['logit_scale']:.3g} "
                f"| {c['init_max_diff']:.3g} | {c['init_bit_identical']} | {c['reload_max_diff']:.3g} "
                f"| {c['merge_max_diff']:.3g} |"
            )
        lines.append("")
    speed = report.get("speed")
    if speed:
        lines += [f"## Speed ({speed['setting']}, {speed['repeats']} rounds)", "", "| goal | ratio | at most | met |"]
        lines.append("|---|---|---|---|")
        for name, goal in speed["goals"].items():
            lines.append(f"| {name} | {goal['ratio']:.2f}x ± {goal['iqr']:.2f} | {goal['at_most']} | {goal['met']} |")
        lines += ["", speed["tables"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for the report (default gpu-check)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: collect, plan, tiny shapes on CPU")
    parser.add_argument("--parts", nargs="+", choices=["tests", "exactness", "speed"], default=None)
    parser.add_argument("--tests-timeout", type=int, default=240, help="seconds for the test part (default 240)")
    parser.add_argument("--repeats", type=int, default=5, help="speed rounds (default 5)")
    parser.add_argument("--speed-guard", action="store_true", help="also time the retention guard's variants")
    args = parser.parse_args(argv)
    parts = args.parts or ["tests", "exactness", "speed"]
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device: run it on a GPU machine, or pass --dry-run (DRY=1) for the CPU rehearsal")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "environment": environment(), "seconds": {}}
    jobs = {
        "tests": lambda: run_tests(args.out, args.dry_run, args.tests_timeout),
        "exactness": lambda: run_exactness(args.dry_run, device),
        "speed": lambda: run_speed(args.dry_run, 1 if args.dry_run else args.repeats, args.speed_guard),
    }
    for part in parts:
        started = time.perf_counter()
        report[part] = jobs[part]()
        report["seconds"][part] = time.perf_counter() - started
        (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (args.out / "gpu-check.md").write_text(markdown(report), encoding="utf-8")  # each part kept as it ends
        print(f"{part}: {report['seconds'][part]:.0f} s", flush=True)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
