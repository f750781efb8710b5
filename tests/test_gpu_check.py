"""`make gpu-check DRY=1`: the GPU check's rehearsal on the CPU, so that the command cannot rot between the rare
sessions that have a GPU. It collects the same tests, runs the exactness matrix and the speed goals at a tiny
shape, and writes the same report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_the_test_part_selects_the_modules_that_build_the_zoo_and_deselects_by_marker():
    files = {p.name for p in gpu_check.zoo_test_files()}
    assert {"test_preservation.py", "test_save_load.py", "test_merge.py", "test_retention_guard.py"} <= files
    assert "test_repository_layout.py" not in files
    assert gpu_check.PYTEST_MARKERS == "not slow and not cpu_only"


def test_the_exactness_matrix_covers_both_dtypes_both_ks_and_both_modes():
    cases = gpu_check.exactness_cases(dry=False)
    assert len(cases) == 8 and {c["shape"] for c in cases} == {"Gemma3-1B"}
    assert {(c["dtype"], c["k"], c["mode"]) for c in cases} == {
        (d, k, m) for d in ("bfloat16", "float32") for k in (2, 3) for m in ("freeze", "train")
    }


def test_without_a_gpu_only_the_dry_run_is_accepted(tmp_path, capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")  # reached only on a GPU machine
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path)])
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow  # collects the suite in a fresh interpreter
def test_the_dry_run_writes_the_report_with_every_part(tmp_path):
    done = subprocess.run(
        ["make", "gpu-check", "DRY=1", f"OUT={tmp_path}", f"GPU_PY={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["dry_run"] and set(report["seconds"]) == {"tests", "exactness", "speed"}
    assert report["tests"]["collected"] > 300 and report["tests"]["collection_errors"] == []
    assert report["tests"]["exit_code"] == 0
    cases = report["exactness"]["cases"]
    assert len(cases) == 8 and not any("error" in c for c in cases)
    for case in cases:  # what the method promises, at the tiny shape on CPU
        assert case["reload_max_diff"] == 0.0
        if case["k"] == 2:
            assert case["init_bit_identical"]
        assert case["merge_max_diff"] <= (1e-2 if case["dtype"] == "bfloat16" else 1e-5) * max(1, case["logit_scale"])
    assert set(report["speed"]["goals"]) == set(gpu_check.GOALS)
    text = (tmp_path / "gpu-check.md").read_text()
    assert text.startswith("# GPU check (dry run") and "## Exactness" in text and "## Speed" in text
