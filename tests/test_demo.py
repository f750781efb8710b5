"""`make demo` keeps working from a fresh clone: the demo runs end to end on the material in the repository."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters and subprocesses: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_offline_on_repository_material():
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--steps", "2", "--eval-every", "2", "--batch", "2", "--seq-len", "32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        match[0]: match[1:]
        for match in re.findall(
            r"^(full FT \(control\)|full FT|G-Freeze)\s+\S+\s+.*?([\d.]+) -> ([\d.]+)\s+([\d.]+) -> "
            r"([\d.]+)",
            result.stdout,
            flags=re.M,
        )
    }
    assert set(rows) == {"full FT", "full FT (control)", "G-Freeze"}, result.stdout
    # every method starts from the same pretrained model, so the losses before training agree
    assert len({(new_before, orig_before) for new_before, _, orig_before, _ in rows.values()}) == 1
