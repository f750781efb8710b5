"""What PEFT's generic tester (benchmarks/peft_conformance.py) expects and GROW does otherwise, by design.

Each test names the PEFT tests it answers for; docs/conformance.md has the table. The models are PEFT's `MLP` mock
(lin0 10 -> 20, ReLU, dropout, lin1 20 -> 2), grown as GrowConfig(up_modules=["lin0"], down_modules=["lin1"]),
and tiny decoders from tests/helpers.py.
"""

import copy

import pytest
import torch
from helpers import sample_inputs, tiny_model
from peft import PeftModel, get_peft_model
from torch import nn

from peft_grow import GrowCheckpointError, GrowConfig, GrowLayer

MLP_GROWTH = {"up_modules": ["lin0"], "down_modules": ["lin1"]}


class MLP(nn.Module):
    """PEFT's tests/test_custom_models.py MLP, without the final log-softmax."""

    def __init__(self):
        super().__init__()
        self.lin0, self.relu, self.drop, self.lin1 = nn.Linear(10, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 2)

    def forward(self, X):
        return self.lin1(self.drop(self.relu(self.lin0(X.float()))))


def grown_mlp(dtype: torch.dtype = torch.float32, **config) -> nn.Module:
    torch.manual_seed(0)
    return get_peft_model(MLP().to(dtype), GrowConfig(**MLP_GROWTH, init_weights=False, **config)).eval()


X = torch.arange(90).view(9, 10) / 90


# test_save_pretrained_pickle, test_save_pretrained_selected_adapters_pickle (both files)
@pytest.mark.parametrize("base", ["mlp", "llama"])
def test_pickled_adapters_are_saved_but_refused_at_loading(tmp_path, base):
    """PEFT writes adapter_model.bin with safe_serialization=False; peft-grow loads safetensors only, and refuses
    the pickle (loading it can run arbitrary code) with an error that says how to re-save."""
    make = (lambda: MLP()) if base == "mlp" else (lambda: tiny_model("llama"))
    torch.manual_seed(0)
    model = get_peft_model(make(), GrowConfig(**(MLP_GROWTH if base == "mlp" else {}), init_weights=False))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file() and not (tmp_path / "adapter_model.safetensors").exists()
    with pytest.raises(GrowCheckpointError, match=r"pickle.*safe_serialization=True"):
        PeftModel.from_pretrained(make(), tmp_path)
    model.save_pretrained(tmp_path / "safe")
    loaded = PeftModel.from_pretrained(make(), tmp_path / "safe")
    with pytest.raises(GrowCheckpointError, match="pickle"):
        loaded.load_adapter(tmp_path, adapter_name="other")
    assert list(loaded.peft_config) == ["default"]


# test_adapter_dtype_autocast[*-True-float16/bfloat16-*] (test_custom_models.py)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adapter_loaded_for_inference_keeps_the_base_dtype(tmp_path, dtype):
    """autocast_adapter_dtype=True gives float32 new weights for training (get_peft_model, add_adapter, loading with
    is_trainable=True), as in PEFT; an adapter loaded for inference keeps the base's dtype instead (docs/method.md),
    where PEFT's tester expects float32."""
    model = grown_mlp(dtype)
    model.add_adapter("other", GrowConfig(**MLP_GROWTH))
    assert {p.dtype for n, p in model.named_parameters() if ".grow_" in n} == {torch.float32}
    model.save_pretrained(tmp_path)

    def new_dtypes(is_trainable: bool) -> set:
        loaded = PeftModel.from_pretrained(MLP().to(dtype), tmp_path, is_trainable=is_trainable)
        loaded.load_adapter(tmp_path / "other", adapter_name="other", is_trainable=is_trainable)
        return {p.dtype for n, p in loaded.named_parameters() if ".grow_" in n}

    assert new_dtypes(is_trainable=False) == {dtype}
    assert new_dtypes(is_trainable=True) == {torch.float32}


