"""Data-parallel training through a real `accelerate launch` of 2 CPU processes (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_ddp.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(command: list, out: Path, batch: int) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*command, str(SCRIPT), str(out), "--batch", str(batch)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_ddp_gives_the_single_process_adapter_and_saves_once(tmp_path):
    launch([sys.executable], tmp_path / "single", batch=4)
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU, the Trainer's processes use gloo on CPU
    two = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch([*two, "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "ddp", batch=2)  # same global batch
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    assert (tmp_path / "ddp" / "world.txt").read_text() == "2 gloo"
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=2e-5, rtol=1e-4)
    assert (tmp_path / "ddp" / "saves.log").read_text() == "0\n"  # written once, by the main process
