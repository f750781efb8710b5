"""The grown model computes the base model's function at initialisation, on every auto-detected architecture."""

import copy

import pytest
import torch
from helpers import ALL_ARCHITECTURES, logits, sample_inputs, tiny_model
from peft import get_peft_model

from peft_grow import ARCHITECTURES, GrowConfig

MODES_INITS = [(mode, init) for mode in ("freeze", "train") for init in ("copy", "zero")]


def test_every_table_entry_is_tested():
    from helpers import TINY_CONFIGS

    assert set(ARCHITECTURES) == set(TINY_CONFIGS) | {"gemma3"}


@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
def test_float32_preserves_function(name):
    base = tiny_model(name)
    inputs = sample_inputs(base)
    expected = logits(base, inputs)
    for k in (2, 3, 4):
        for mode, init in MODES_INITS:
            grown = get_peft_model(copy.deepcopy(base), GrowConfig(k=k, mode=mode, init=init))
            diff = (logits(grown, inputs) - expected).abs().max().item()
            assert diff <= 1e-5, f"{name} k={k} mode={mode} init={init}: max |logit diff| {diff:.2e}"


@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
def test_bfloat16_k2_is_bit_identical(name):
    base = tiny_model(name, dtype=torch.bfloat16)
    inputs = sample_inputs(base)
    expected = logits(base, inputs)
    for mode, init in MODES_INITS:
        config = GrowConfig(k=2, mode=mode, init=init)
        # new weights kept in the base dtype: the new part then runs the base layer's own bf16 kernel
        grown = get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=False)
        assert torch.equal(logits(grown, inputs), expected), f"{name} mode={mode} init={init}"


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3"])
def test_bfloat16_with_float32_new_weights_stays_within_rounding(name):
    """PEFT's default upcasts new weights to float32; the new part is then computed in float32."""
    base = tiny_model(name, dtype=torch.bfloat16)
    inputs = sample_inputs(base)
    expected = logits(base, inputs).float()
    for k in (2, 3):
        grown = get_peft_model(copy.deepcopy(base), GrowConfig(k=k))
        new_weight = next(p for n, p in grown.named_parameters() if "grow_new_weight" in n)
        assert new_weight.dtype == torch.float32
        diff = (logits(grown, inputs).float() - expected).abs().max().item()
        assert diff <= 0.05 * expected.abs().max().item(), f"k={k}: {diff}"


def test_selected_layers_only_are_grown():
    base = tiny_model("llama")
    grown = get_peft_model(base, GrowConfig(layers=[0, -1]))
    names = grown.base_model.targeted_module_names
    assert {n.split(".")[2] for n in names} == {"0", "2"}
    assert len(names) == 6


def test_gemma3_grows_the_language_model_only():
    grown = get_peft_model(tiny_model("gemma3"), GrowConfig())
    names = grown.base_model.targeted_module_names
    assert names and all("language_model" in n for n in names)
    assert not any("vision" in n for n in names)


def test_t5_grows_both_stacks_and_exclude_modules_drops_one():
    grown = get_peft_model(tiny_model("t5-gated"), GrowConfig(layers=[0]))
    assert {n.split(".")[0] for n in grown.base_model.targeted_module_names} == {"encoder", "decoder"}
    grown = get_peft_model(tiny_model("t5-gated"), GrowConfig(layers=[0], exclude_modules=r"encoder\..*"))
    assert {n.split(".")[0] for n in grown.base_model.targeted_module_names} == {"decoder"}
    # T5 reads wo.weight.dtype: the wrapper must still expose it
    assert grown.base_model.model.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.float32
