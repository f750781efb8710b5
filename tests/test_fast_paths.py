"""The fast paths of the grown layers, checked against the straightforward computation and counted operator by
operator: in-place inference, decoding, block views, hooks, autocast and compilation."""

import copy
from collections import Counter

import pytest
import torch
import torch._dynamo as dynamo
from helpers import DEVICE, logits, sample_inputs, tiny_model
from peft import get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from peft_grow import GrowConfig, GrowDownLayer, GrowUpLayer
from peft_grow.tuner._fast_paths import IN_PLACE_MIN_ROWS


def grown_ups(model) -> list[GrowUpLayer]:
    return [m for m in model.modules() if isinstance(m, GrowUpLayer)]


class OpRecorder(TorchDispatchMode):
    """Records the operators that run."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "opt", "gpt_neox"])  # plain, fused gate/up, Conv1D, biases
@pytest.mark.parametrize("mode", ["freeze", "train"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_in_place_inference_equals_the_autograd_path(name, mode, k, dtype):
    config = GrowConfig(k=k, mode=mode, init_weights=False)
    # new weights in the model's dtype, as loaded for inference (in mixed dtypes the output is concatenated)
    model = get_peft_model(tiny_model(name, dtype=dtype), config, autocast_adapter_dtype=False).eval()
    hidden = model.config.hidden_size if name != "gpt2" else model.config.n_embd
    for rows in (1, IN_PLACE_MIN_ROWS):  # decode-sized inputs concatenate, larger ones are written in place
        x = torch.randn(rows, 1, hidden, dtype=dtype, device=DEVICE)
        for layer in grown_ups(model):
            with torch.no_grad(), OpRecorder() as recorder:
                fast = layer(x)
            slow = layer(x).detach()  # grad enabled: the concatenating path autograd records
            assert (torch.ops.aten.cat.default in recorder.ops) == (rows < IN_PLACE_MIN_ROWS), rows
            assert fast.is_contiguous() and fast.shape == slow.shape
            assert torch.equal(fast, slow)


@pytest.mark.slow
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


class LoggingLinear(nn.Linear):
    """An nn.Linear subclass with a forward of its own (as quantized layers have), which must run."""

    calls: list = []

    def forward(self, x):
        self.calls.append(self)
        return super().forward(x)


@pytest.mark.parametrize("rows", [1, IN_PLACE_MIN_ROWS])
@pytest.mark.parametrize("wrapped", ["hooked", "subclass"])
def test_a_module_with_its_own_behaviour_is_still_called(wrapped, rows):
    """A hook on the wrapped module (accelerate's offloading uses one) or a subclass's own forward must run, at
    inference and in training: the grown layers then call the module instead of applying its arithmetic."""
    base = tiny_model("llama")
    calls = LoggingLinear.calls = []
    mlp = base.model.layers[1].mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        linear = getattr(mlp, name)
        if wrapped == "hooked":
            linear.register_forward_pre_hook(lambda module, args: calls.append(module))
        else:
            replacement = LoggingLinear(linear.in_features, linear.out_features, bias=False, device=DEVICE)
            replacement.load_state_dict(linear.state_dict())
            setattr(mlp, name, replacement)
    ids = torch.randint(3, base.config.vocab_size, (rows, 1), device=DEVICE)
    expected = logits(base, {"input_ids": ids})
    model = get_peft_model(base, GrowConfig(layers=[1])).eval()
    calls.clear()  # growth's self-check has run the MLP too
    with torch.no_grad():
        grown = model(input_ids=ids).logits
    assert len(calls) == 3  # gate, up and down
    assert torch.equal(grown, model(input_ids=ids).logits.detach()) and len(calls) == 6
    torch.testing.assert_close(grown, expected, atol=1e-5, rtol=1e-5)  # still the base function


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


@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_the_down_projection_reads_its_blocks_in_place(mode):
    """Each block of the wide activation is a strided view that the matmuls read as it is: no copy of the
    activation, forward or backward."""
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=3, mode=mode, symmetry_noise=0.1))
    down = next(m for m in model.modules() if isinstance(m, GrowDownLayer))
    x = torch.randn(4, 5, 3 * down.base_layer.in_features, device=DEVICE, requires_grad=True)
    with OpRecorder() as recorder:
        down(x).square().sum().backward()
    copies = {torch.ops.aten.clone.default, torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}
    assert x.grad is not None and not copies & set(recorder.ops)


def test_decoding_runs_two_matmuls_per_grown_projection_and_no_copies():
    """The operators a grown gated MLP dispatches for one decoded token, against the merged MLP: one more matmul
    per projection, a concatenation per up-side projection, one add on the down side, and nothing else that
    touches the data (docs/performance.md)."""
    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[0]), autocast_adapter_dtype=False).eval()
    merged = copy.deepcopy(model).merge_and_unload()
    x = torch.randn(1, 1, model.config.hidden_size, device=DEVICE)
    counts = {}
    for name, mlp in (("grown", model.base_model.model.model.layers[0].mlp), ("merged", merged.model.layers[0].mlp)):
        with torch.no_grad(), OpRecorder() as recorder:
            mlp(x)
        counts[name] = Counter(op.__name__.split(".")[0] for op in recorder.ops)
    data_ops = ("mm", "cat", "add", "mul", "silu", "clone", "copy_", "_to_copy")
    assert {op: counts["merged"][op] for op in data_ops if counts["merged"][op]} == {"mm": 3, "mul": 1, "silu": 1}
    assert {op: counts["grown"][op] for op in data_ops if counts["grown"][op]} == {
        "mm": 6,
        "cat": 2,
        "add": 1,
        "mul": 1,
        "silu": 1,
    }


@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_a_model_grown_on_the_meta_device_infers_shapes(mode):
    """Meta weights with a meta input are a shape-inference forward, not offloading placeholders: no error."""
    config = tiny_model("llama").config
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    model = get_peft_model(base, GrowConfig(mode=mode))
    for rows in (1, IN_PLACE_MIN_ROWS):  # both inference paths, and training
        ids = torch.zeros(rows, 5, dtype=torch.long, device="meta")
        with torch.no_grad():
            out = model(input_ids=ids).logits
        assert out.is_meta and out.shape == (rows, 5, model.config.vocab_size)
    assert model(input_ids=ids).logits.is_meta