# test_active_adapter (test_custom_models.py)
def test_two_grown_adapters_cannot_be_active_together():
    """Each grown adapter gives the MLP its own width, so base_model.set_adapter([a, b]) is refused, and the active
    adapter stays as it was."""
    model = grown_mlp()
    model.add_adapter("other", GrowConfig(**MLP_GROWTH, init_weights=False))
    model.set_adapter("other")
    expected = model(X)
    with pytest.raises(ValueError, match="only one can be active at a time"):
        model.base_model.set_adapter(["default", "other"])
    assert model.active_adapters == ["other"]
    assert all(m.active_adapters == ["other"] for m in model.modules() if isinstance(m, GrowLayer))
    assert torch.equal(model(X), expected)


# test_merge_layers_multi (test_decoder_models.py)
@pytest.mark.parametrize("base", ["mlp", "opt"])
def test_two_grown_adapters_cannot_be_merged_together(base):
    """merge_and_unload(adapter_names=[a, b]) is refused before anything is merged; each adapter merges alone."""
    if base == "mlp":
        model, inputs = grown_mlp(), {"X": X}
        second = GrowConfig(**MLP_GROWTH, init_weights=False)
    else:
        torch.manual_seed(0)
        model = get_peft_model(tiny_model("opt"), GrowConfig(init_weights=False)).eval()
        inputs, second = sample_inputs(model), GrowConfig(init_weights=False)
    torch.manual_seed(1)
    model.add_adapter("adapter-2", second)
    model.set_adapter("adapter-2")
    with torch.no_grad():
        expected = model(**inputs)
        expected = expected if isinstance(expected, torch.Tensor) else expected.logits
    shapes = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="Only one grown adapter can be merged into a layer at a time"):
        copy.deepcopy(model).merge_and_unload(adapter_names=["adapter-2", "default"])
    with pytest.raises(ValueError, match="Only one grown adapter can be merged into a layer at a time"):
        model.merge_adapter(adapter_names=["adapter-2", "default"])
    assert not any(m.merged for m in model.modules() if isinstance(m, GrowLayer))
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    merged = model.merge_and_unload(adapter_names=["adapter-2"])
    with torch.no_grad():
        found = merged(**inputs)
        found = found if isinstance(found, torch.Tensor) else found.logits
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)


# test_merge_layers_nan (test_decoder_models.py): PEFT's tester matches PEFT's own wording of the error
def test_safe_merge_of_a_broken_adapter_uses_peft_wording():
    model = tiny_model("opt")
    model = get_peft_model(model, GrowConfig(init_weights=False)).eval()
    for name, parameter in model.named_parameters():
        if ".grow_" in name:
            parameter.data[0] = torch.nan
    with pytest.raises(ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"):
        model.merge_and_unload(safe_merge=True)


# mixed adapter batches (test_mixed_adapter_batches, test_generate_with_mixed_adapter_batches: skipped by the tester
# for every method but LoRA and RoAd)
def test_mixed_adapter_batches_are_refused():
    model = grown_mlp()
    model.add_adapter("other", GrowConfig(**MLP_GROWTH, init_weights=False))
    with pytest.raises(ValueError, match="mixed in one batch"):
        model(X, adapter_names=["default", "other"] * 4 + ["default"])


def test_grow_targets_come_from_up_and_down_modules_not_target_modules():
    """Tester assumption: PEFT's config-class-only tests (test_set_requires_grad, test_set_adapter_non_overlapping_*,
    test_multiple_active_adapters_*) build every method's config from `target_modules` alone, on DeepMLP (layers.N
    with lin0, lin1). GROW needs an up/down pair; an unknown layout is refused with the Linear layers it found, and
    the same model grows with up_modules / down_modules."""
    from peft_grow import UnsupportedArchitectureError

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin0, self.relu, self.lin1 = nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)

        def forward(self, x):
            return self.lin1(self.relu(self.lin0(x)))

    class DeepMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block() for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    base, x = DeepMLP().eval(), torch.randn(4, 16)
    with pytest.raises(UnsupportedArchitectureError, match="lin0, lin1"):
        get_peft_model(copy.deepcopy(base), GrowConfig(target_modules=["layers.0.lin0"]))
    model = get_peft_model(copy.deepcopy(base), GrowConfig(**MLP_GROWTH, layers=[0]))
    assert model.peft_config["default"].target_modules == ["layers.0.lin0", "layers.0.lin1"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), atol=1e-6, rtol=1e-6)
