"""Merged checkpoints: exact round trips in both layouts, loadable by plain transformers, written atomically."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import DEVICE, logits, sample_inputs, tiny_model
from peft import get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import peft_grow
from peft_grow import GrowConfig, GrowLayer, load_merged, save_merged

ARCHS = ["llama", "gemma3", "gpt2"]


def grown(name, dtype=torch.float32, layers=None, k=2, tmp_path=None):
    """A grown model with a non-identity adapter, and inputs for it.

    A bfloat16 base goes through save_pretrained / from_pretrained, so that its buffers (rotary frequencies stay
    float32) are what any loaded bfloat16 checkpoint has.
    """
    base = tiny_model(name)
    if dtype != torch.float32:
        base.to(dtype).save_pretrained(tmp_path / "base")
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype).to(DEVICE)
    torch.manual_seed(0)
    model = get_peft_model(base, GrowConfig(layers=layers, k=k, init_weights=False))
    return model, sample_inputs(model)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("layers", [None, [0]], ids=["all", "some"])
@pytest.mark.parametrize("layout", ["pad", "per-layer"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_round_trip(tmp_path, name, layers, layout, k, dtype):
    model, inputs = grown(name, dtype, layers, k, tmp_path)
    adapter_logits = logits(model, inputs)
    merged = save_merged(model, tmp_path / "out", layout=layout)
    merged_logits = logits(merged, inputs)
    if dtype == torch.float32:
        assert (merged_logits - adapter_logits).abs().max() <= 1e-5
    loaded = load_merged(tmp_path / "out").to(DEVICE)
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert torch.equal(logits(loaded, inputs), merged_logits)
    standard = layout == "pad" or layers is None
    assert (peft_grow.io.export.SHAPES_KEY in json.loads((tmp_path / "out" / "config.json").read_text())) != standard


def test_padding_costs_exactly_the_extra_width(tmp_path):
    model, _ = grown("llama", layers=[0], k=3)
    base_params = model.base_model.growth_summary().base_params
    merged = save_merged(model, tmp_path / "pad", layout="pad")
    p, h, layers = 40, 32, 3
    assert sum(t.numel() for t in merged.parameters()) == base_params + layers * 3 * h * (3 - 1) * p
    assert merged.config.intermediate_size == 3 * p
    model, _ = grown("llama", layers=[0], k=3)
    merged = save_merged(model, tmp_path / "per-layer", layout="per-layer")
    assert sum(t.numel() for t in merged.parameters()) == base_params + 3 * h * (3 - 1) * p


PLAIN_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    root, names = sys.argv[1], json.loads(sys.argv[2])
    out = {}
    for name, ids in names.items():
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{name}").eval()
        with torch.no_grad():
            out[name] = model(input_ids=torch.tensor(ids)).logits.contiguous()
    assert not any(m.startswith("peft") for m in sys.modules), "plain transformers only"
    save_file(out, f"{root}/plain.safetensors")
    """
)


@pytest.mark.slow
def test_plain_transformers_loads_pad_and_all_layer_checkpoints(tmp_path):
    """In a fresh process that never imports peft or peft_grow: from_pretrained, no trust_remote_code."""
    expected, inputs = {}, {}
    for name in ARCHS:
        for layers in (None, [1]):
            key = f"{name}-{'all' if layers is None else 'some'}"
            model, x = grown(name, layers=layers, k=3)
            expected[key] = logits(save_merged(model, tmp_path / key, layout="pad"), x).cpu()
            inputs[key] = x["input_ids"].cpu().tolist()
    subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(tmp_path), json.dumps(inputs)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    plain = load_file(tmp_path / "plain.safetensors")
    for key, value in expected.items():
        assert (plain[key] - value).abs().max() <= 1e-5, key


