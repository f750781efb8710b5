"""Several grown adapters on one model: add, switch, delete; one active at a time."""

import copy

import pytest
import torch
from helpers import logits, sample_inputs, tiny_model
from peft import get_peft_model

from peft_grow import GrowConfig, GrowLayer


def test_add_switch_delete():
    base = tiny_model("llama")
    inputs = sample_inputs(base)
    expected_base = logits(base, inputs)
    config_a = GrowConfig(layers=[0, 1], k=2, init_weights=False)
    config_b = GrowConfig(layers=[1, 2], k=3, mode="train", init_weights=False)
    torch.manual_seed(0)
    only_a = get_peft_model(copy.deepcopy(base), copy.deepcopy(config_a), adapter_name="a")
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(base), config_a, adapter_name="a")
    model.add_adapter("b", config_b)
    out_a = logits(model, inputs)
    assert torch.equal(out_a, logits(only_a, inputs))  # adding b does not disturb a
    model.set_adapter("b")
    out_b = logits(model, inputs)
    assert (out_a - out_b).abs().max() > 1e-4 and (out_b - expected_base).abs().max() > 1e-4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".b") for n in trainable)
    model.set_adapter("a")
    assert torch.equal(logits(model, inputs), out_a)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), expected_base)
    with pytest.raises(ValueError, match="only one can be active"):
        model.base_model.set_adapter(["a", "b"])
    with pytest.warns(UserWarning, match="Setting active adapter to b"):
        model.delete_adapter("a")
    assert model.active_adapters == ["b"]
    assert torch.equal(logits(model, inputs), out_b)
    assert all("a" not in m.grow_settings for m in model.modules() if isinstance(m, GrowLayer))


def test_merge_one_adapter_of_two():
    base = tiny_model("gpt2")
    model = get_peft_model(copy.deepcopy(base), GrowConfig(layers=[0], init_weights=False), adapter_name="a")
    model.add_adapter("b", GrowConfig(layers=[1], k=3, init_weights=False))
    model.set_adapter("b")
    inputs = sample_inputs(base)
    expected = logits(model, inputs)
    padded = copy.deepcopy(model).merge_and_unload(adapter_names=["b"])  # the default layout pads layer 0
    merged = model.merge_and_unload(adapter_names=["b"], layout="per-layer")
    assert (logits(merged, inputs) - expected).abs().max() <= 1e-5
    assert merged.transformer.h[1].mlp.c_fc.weight.shape[1] == 3 * base.transformer.h[1].mlp.c_fc.weight.shape[1]
    assert merged.transformer.h[0].mlp.c_fc.weight.shape == base.transformer.h[0].mlp.c_fc.weight.shape
    width = base.transformer.h[0].mlp.c_fc.weight.shape[1]
    assert torch.equal(padded.transformer.h[0].mlp.c_fc.weight[:, :width], base.transformer.h[0].mlp.c_fc.weight)
    assert padded.transformer.h[0].mlp.c_fc.weight[:, width:].abs().max() == 0  # a is not merged: zero units only
