"""`peft-grow merge` on real files: the written checkpoint, exit codes and one-line refusals."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, logits, run, sample_inputs, tiny_model
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from peft_grow import GrowConfig, load_merged


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved base model, a grown adapter of some of its layers, and that adapter's logits."""
    root = tmp_path_factory.mktemp("merge")
    tiny_model("llama").save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    model = get_peft_model(base, GrowConfig(layers=[1], k=3, init_weights=False))
    model.save_pretrained(root / "adapter")
    inputs = sample_inputs(model)
    return root, inputs, logits(model, inputs)


@pytest.mark.parametrize("layout", ["pad", "per-layer"])
def test_merge_writes_an_exact_checkpoint(saved, capsys, layout):
    root, inputs, expected = saved
    out = root / f"merged-{layout}"
    code, stdout, _ = run(capsys, "merge", root / "base", root / "adapter", out, "--layout", layout)
    assert code == 0
    if layout == "pad":
        assert "LlamaForCausalLM.from_pretrained(" in stdout
        loaded = AutoModelForCausalLM.from_pretrained(out)
    else:
        assert "peft_grow.load_merged(" in stdout
        loaded = load_merged(out)
    assert (logits(loaded, inputs) - expected).abs().max() <= 1e-5
    assert (out / "README.md").is_file()


def test_merge_casts_dtype(saved, capsys):
    root, _, _ = saved
    code, stdout, _ = run(capsys, "merge", root / "base", root / "adapter", root / "bf16", "--dtype", "bfloat16")
    assert code == 0 and "bfloat16" in stdout
    assert AutoModelForCausalLM.from_pretrained(root / "bf16").dtype == torch.bfloat16


def test_merge_refuses_an_existing_target(saved, capsys):
    root, _, _ = saved
    (root / "taken").mkdir()
    code, _, err = run(capsys, "merge", root / "base", root / "adapter", root / "taken")
    assert_one_line_error(code, err)
    assert "--overwrite" in err and list((root / "taken").iterdir()) == []


def test_merge_refuses_an_adapter_for_another_base(saved, capsys):
    root, _, _ = saved
    tiny_model("llama", intermediate_size=48).save_pretrained(root / "wider-base")
    capsys.readouterr()
    code, _, err = run(capsys, "merge", root / "wider-base", root / "adapter", root / "never")
    assert_one_line_error(code, err)
    assert "does not fit this base model" in err and not (root / "never").exists()


def test_merge_refuses_missing_adapter_files(saved, capsys, tmp_path):
    root, _, _ = saved
    code, _, err = run(capsys, "merge", root / "base", tmp_path / "nothing", root / "never")
    assert_one_line_error(code, err)
    (tmp_path / "config-only").mkdir()
    shutil.copy(root / "adapter" / "adapter_config.json", tmp_path / "config-only")
    code, _, err = run(capsys, "merge", root / "base", tmp_path / "config-only", root / "never")
    assert_one_line_error(code, err)
    assert "no adapter_model.safetensors; the folder is incomplete" in err and not (root / "never").exists()


@pytest.mark.slow
def test_console_script_is_installed_and_merges(saved):
    """The `peft-grow` executable itself, as users call it."""
    root, inputs, expected = saved
    script = Path(sys.executable).with_name("peft-grow")
    assert script.is_file()
    result = subprocess.run(
        [str(script), "merge", str(root / "base"), str(root / "adapter"), str(root / "console")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (logits(AutoModelForCausalLM.from_pretrained(root / "console"), inputs) - expected).abs().max() <= 1e-5
