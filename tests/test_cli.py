"""The peft-grow command line on real files: plan on saved configs, inspect on saved, damaged and altered adapters.

Each `python -m peft_grow.cli` process spends about 4 s of CPU importing torch, transformers and peft, so the
console itself is exercised by four processes started together (`console`), one per way out: success, an
inconsistent adapter (1), an unreadable file and a bad argument (2). Every other case calls `main(argv)`, the same
entry point, in this process.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import GEMMA3_1B, assert_one_line_error, run, tiny_model
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from peft_grow import GrowConfig
from peft_grow.io.inspection import inspect_adapter

WEIGHTS = "adapter_model.safetensors"


def save_adapter(folder, name="llama", **config) -> str:
    """A grown adapter of a tiny model, perturbed (init_weights=False) so that it is not an identity; no training."""
    model = get_peft_model(tiny_model(name), GrowConfig(init_weights=False, **config))
    model.save_pretrained(folder)
    return str(folder)


def rewrite(folder, drop=(), add=None, config=None) -> None:
    """Rewrite an adapter: drop tensors whose name contains one of `drop`, add tensors, update config fields."""
    path = os.path.join(folder, WEIGHTS)
    tensors = {k: v for k, v in load_file(path).items() if not any(d in k for d in drop)}
    save_file({**tensors, **(add or {})}, path, metadata={"format": "pt"})
    if config:
        config_path = os.path.join(folder, "adapter_config.json")
        with open(config_path) as handle:
            data = json.load(handle)
        with open(config_path, "w") as handle:
            json.dump({**data, **config}, handle)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    gemma = root / "gemma3-1b"
    AutoConfig.for_model("gemma3_text", **GEMMA3_1B).save_pretrained(gemma)
    tiny = root / "tiny-llama"
    tiny_model("llama").config.save_pretrained(tiny)
    freeze = save_adapter(root / "freeze", layers=[0, 2], k=2, mode="freeze")
    train = save_adapter(root / "train", layers=[0, 2], k=2, mode="train")
    damaged = save_adapter(root / "damaged", layers=[0])
    with open(os.path.join(damaged, WEIGHTS), "r+b") as handle:
        handle.truncate(os.path.getsize(os.path.join(damaged, WEIGHTS)) // 2)
    inconsistent = save_adapter(root / "inconsistent", layers=[0, 2])
    rewrite(inconsistent, drop=["layers.2.mlp.down_proj"])
    return dict(
        gemma=str(gemma),
        tiny=str(tiny),
        freeze=freeze,
        train=train,
        damaged=damaged,
        inconsistent=inconsistent,
        missing=str(root / "no-such-adapter"),
    )


@pytest.fixture(scope="module")
def console(files):
    """`python -m peft_grow.cli ...` run in subprocesses, all started at once: name -> (exit code, stdout, stderr)."""
    cases = {
        "plan": ["plan", os.path.join(files["gemma"], "config.json"), "--layers", "all", "--k", "2"],
        "inconsistent": ["inspect", files["inconsistent"]],
        "damaged": ["inspect", files["damaged"]],
        "bad_k": ["plan", files["gemma"], "--k", "1"],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "peft_grow.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in cases.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return results


# -- the console command, in subprocesses --------------------------------------------------------------------


@pytest.mark.slow
def test_console_plan_gemma3_1b(console):
    code, out, err = console["plan"]
    assert code == 0, err
    assert "999,885,952" in out and "621,084,672" in out
    assert "62.1%" in out
    assert "LoRA r=762" in out and "LoRA r=16" in out and "full fine-tuning" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_console_inspect_inconsistent(console):
    code, out, err = console["inconsistent"]
    assert code == 1
    assert "INCONSISTENT" in out and "model.layers.2.mlp.down_proj lacks grow_new_weight" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_console_damaged_adapter(console):
    code, out, err = console["damaged"]
    assert_one_line_error(code, err)
    assert "not a readable safetensors file" in err
    assert out == ""


@pytest.mark.slow
def test_console_bad_argument(console):
    code, _, err = console["bad_k"]
    assert_one_line_error(code, err)
    assert "--k" in err


# -- plan ------------------------------------------------------------------------------------------------------


def test_plan_tiny_config(capsys, files):
    code, out, err = run(capsys, "plan", files["tiny"], "--mode", "train", "--k", "3", "--dtype", "float32")
    assert code == 0, err
    assert "G-Train k=3" in out and "3 of 3 layers of model.layers" in out
    assert "full fine-tuning" in out and "100.0%" in out


def test_plan_gemma3_1b_ten_layers(capsys, files):
    code, out, err = run(capsys, "plan", files["gemma"], "--layers", ",".join(map(str, range(10))))
    assert code == 0, err
    assert "23.9%" in out and "238,878,720" in out
    assert "10 of 26 layers of model.layers (0-9)" in out


def test_plan_negative_layer_index(capsys, files):
    code, out, _ = run(capsys, "plan", files["tiny"], "--layers", "-1")
    assert code == 0
    assert "1 of 3 layers of model.layers (2)" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--k", "1"], "--k"),
        (["--k", "two"], "--k"),
        (["--mode", "bogus"], "--mode"),
        (["--dtype", "int8"], "--dtype"),
        (["--layers", "0,x"], "--layers"),
        (["--layers", "7"], "out of range"),
        (["--layers", "1,1"], "repeated"),
        (["--bogus"], "--bogus"),
    ],
)
def test_plan_bad_arguments(capsys, files, args, message):
    code, out, err = run(capsys, "plan", files["tiny"], *args)
    assert_one_line_error(code, err)
    assert message in err
    assert out == ""


def test_plan_bad_model_paths(capsys, files, tmp_path):
    for path in (files["missing"], tmp_path, os.path.join(files["missing"], "config.json")):
        code, _, err = run(capsys, "plan", path)
        assert_one_line_error(code, err)
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = run(capsys, "plan", tmp_path)
    assert_one_line_error(code, err)


def test_plan_unsupported_architecture(capsys, tmp_path):
    config = AutoConfig.for_model("jetmoe", hidden_size=32, intermediate_size=40, num_hidden_layers=2)
    config.save_pretrained(tmp_path)
    code, _, err = run(capsys, "plan", tmp_path)
    assert_one_line_error(code, err)
    assert "jetmoe" in err and "layout of their own" in err


def test_plan_counts_the_experts_of_a_mixture_of_experts_model(capsys, tmp_path):
    config = AutoConfig.for_model("mixtral", hidden_size=32, intermediate_size=40, num_hidden_layers=2)
    config.save_pretrained(tmp_path)
    code, out, _ = run(capsys, "plan", tmp_path)
    assert code == 0
    assert "61,440" in out  # 8 experts x 2 layers x (2*40*32 up rows + 32*40 down columns)
    assert "2 MLPs: 2 of 2 layers" in out and "8 experts, each hidden 32, width 40 -> 80" in out


# -- inspect ---------------------------------------------------------------------------------------------------


def test_inspect_freeze_adapter(capsys, files):
    code, out, err = run(capsys, "inspect", files["freeze"])
    assert code == 0, out + err
    for expected in ("GROW", "freeze", "[0, 2]", "model.layers.[0,2].mlp.gate_proj (up)", "down_proj (down)", "F32"):
        assert expected in out
    assert "tensors         6," in out
    assert "verdict: consistent" in out


def test_inspect_reports_sizes(files):
    report = inspect_adapter(files["train"])
    h, p = 32, 40  # G-Train k=2 on 2 layers: gate and up each get a delta [p, h] and one copy [p, h]
    assert sum(t.numel for t in report.tensors) == 2 * 2 * 2 * p * h
    assert sum(t.nbytes for t in report.tensors) == 4 * 2 * 2 * 2 * p * h
    assert {t.dtype for t in report.tensors} == {"F32"}
    assert report.roles["model.layers.0.mlp.down_proj"] == "down"
    assert report.consistent, report.problems


@pytest.mark.parametrize(
    "name,config",
    [
        ("llama", dict(k=3, mode="freeze")),
        ("llama", dict(k=2, mode="freeze", init="zero")),
        ("gpt2", dict(k=3, mode="train", symmetry_noise=0.1)),  # Conv1D layout, biases, the frozen noise
        ("opt", dict(k=2, mode="train", init="zero")),
        ("phi3", dict(k=3, mode="freeze", symmetry_noise=0.1)),  # fused gate_up_proj
        ("phi3", dict(k=2, mode="train")),
        ("t5-gated", dict(k=2, mode="freeze")),  # two stacks
    ],
)
def test_inspect_accepts_every_layout(tmp_path, name, config):
    report = inspect_adapter(save_adapter(tmp_path, name, layers=[0, 1], **config))
    assert report.consistent, report.problems


@pytest.mark.parametrize(
    "mode,change,problem",
    [
        ("freeze", dict(drop=["layers.0.mlp.up_proj"]), "model.layers.0.mlp.up_proj lacks grow_new_weight"),
        ("train", dict(drop=["layers.2.mlp.gate_proj.grow_delta"]), "gate_proj lacks grow_delta_weight"),
        ("train", dict(config=dict(k=3)), "grow_new_weight (40 = (k-1)*chunks*p) gives p=20, but"),
        ("freeze", dict(config=dict(mode="train")), "lacks grow_delta_weight"),
        ("train", dict(config=dict(mode="freeze")), "grow_delta_weight, which mode='freeze'"),
        ("freeze", dict(config=dict(peft_type="LORA")), "peft_type is 'LORA'"),
        ("freeze", dict(config=dict(k=1)), "k is 1"),
        ("freeze", dict(config=dict(layers=[0])), "target_modules grow layers 2"),
        ("freeze", dict(config=dict(target_modules=["model.layers.0.mlp.gate_proj"])), "belongs to no module"),
        ("freeze", dict(add={"base_model.model.lm_head.weight": [[1.0]]}), "not a grow tensor"),
        ("freeze", dict(add={"base_model.model.model.layers.0.mlp.up_proj.grow_new_weight": [[1.0] * 32] * 41}), "41"),
    ],
)
def test_inspect_finds_inconsistencies(tmp_path, mode, change, problem):
    import torch

    folder = save_adapter(tmp_path, layers=[0, 2], mode=mode)
    if "add" in change:
        change = dict(change, add={name: torch.tensor(value) for name, value in change["add"].items()})
    rewrite(folder, **change)
    report = inspect_adapter(folder)
    assert not report.consistent
    assert any(problem in line for line in report.problems), report.problems


def test_inspect_inconsistent_exit_code(capsys, files):
    code, out, _ = run(capsys, "inspect", files["inconsistent"])
    assert code == 1
    assert "verdict: INCONSISTENT (1 problem(s))" in out


def test_inspect_unreadable_inputs(capsys, files, tmp_path):
    code, out, err = run(capsys, "inspect", files["missing"])
    assert_one_line_error(code, err)
    assert "no such folder" in err and out == ""

    code, _, err = run(capsys, "inspect", files["damaged"])
    assert_one_line_error(code, err)

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "inspect", empty)
    assert_one_line_error(code, err)
    assert "adapter_config.json" in err

    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("{")
    code, _, err = run(capsys, "inspect", bad_json)
    assert_one_line_error(code, err)
    assert "not valid JSON" in err

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"peft_type": "GROW"}')
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    code, _, err = run(capsys, "inspect", pickled)
    assert_one_line_error(code, err)
    assert "pickle" in err


# -- help and usage --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["plan"], ["inspect"], ["merge"], ["rank-layers"]])
def test_help_for_every_command(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert "Usage" in out


def test_usage_errors(capsys):
    code, _, err = run(capsys, "bogus")
    assert_one_line_error(code, err)
    assert "No such command" in err
    code, _, err = run(capsys, "plan")
    assert_one_line_error(code, err)
    assert "Missing argument" in err
    code, out, err = run(capsys)  # no command: the help; exit code 2 from click 8.2 on, 0 before
    assert code in (0, 2) and "Usage" in out + err
