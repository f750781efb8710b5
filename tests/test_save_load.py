"""save_pretrained writes only what was trained; a fresh process reloads it to the same logits, bit for bit."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import DEVICE, logits, sample_inputs, tiny_model, train
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from peft_grow import GrowConfig, GrowUpLayer
from peft_grow.tuner._fast_paths import IN_PLACE_MIN_ROWS

# name -> (architecture, dtype, config)
CASES = {
    "llama-fp32-freeze": ("llama", torch.float32, GrowConfig(layers=[0, 2], k=3, mode="freeze")),
    "llama-bf16-train-noise": ("llama", torch.bfloat16, GrowConfig(layers=[1], k=2, mode="train", symmetry_noise=0.3)),
    "gpt2-fp32-train": ("gpt2", torch.float32, GrowConfig(layers=[0, 1], k=2, mode="train")),
    "phi3-bf16-freeze-zero": ("phi3", torch.bfloat16, GrowConfig(k=2, mode="freeze", init="zero")),
}

RELOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    import peft_grow  # registers GROW with PEFT
    from peft import AutoPeftModelForCausalLM, PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    root, device = sys.argv[1], sys.argv[2]
    out = {}
    for name, dtype in json.load(open(f"{root}/cases.json")).items():
        dtype = getattr(torch, dtype)
        ids = load_file(f"{root}/{name}/inputs.safetensors")["input_ids"].to(device)
        base = AutoModelForCausalLM.from_pretrained(f"{root}/{name}/base", dtype=dtype).to(device)
        # is_trainable=True keeps the float32 new weights that training used; loading for inference would round
        # them to a bfloat16 base's dtype (test_loading_for_inference_gives_new_weights_in_the_base_dtype...)
        model = PeftModel.from_pretrained(base, f"{root}/{name}/adapter", is_trainable=True).eval()
        with torch.no_grad():
            out[f"{name}/peft"] = model(input_ids=ids).logits.cpu()
        model = AutoPeftModelForCausalLM.from_pretrained(f"{root}/{name}/adapter", dtype=dtype, is_trainable=True)
        model = model.to(device).eval()
        with torch.no_grad():
            out[f"{name}/auto"] = model(input_ids=ids).logits.cpu()
    save_file(out, f"{root}/reloaded.safetensors")
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Train each case a little, save base and adapter, then reload all of them in one fresh process."""
    root = tmp_path_factory.mktemp("adapters")
    expected, models = {}, {}
    for name, (arch, dtype, config) in CASES.items():
        tiny_model(arch, dtype=dtype).save_pretrained(root / name / "base")
        base = AutoModelForCausalLM.from_pretrained(root / name / "base", dtype=dtype).to(DEVICE)
        model = get_peft_model(base, config)
        train(model, steps=3, lr=1e-2)
        inputs = sample_inputs(model)
        save_file({"input_ids": inputs["input_ids"].cpu().contiguous()}, root / name / "inputs.safetensors")
        expected[name] = logits(model, inputs).cpu()
        model.save_pretrained(root / name / "adapter")
        models[name] = model
    (root / "cases.json").write_text(json.dumps({n: str(c[1]).removeprefix("torch.") for n, c in CASES.items()}))
    subprocess.run([sys.executable, "-c", RELOAD, str(root), str(DEVICE)], check=True)
    with safe_open(root / "reloaded.safetensors", framework="pt") as f:
        reloaded = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    return root, expected, reloaded, models


@pytest.mark.parametrize("name", CASES)
def test_adapter_file_holds_only_trained_tensors(saved, name):
    root, _, _, models = saved
    model = models[name]
    expected = {n.removesuffix(".default"): tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad} | {
        n.removesuffix(".default"): tuple(b.shape) for n, b in model.named_buffers() if ".grow_noise." in n
    }
    with safe_open(root / name / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    assert found == expected
    assert all(".grow_" in key for key in found)
    if CASES[name][2].symmetry_noise:  # G-Train's frozen perturbation is part of the adapter's function
        assert any(".grow_noise" in key for key in found)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("loader", ["peft", "auto"])
def test_fresh_process_reproduces_logits_exactly(saved, name, loader):
    _, expected, reloaded, _ = saved
    assert torch.equal(reloaded[f"{name}/{loader}"], expected[name])


def test_config_round_trips_through_json(saved):
    root, _, _, _ = saved
    config = GrowConfig.from_pretrained(root / "llama-bf16-train-noise" / "adapter")
    assert (config.k, config.mode, config.init, config.symmetry_noise, config.layers) == (2, "train", "copy", 0.3, [1])
    assert config.peft_type == "GROW"
    assert config.base_model_name_or_path.endswith("base")


def test_loading_in_process_with_low_cpu_mem_usage(saved):
    root, expected, _, _ = saved
    name = "gpt2-fp32-train"
    base = AutoModelForCausalLM.from_pretrained(root / name / "base").to(DEVICE)
    model = PeftModel.from_pretrained(base, root / name / "adapter", low_cpu_mem_usage=True)
    inputs = sample_inputs(model)
    assert torch.equal(logits(model, inputs).cpu(), expected[name])


@pytest.mark.parametrize("name", ["llama-bf16-train-noise", "phi3-bf16-freeze-zero"])
def test_loading_for_inference_gives_new_weights_in_the_base_dtype_and_training_float32(saved, name):
    """PeftModel.from_pretrained loads for inference by default: the new weights take the base's dtype; loading
    for training (is_trainable=True) keeps PEFT's float32 master weights."""
    root, _, _, _ = saved
    for trainable, dtype in ((False, torch.bfloat16), (True, torch.float32)):
        base = AutoModelForCausalLM.from_pretrained(root / name / "base", dtype=torch.bfloat16).to(DEVICE)
        model = PeftModel.from_pretrained(base, root / name / "adapter", is_trainable=trainable)
        new = [p for n, p in model.named_parameters() if ".grow_" in n]
        assert new and {p.dtype for p in new} == {dtype}


@pytest.mark.parametrize("name", ["llama-bf16-train-noise", "phi3-bf16-freeze-zero"])
def test_loading_for_bf16_inference_keeps_the_new_weights_in_bf16(saved, name):
    """PeftModel.from_pretrained(..., autocast_adapter_dtype=False): the saved float32 new weights load in the
    base's bfloat16, so inference runs every matmul in bfloat16 on the in-place path (docs/performance.md)."""
    root, expected, _, _ = saved
    base = AutoModelForCausalLM.from_pretrained(root / name / "base", dtype=torch.bfloat16).to(DEVICE)
    model = PeftModel.from_pretrained(base, root / name / "adapter", autocast_adapter_dtype=False)
    new = {n: p for n, p in model.named_parameters() if ".grow_" in n}
    assert new and all(p.dtype == torch.bfloat16 for p in new.values())
    inputs = sample_inputs(model)
    with torch.no_grad():
        for up in (m for m in model.modules() if isinstance(m, GrowUpLayer)):
            x = torch.ones(IN_PLACE_MIN_ROWS, up.base_layer.in_features, dtype=torch.bfloat16, device=DEVICE)
            settings, new_weight = up.grow_settings["default"], up.grow_new_weight["default"]
            assert up._writes_in_place(x, "default", settings, up.base_layer.weight, new_weight)
    close = logits(model, inputs).float().cpu()
    reference = expected[name].float()
    assert (close - reference).abs().max() <= 0.05 * reference.abs().max()  # bf16 rounding of the new weights
