"""Data-parallel and FSDP2 training in 2 real CPU processes (gloo) against one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.cpu_only]  # subprocesses on CPU (gloo, CUDA hidden): skipped by test-fast

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
BIN = Path(sys.executable).parent
# --multi_gpu selects accelerate's torchrun launcher; with no GPU the Trainer's processes run on CPU with gloo
ACCELERATE_TWO = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes=2", "--num_machines=1"]
ACCELERATE_TWO += ["--mixed_precision=no", "--dynamo_backend=no"]
TORCHRUN_TWO = [str(BIN / "torchrun"), "--nproc_per_node=2"]


def run(command: list, script: str, out: Path, *options: str) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*command, str(SCRIPTS / script), str(out), *options], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_tensors(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], atol=2e-5, rtol=1e-4)


def test_accelerate_ddp_gives_the_single_process_adapter_and_saves_it_once(tmp_path):
    run([sys.executable], "train_ddp.py", tmp_path / "single", "--batch", "4")
    run(ACCELERATE_TWO, "train_ddp.py", tmp_path / "ddp", "--batch", "2")  # 2 processes x 2 = the same global batch
    assert (tmp_path / "ddp" / "world.txt").read_text() == "2 gloo"
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert_same_tensors(load_file(tmp_path / "ddp" / "adapter_model.safetensors"), single)
    assert (tmp_path / "ddp" / "saves.log").read_text() == "0\n"  # written once, by the main process


def test_ddp_with_the_retention_guard_gives_the_single_process_adapter(tmp_path):
    """Each process reads its own retention rows; the mean of the two processes' KL terms over 2 windows each is
    the one process's term over the same 4 windows, so the adapters must match."""
    run([sys.executable], "train_ddp.py", tmp_path / "single", "--batch", "4", "--guard-batch", "4")
    run(ACCELERATE_TWO, "train_ddp.py", tmp_path / "ddp", "--batch", "2", "--guard-batch", "2")
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert_same_tensors(load_file(tmp_path / "ddp" / "adapter_model.safetensors"), single)
    unguarded = tmp_path / "unguarded"
    run([sys.executable], "train_ddp.py", unguarded, "--batch", "4")
    assert not torch.equal(
        next(iter(load_file(unguarded / "adapter_model.safetensors").values())), next(iter(single.values()))
    )


def test_fsdp2_sharded_training_gives_the_unsharded_new_weights(tmp_path):
    run([sys.executable], "train_fsdp2.py", tmp_path / "single")
    run(TORCHRUN_TWO, "train_fsdp2.py", tmp_path / "fsdp2")
    assert (tmp_path / "fsdp2" / "world.txt").read_text() == "2 gloo sharded=True"
    single = load_file(tmp_path / "single" / "grown.safetensors")
    assert_same_tensors(load_file(tmp_path / "fsdp2" / "grown.safetensors"), single)
