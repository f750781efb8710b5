"""Inference writes each block of a grown up-side output in place; it must equal the training-time path."""

import pytest
import torch
import torch._dynamo as dynamo
from conftest import DEVICE, sample_inputs, tiny_model
from peft import get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode

from peft_grow import GrowConfig, GrowDownLayer, GrowUpLayer


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


class UpcastRecorder(TorchDispatchMode):
    """Records the shapes of the tensors that are cast from bfloat16 to float32."""

    def __init__(self):
        super().__init__()
        self.upcast = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        upcast = func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float32
        if upcast and args[0].dtype == torch.bfloat16:
            self.upcast.append(tuple(args[0].shape))
        return func(*args, **kwargs)


@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_autocast_training_does_not_upcast_activations(mode):
    """A bfloat16 model with PEFT's float32 new weights, trained under autocast: autocast casts the weights for
    each matmul, and no activation is copied to float32 on the way, forward or backward."""
    model = get_peft_model(tiny_model("llama", dtype=torch.bfloat16), GrowConfig(mode=mode, symmetry_noise=0.01))
    for layer in model.modules():
        if not isinstance(layer, (GrowUpLayer, GrowDownLayer)):
            continue
        width = layer.base_layer.in_features * (2 if isinstance(layer, GrowDownLayer) else 1)
        x = torch.randn(3, 7, width, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
        with UpcastRecorder() as recorder:
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                out = layer(x)
            out.square().sum().backward()
        assert x.grad is not None
        assert not [shape for shape in recorder.upcast if shape[:2] == (3, 7) or shape[0] == 21], type(layer)
