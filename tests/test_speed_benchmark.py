"""The speed benchmark's bookkeeping at a tiny shape (not its timings), and the fast paths it measures, checked
numerically against the straightforward computation."""

import json
from dataclasses import asdict

import pytest
import torch
from helpers import tiny_model
from peft import get_peft_model

from benchmarks import speed
from peft_grow import GrowConfig, GrowDownLayer


@pytest.fixture(scope="module")
def measured():
    torch.set_num_threads(1)
    return speed.run("tiny", repeats=2, warmup=0, decode_tokens=2)


def test_every_variant_is_measured(measured):
    training, inference, _ = measured
    assert [m.name for m in training] == [
        *["full", "lora", "g-freeze", "g-freeze-1/3", "g-train", "wide-ref"],
        *["full+guard", "lora+guard", "g-freeze+guard"],
    ]
    assert len(inference) == 8 and all(len(m.times) == 2 and m.median > 0 for m in training + inference)


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
    text = speed.report("tiny", training, inference, ids.device)
    assert "| wide-ref |" in text and "1.00x | " in text and "| merged prefill |" in text


@pytest.mark.parametrize("k", [2, 3])
def test_g_train_mean_path_matches_the_explicit_wide_matmul(k):
    """G-Train computes down(x) as W_down @ mean of the k blocks; the straightforward way is the k*p-wide matmul
    with every block W_down / k. Same outputs and same input gradients."""
    model = get_peft_model(tiny_model("gpt2"), GrowConfig(k=k, mode="train"))
    down = next(m for m in model.modules() if isinstance(m, GrowDownLayer))
    weight, bias = down.base_layer.weight, down.base_layer.bias  # Conv1D: [p, h]
    x = torch.randn(3, 5, k * weight.shape[0], device=weight.device, requires_grad=True)
    fast = down(x)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    explicit = x @ torch.cat([weight / k] * k, dim=0) + bias
    (explicit_grad,) = torch.autograd.grad(explicit.square().sum(), x)
    assert (fast - explicit).abs().max() <= 1e-5 and (fast_grad - explicit_grad).abs().max() <= 1e-5


def test_half_precision_setting_trains_under_autocast_and_measures_fp32_new_weights(monkeypatch):
    """The GPU setting's code path (bfloat16, Gemma3 text) at a tiny shape on CPU: training keeps PEFT's float32
    new weights (so float32 gradients and AdamW state), and inference has the row with float32 new weights."""
    tiny = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=1, head_dim=8, vocab_size=96)  # fmt: skip
    monkeypatch.setitem(speed.SETTINGS, "tiny-bf16", ("gemma3_text", tiny, "bfloat16", 2, 16, "cpu"))
    training, inference, ids = speed.run("tiny-bf16", repeats=1, warmup=0, decode_tokens=2)
    freeze = {m.name: m for m in training}["g-freeze"]
    assert freeze.gradients == 4 * freeze.trainable and freeze.optimizer == 8 * freeze.trainable
    names = [m.name for m in inference]
    assert "grown (unmerged, fp32 new weights) decode" in names and len(names) == 10
    text = speed.report("tiny-bf16", training, inference, ids.device)
    assert "| grown (unmerged, fp32 new weights) prefill |" in text


def test_ratios_pair_the_rounds():
    """A ratio is the median of per-round ratios: a slow round slows every variant alike and cancels out."""
    reference = speed.Measurement("ref", times=[1.0, 1.0, 10.0, 1.0, 1.0])
    grown = speed.Measurement("grown", times=[1.1, 1.2, 11.0, 1.1, 1.1])
    ratio, spread = grown.ratio(reference)
    assert ratio == pytest.approx(1.1) and spread == pytest.approx(0.05)


def test_saved_measurements_print_the_same_tables(measured, tmp_path, capsys):
    training, inference, ids = measured
    path = tmp_path / "speed.json"
    path.write_text(
        json.dumps({part: [asdict(m) for m in ms] for part, ms in [("training", training), ("inference", inference)]})
    )
    printed = speed.main(["--setting", "tiny", "--report", str(path)])
    assert printed == speed.report("tiny", training, inference, ids.device) and "| g-freeze |" in printed


def test_gpu_profile_bookkeeping_at_a_tiny_shape():
    """benchmarks/gpu_profile.py on CPU: every variant gets a wall time, a kernel time and a kernel count."""
    from benchmarks import gpu_profile

    base, ids = speed.build_base("tiny")
    decode = gpu_profile.decoding(base, ids, rounds=1)
    assert list(decode) == ["grown (unmerged)", "grown (merge_adapter)", "merged"]
    assert all(wall > 0 and busy > 0 and kernels > 0 for wall, busy, kernels in decode.values())
    assert decode["grown (unmerged)"][2] > decode["merged"][2]  # the unmerged model launches more kernels
    assert "| g-freeze |" in gpu_profile.main(["--setting", "tiny", "--rounds", "1"])


def test_in_place_rows_benchmark_times_both_paths_and_restores_the_threshold():
    from benchmarks import in_place_rows
    from peft_grow.tuner import _fast_paths as fast_paths

    default = fast_paths.IN_PLACE_MIN_ROWS
    text = in_place_rows.main(["--setting", "tiny", "--rounds", "1", "--batches", "2", "--tokens", "16"])
    assert "| decode, 2 sequences after 128 tokens | 2 |" in text and "| forward, 1 x 16 tokens | 16 |" in text
    assert default == fast_paths.IN_PLACE_MIN_ROWS


def test_the_guard_rows_count_a_second_model_only_for_full_fine_tuning(measured):
    training, inference, ids = measured
    by_name = {m.name: m for m in training}
    for name in ("lora", "g-freeze"):  # the base is the adapter disabled: no weights added
        assert by_name[f"{name}+guard"].weights == by_name[name].weights
        assert by_name[f"{name}+guard"].trainable == by_name[name].trainable
    assert by_name["full+guard"].weights == 2 * by_name["full"].weights  # the frozen reference copy
    assert all(by_name[f"{n}+guard"].activations > by_name[n].activations for n in speed.GUARDED)
    text = speed.report("tiny", training, inference, ids.device)
    assert "| retention guard (a quarter of the batch) |" in text and "| g-freeze | " in text
