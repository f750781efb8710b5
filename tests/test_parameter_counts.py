"""Trainable parameter counts equal the closed-form counts, and the paper-scale figures in DESIGN.md."""

import pytest
import torch
from helpers import GEMMA3_1B, tiny_model
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from peft_grow import GrowConfig, find_mlps


def closed_form_trainable(model, config) -> int:
    """(k-1) copies of the up side (weights and biases) and of the down weights for G-Freeze; the whole up side
    k times (delta on the original rows plus k-1 copies) for G-Train, plus the zero-init new down columns."""
    k, total = config.k, 0
    for mlp in find_mlps(model, config.mlp_layout, config.layers, config.exclude_modules):
        up = sum(p.numel() for name in mlp.up for p in model.get_submodule(name).parameters())
        down = model.get_submodule(mlp.down).weight.numel()
        if config.mode == "freeze":
            total += (k - 1) * (up + down)
        else:
            total += k * up + ((k - 1) * down if config.init == "zero" else 0)
    return total


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "opt", "t5-gated"])
@pytest.mark.parametrize("mode,init", [("freeze", "copy"), ("train", "copy"), ("train", "zero")])
@pytest.mark.parametrize("k", [2, 3])
def test_trainable_count_is_closed_form(name, mode, init, k):
    base = tiny_model(name)
    base_total = sum(p.numel() for p in base.parameters())
    config = GrowConfig(layers=[0, -1], k=k, mode=mode, init=init)
    expected = closed_form_trainable(base, config)
    grown = get_peft_model(base, config)
    trainable, _ = grown.get_nb_trainable_parameters()
    summary = grown.base_model.growth_summary()
    assert trainable == summary.trainable_params == expected
    assert summary.base_params == base_total
    # everything trained is new, except nothing: base weights are never trained
    assert all(not p.requires_grad for n, p in grown.named_parameters() if "grow_" not in n)


# (model_type, config kwargs, total params, MLP params per layer, share all layers, share 10 layers): DESIGN.md
PAPER_MODELS = [
    (
        "gemma3_text",
        GEMMA3_1B,
        999_885_952,
        23_887_872,
        0.621,
        0.239,
    ),
    (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            vocab_size=128256,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            tie_word_embeddings=True,
        ),
        1_235_814_400,
        50_331_648,
        0.652,
        0.407,
    ),
    (
        "qwen3",
        dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            vocab_size=151936,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
        596_049_920,
        9_437_184,
        0.443,
        0.158,
    ),
]


@pytest.mark.parametrize("model_type,kwargs,total,mlp,share_all,share_10", PAPER_MODELS, ids=lambda v: str(v)[:12])
def test_paper_scale_shares_on_meta_device(model_type, kwargs, total, mlp, share_all, share_10):
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in base.parameters()) == total
    grown = get_peft_model(base, GrowConfig(k=2, mode="freeze"))
    summary = grown.base_model.growth_summary()
    assert summary.base_params == total
    assert summary.trainable_params == config.num_hidden_layers * mlp
    assert round(summary.trainable_share, 3) == share_all

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    grown = get_peft_model(base, GrowConfig(layers=list(range(10)), k=2, mode="freeze"))
    assert round(grown.base_model.growth_summary().trainable_share, 3) == share_10
