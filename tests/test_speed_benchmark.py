"""The speed benchmark's bookkeeping at a tiny shape (not its timings), and the fast paths it measures, checked
numerically against the straightforward computation."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from peft import get_peft_model

from peft_grow import GrowConfig, GrowDownLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402


@pytest.fixture(scope="module")
def measured():
    torch.set_num_threads(1)
    return speed.run("tiny", repeats=2, warmup=0, decode_tokens=2)


def test_every_variant_is_measured(measured):
    training, inference, _ = measured
    assert [m.name for m in training] == ["full", "lora", "g-freeze", "g-freeze-1/3", "g-train", "wide-ref"]
    assert len(inference) == 6 and all(len(m.times) == 2 and m.median > 0 for m in training + inference)


def test_memory_bookkeeping_follows_from_the_tensors(measured):
    training, _, _ = measured
    by_name = {m.name: m for m in training}
    base = tiny_model("llama")
    base_params = sum(p.numel() for p in base.parameters())
    full = by_name["full"]
    assert full.trainable == base_params
    assert full.weights == full.gradients == 4 * base_params  # float32 weights and gradients
    assert full.optimizer == 2 * 4 * base_params  # AdamW: two float32 moments
    freeze = by_name["g-freeze"]
    added = freeze.trainable  # G-Freeze trains exactly what it adds
    assert freeze.weights == 4 * (base_params + added) and freeze.gradients == 4 * added
    assert freeze.optimizer == 8 * added and freeze.total_memory < full.total_memory
    assert by_name["g-freeze-1/3"].trainable * 3 == added  # one MLP of three
    assert all(m.activations > 0 for m in training)


def test_report_has_the_ratios(measured):
    training, inference, ids = measured
    text = speed.report("tiny", training, inference, ids)
    assert "| wide-ref |" in text and "1.00x | " in text and "| merged prefill |" in text


@pytest.mark.parametrize("k", [2, 3])
def test_g_train_mean_path_matches_the_explicit_wide_matmul(k):
    """G-Train computes down(x) as W_down @ mean of the k blocks; the straightforward way is the k*p-wide matmul
    with every block W_down / k. Same outputs and same input gradients."""
    model = get_peft_model(tiny_model("gpt2"), GrowConfig(k=k, mode="train"))
    down = next(m for m in model.modules() if isinstance(m, GrowDownLayer))
    weight, bias = down.base_layer.weight, down.base_layer.bias  # Conv1D: [p, h]
    x = torch.randn(3, 5, k * weight.shape[0], requires_grad=True)
    fast = down(x)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    explicit = x @ torch.cat([weight / k] * k, dim=0) + bias
    (explicit_grad,) = torch.autograd.grad(explicit.square().sum(), x)
    assert (fast - explicit).abs().max() <= 1e-5 and (fast_grad - explicit_grad).abs().max() <= 1e-5
