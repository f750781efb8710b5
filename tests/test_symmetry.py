"""Copies that start equal and are trained alike stay equal; the zero-sum perturbation lets them separate."""

import copy

import pytest
import torch
from helpers import logits, sample_inputs, tiny_model, train
from peft import get_peft_model

from peft_grow import GrowConfig


def up_blocks(layer, k: int) -> list[torch.Tensor]:
    """The k row blocks of a (non-fused, Linear) grown up projection: original rows (+ delta), then the copies."""
    original = layer.base_layer.weight
    if "default" in layer.grow_delta_weight:
        original = original + layer.grow_delta_weight["default"]
    return [original, *layer.grow_new_weight["default"].chunk(k - 1, dim=0)]


def mlp(model, index: int = 1):
    return model.base_model.model.model.layers[index].mlp


def test_g_freeze_k3_new_copies_never_separate():
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=3, mode="freeze"))
    train(model, steps=50, lr=1e-2, weight_decay=0.1)
    for proj in ("gate_proj", "up_proj"):
        _, copy1, copy2 = up_blocks(getattr(mlp(model), proj), 3)
        assert torch.equal(copy1, copy2)
    down1, down2 = mlp(model).down_proj.grow_new_weight["default"].chunk(2, dim=1)
    assert torch.equal(down1, down2)
    # ... while they did move away from the original rows
    original, copy1, _ = up_blocks(mlp(model).up_proj, 3)
    assert (original - copy1).abs().max() > 1e-3


def test_g_train_is_fine_tuning_the_up_side_alone():
    """With equal frozen down blocks, G-Train's k copies get the same gradient (scaled by 1/k, which Adam
    normalises away) as the plain up projection: the grown model tracks plain up-side fine-tuning."""
    base = tiny_model("llama")
    reference, plain = copy.deepcopy(base), copy.deepcopy(base)
    for name, param in plain.named_parameters():
        param.requires_grad = name.endswith(("gate_proj.weight", "up_proj.weight"))
    grown = get_peft_model(base, GrowConfig(k=2, mode="train"))
    train(plain, steps=20, lr=1e-3, weight_decay=0.0)
    train(grown, steps=20, lr=1e-3, weight_decay=0.0)
    inputs = sample_inputs(base)
    moved = (logits(plain, inputs) - logits(reference, inputs)).abs().max().item()
    gap = (logits(grown, inputs) - logits(plain, inputs)).abs().max().item()
    assert moved > 1e-2 and gap < 1e-2 * moved, (moved, gap)
    original, copy1 = up_blocks(mlp(grown).up_proj, 2)
    assert (original - copy1).abs().max() < 1e-5  # equal up to rounding of delta vs raw accumulation


@pytest.mark.parametrize("mode,k", [("freeze", 3), ("freeze", 4), ("train", 2), ("train", 3)])
def test_symmetry_noise_keeps_function_and_lets_copies_separate(mode, k):
    base = tiny_model("llama")
    inputs = sample_inputs(base)
    expected = logits(base, inputs)
    model = get_peft_model(copy.deepcopy(base), GrowConfig(k=k, mode=mode, symmetry_noise=0.5))
    assert (logits(model, inputs) - expected).abs().max() <= 1e-5
    train(model, steps=30, lr=1e-2, weight_decay=0.0)
    blocks = up_blocks(mlp(model).up_proj, k)
    trained_copies = blocks[1:] if mode == "freeze" else blocks
    assert (trained_copies[0] - trained_copies[1]).abs().max() > 1e-3


def test_symmetry_noise_down_blocks_sum_to_the_original():
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=3, mode="train", symmetry_noise=0.5))
    down = mlp(model).down_proj
    noise = down.grow_noise["default"]
    blocks = noise.chunk(3, dim=1)
    original = down.get_base_layer().weight
    effective = [original / 3 + block for block in blocks]  # G-Train's down blocks: W/k each, plus the noise
    assert torch.allclose(sum(effective), original, atol=1e-6)
    assert all(not torch.allclose(block, original / 3) for block in effective)  # yet each block moved


def test_symmetry_noise_warns_where_it_has_no_effect():
    with pytest.warns(UserWarning, match="no effect"):
        GrowConfig(k=2, mode="freeze", symmetry_noise=0.1)