def test_tied_embeddings_stay_tied(tmp_path):
    model, inputs = grown("gemma3_text", layers=[0])
    assert model.config.tie_word_embeddings
    save_merged(model, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert not any(key.startswith("lm_head") for key in f.keys())  # noqa: SIM118


@pytest.mark.parametrize("layout", ["pad", "per-layer"])
def test_sharded_checkpoint(tmp_path, layout):
    model, inputs = grown("llama", layers=[0], k=2)
    merged_logits = logits(save_merged(model, tmp_path / "out", layout=layout, max_shard_size="40KB"), inputs)
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert torch.equal(logits(load_merged(tmp_path / "out").to(DEVICE), inputs), merged_logits)


def test_dtype_cast_on_export(tmp_path):
    model, _ = grown("gpt2")
    save_merged(model, tmp_path / "out", dtype="bfloat16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.dtype == torch.bfloat16 and loaded.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16


def test_card_says_how_to_load(tmp_path):
    model, _ = grown("llama", layers=[0])
    save_merged(model, tmp_path / "pad")
    card = (tmp_path / "pad" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "- peft-grow" in card
    assert "LlamaForCausalLM.from_pretrained(" in card
    model, _ = grown("llama", layers=[0])
    save_merged(model, tmp_path / "per-layer", layout="per-layer")
    card = (tmp_path / "per-layer" / "README.md").read_text()
    assert "library_name: peft-grow" in card and "peft_grow.load_merged(" in card


def test_existing_target_is_refused_and_the_model_untouched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    model, _ = grown("llama")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_merged(model, tmp_path / "out")
    assert any(isinstance(m, GrowLayer) for m in model.modules())
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    save_merged(model, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_write_leaves_target_absent_or_intact(tmp_path, monkeypatch, overwrite):
    if overwrite:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("precious")
    model, _ = grown("llama")

    def crash(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model.get_base_model()), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        save_merged(model, tmp_path / "out", overwrite=overwrite)
    if overwrite:
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if overwrite else [])


INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, time
    import torch
    import peft_grow

    # ctrl-c as in a terminal, also where the test runner was started in the background (SIGINT ignored, inherited)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = get_peft_model(base, peft_grow.GrowConfig())

    def slow(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"partial")
        time.sleep(60)

    type(base).save_pretrained = slow
    peft_grow.save_merged(model, sys.argv[2])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_process_never_leaves_a_partial_checkpoint(tmp_path, sig):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    target = tmp_path / "exports" / "out"
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path / "base"), str(target)])
    deadline = time.monotonic() + 120
    while not any(target.parent.glob(".out.partial-*/model.safetensors")):
        assert process.poll() is None and time.monotonic() < deadline, "export did not start"
        time.sleep(0.1)
    process.send_signal(sig)
    process.wait(timeout=60)
    assert not target.exists()
    if sig == signal.SIGINT:  # Python ran the cleanup: nothing is left at all
        assert list(target.parent.iterdir()) == []


def test_per_layer_checkpoint_with_a_missing_tensor_is_refused(tmp_path):
    model, _ = grown("llama", layers=[0])
    save_merged(model, tmp_path / "out", layout="per-layer")
    path = tmp_path / "out" / "model.safetensors"
    state = load_file(path)
    del state["model.layers.0.mlp.down_proj.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not match its recorded shapes: missing"):
        load_merged(tmp_path / "out")


def test_bad_layout_and_non_grown_model_are_refused(tmp_path):
    model, _ = grown("llama")
    with pytest.raises(ValueError, match="layout must be one of"):
        save_merged(model, tmp_path / "out", layout="ragged")


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("layers", [None, [0]], ids=["all", "some"])
def test_merge_and_unload_then_save_pretrained_reloads_with_plain_transformers(tmp_path, name, layers):
    """The flow PEFT users know: the merged model's config names its MLP width, so its own save_pretrained
    reloads with plain from_pretrained (the MLPs that were not grown are padded with zero units)."""
    model, inputs = grown(name, layers=layers)
    adapter_logits = logits(model, inputs)
    merged = model.merge_and_unload()
    assert (logits(merged, inputs) - adapter_logits).abs().max() <= 1e-5
    merged.save_pretrained(tmp_path / "merged")
    auto = type(merged)
    loaded = auto.from_pretrained(tmp_path / "merged").to(DEVICE)
    assert torch.equal(logits(loaded, inputs), logits(merged, inputs))


def test_merge_and_unload_per_layer_keeps_real_widths_and_a_bad_layout_merges_nothing(tmp_path):
    model, inputs = grown("llama", layers=[0])
    with pytest.raises(ValueError, match="layout must be one of"):
        model.merge_and_unload(layout="ragged")
    assert any(isinstance(m, GrowLayer) for m in model.modules())  # still the adapter model
    expected = logits(model, inputs)
    merged = model.merge_and_unload(layout="per-layer")
    widths = {layer.mlp.up_proj.out_features for layer in merged.model.layers}
    assert widths == {2 * merged.config.intermediate_size, merged.config.intermediate_size}
    assert hasattr(merged.config, peft_grow.io.export.SHAPES_KEY)
    assert (logits(merged, inputs) - expected).abs().max() <= 1e-5
