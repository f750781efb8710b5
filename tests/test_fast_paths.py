"""Inference writes each block of a grown up-side output in place; it must equal the training-time path."""

import pytest
import torch
import torch._dynamo as dynamo
from conftest import DEVICE, sample_inputs, tiny_model
from peft import get_peft_model

from peft_grow import GrowConfig, GrowUpLayer


def grown_ups(model) -> list[GrowUpLayer]:
    return [m for m in model.modules() if isinstance(m, GrowUpLayer)]


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "opt", "gpt_neox"])  # plain, fused gate/up, Conv1D, biases
@pytest.mark.parametrize("mode", ["freeze", "train"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_in_place_inference_equals_the_autograd_path(name, mode, k, dtype):
    model = get_peft_model(tiny_model(name, dtype=dtype), GrowConfig(k=k, mode=mode, init_weights=False))
    model.eval()
    x = torch.randn(
        2, 5, model.config.hidden_size if name != "gpt2" else model.config.n_embd, dtype=dtype, device=DEVICE
    )
    for layer in grown_ups(model):
        with torch.no_grad():
            fast = layer(x)
        slow = layer(x).detach()  # grad enabled: the concatenating path autograd records
        assert fast.is_contiguous() and fast.shape == slow.shape
        assert torch.equal(fast, slow)


def test_whole_model_inference_matches_and_compiles():
    model = get_peft_model(tiny_model("llama", num_hidden_layers=1), GrowConfig(k=3, mode="train", init_weights=False))
    model.eval()
    inputs = sample_inputs(model)
    with torch.no_grad():
        fast = model(**inputs).logits
        compiled = torch.compile(model)(**inputs).logits
    slow = model(**inputs).logits.detach()
    dynamo.reset()
    assert torch.equal(fast, slow)
    torch.testing.assert_close(compiled, slow, atol=1e-5, rtol=1e-5)


def test_autocast_inference_keeps_the_casting_path():
    """Autocast does not cast out= matmuls, so under autocast inference takes the same path as training."""
    model = get_peft_model(tiny_model("llama"), GrowConfig(init_weights=False)).eval()
    inputs = sample_inputs(model)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        with torch.no_grad():
            fast = model(**inputs).logits
        slow = model(**inputs).logits.detach()
    assert torch.equal(fast, slow)


def test_a_hooked_base_layer_is_still_called_at_inference():
    """A hook on the wrapped module (accelerate's offloading uses one) must run: the in-place path stands aside."""
    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[1], init_weights=False)).eval()
    up = grown_ups(model)[0]
    calls = []
    up.get_base_layer().register_forward_pre_hook(lambda module, args: calls.append(1))
    inputs = sample_inputs(model)
    with torch.no_grad():
        hooked = model(**inputs).logits
    assert calls and torch.equal(hooked, model(**inputs).logits.detach())
