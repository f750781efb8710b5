"""merge_and_unload gives plain, wider modules with the adapter's function; unmerge restores every bit."""

import copy

import pytest
import torch
from helpers import logits, sample_inputs, tiny_model
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_grow import GrowConfig, GrowLayer

SETTINGS = [
    dict(mode="freeze", init="copy", k=2),
    dict(mode="freeze", init="copy", k=3, symmetry_noise=0.2),
    dict(mode="train", init="copy", k=2),
    dict(mode="train", init="copy", k=3, symmetry_noise=0.2),
    dict(mode="freeze", init="zero", k=2),
    dict(mode="train", init="zero", k=3),
]


def perturbed(name: str, dtype=torch.float32, **settings):
    """A grown model whose adapter is not an identity (PEFT's init_weights=False convention)."""
    base = tiny_model(name, dtype=dtype)
    return base, get_peft_model(copy.deepcopy(base), GrowConfig(layers=[0, -1], init_weights=False, **settings))


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "opt", "t5-gated"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_merge_and_unload_matches_the_adapter_model(name, settings):
    base, model = perturbed(name, **settings)
    inputs = sample_inputs(model)
    expected = logits(model, inputs)
    assert (expected - logits(base, inputs)).abs().max() > 1e-4  # the adapter does something
    merged = model.merge_and_unload()
    assert not any(isinstance(m, GrowLayer) for m in merged.modules())
    assert (logits(merged, inputs) - expected).abs().max() <= 1e-5
    k = settings["k"]
    for module_name, module in merged.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and module_name in dict(base.named_modules()):
            before = dict(base.named_modules())[module_name].weight.shape
            grown = module.weight.shape != before
            assert not grown or module.weight.numel() == k * before.numel()
            if isinstance(module, nn.Linear):
                assert (module.out_features, module.in_features) == tuple(module.weight.shape)
            else:
                assert (module.nx, module.nf) == tuple(module.weight.shape)


def test_merge_keeps_dtype():
    _, model = perturbed("llama", dtype=torch.bfloat16, k=2)
    merged = model.merge_and_unload()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3"])
@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_merge_then_unmerge_restores_every_tensor_bitwise(name, mode):
    _, model = perturbed(name, k=3, mode=mode)
    inputs = sample_inputs(model)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    unmerged_logits = logits(model, inputs)
    model.merge_adapter()
    assert any(m.merged for m in model.modules() if isinstance(m, GrowLayer))
    assert (logits(model, inputs) - unmerged_logits).abs().max() <= 1e-5
    model.unmerge_adapter()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert torch.equal(logits(model, inputs), unmerged_logits)


def test_disable_adapter_gives_the_base_model_exactly_even_when_merged():
    base, model = perturbed("gpt2", k=2, mode="train")
    inputs = sample_inputs(model)
    expected = logits(base, inputs)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), expected)
    model.merge_adapter()
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), expected)


def test_safe_merge_refuses_nan_and_merges_nothing():
    _, model = perturbed("llama", k=2)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        layer.grow_new_weight["default"][0, 0] = float("nan")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_adapter(safe_merge=True)
    assert not layer.merged
    assert {n: p.shape for n, p in model.named_parameters()} == shapes


def test_safe_merge_and_unload_refuses_nan_and_unloads_nothing():
    _, model = perturbed("llama", k=2)
    layer = model.base_model.model.model.layers[-1].mlp.down_proj
    with torch.no_grad():
        layer.grow_new_weight["default"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_and_unload(safe_merge=True)
    assert sum(isinstance(m, GrowLayer) for m in model.modules()) == 6
    assert not any(m.merged for m in model.modules() if isinstance(m, GrowLayer))
