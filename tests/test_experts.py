"""Mixture-of-experts models: fused experts grow per expert, exactly at the start, train, save, reload and merge."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from peft_grow import GrowConfig, UnsupportedArchitectureError, load_merged, save_merged
from peft_grow.tuner.experts import GrowExpertsLayer, experts_layout

VOCAB = 96
_BASE = dict(
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
# one line per family the issue names; dense and shared-expert MLPs beside the experts where the family has them
FAMILIES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=36,
        mlp_only_layers=[0],
    ),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, head_dim=8),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        head_dim=8,
        num_key_value_heads=4,
    ),  # fmt: skip
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8),  # transposed, interleaved, biases
}
# the config attribute that holds each family's expert width
EXPERT_WIDTH = {"qwen2_moe": "moe_intermediate_size", "qwen3_moe": "moe_intermediate_size"}
EXPERT_WIDTH["deepseek_v3"] = "moe_intermediate_size"


def tiny_moe(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **{**_BASE, **FAMILIES[family]})
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed))


def logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


def experts_layers(model) -> list[GrowExpertsLayer]:
    return [m for m in model.modules() if isinstance(m, GrowExpertsLayer)]


SETTINGS = [GrowConfig(), GrowConfig(k=3, mode="train"), GrowConfig(init="zero"), GrowConfig(k=3, symmetry_noise=0.1)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("config", SETTINGS, ids=["freeze", "train-k3", "zero", "freeze-k3-noise"])
def test_every_expert_grows_and_the_model_computes_what_it_did(family, config):
    base = tiny_moe(family)
    tokens = ids()
    expected = logits(base, tokens)
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    grown = experts_layers(model)
    assert len(grown) == sum(1 for m in base.modules() if hasattr(m, "is_concatenated"))
    assert grown, "the tiny config has a mixture-of-experts layer"
    for layer in grown:  # every expert widened: new rows for each of the E experts
        experts = layer.get_base_layer().down_proj.shape[0]
        assert layer.grow_new_weight["default"].shape[0] == experts
    assert close(logits(model, tokens), expected)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_bfloat16_growth_stays_within_rounding(family):
    base = tiny_moe(family, torch.bfloat16)
    tokens = ids()
    expected = logits(base, tokens)
    model = get_peft_model(copy.deepcopy(base), GrowConfig())
    # the k down blocks are summed inside one matmul: not bit-identical, within a few bfloat16 steps
    assert close(logits(model, tokens), expected, rel=2e-2)


@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_only_new_weights_train_and_the_base_is_untouched(mode):
    base = tiny_moe("qwen2_moe")
    original = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = get_peft_model(base, GrowConfig(mode=mode))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".grow_" in name for name in trainable)
    assert any("experts.grow_" in name for name in trainable)
    if mode == "freeze":  # G-Freeze: new rows and new down columns of every expert, never the originals
        assert any("grow_new_down_weight" in name for name in trainable)
    else:  # G-Train: the up side with a delta on the original rows, the down side frozen
        assert any("experts.grow_delta_weight" in name for name in trainable)
        assert not any("grow_new_down_weight" in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = ids()
    before = logits(model, tokens)
    model.train()
    for _ in range(3):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert not close(logits(model, tokens), before, rel=1e-3)
    base_now = {k.replace("base_layer.", ""): v for k, v in model.get_base_model().state_dict().items()}
    assert all(torch.equal(base_now[name], tensor) for name, tensor in original.items())
    with model.disable_adapter():
        assert torch.equal(logits(model, tokens), logits(tiny_moe("qwen2_moe"), tokens))


def trained(family: str, config: GrowConfig, steps: int = 2):
    model = get_peft_model(tiny_moe(family), config)
    with torch.no_grad():  # move every new tensor off its start, as training would
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss"])
def test_saves_only_new_tensors_and_reloads_exactly(family, tmp_path):
    model = trained(family, GrowConfig(mode="train", k=3))
    tokens = ids()
    expected = logits(model, tokens)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert all(".grow_" in key for key in saved)
    assert any("experts.grow_delta_weight" in key for key in saved)
    reloaded = PeftModel.from_pretrained(tiny_moe(family), tmp_path)
    assert torch.equal(logits(reloaded, tokens), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_model_reloads_in_plain_transformers(family, tmp_path):
    model = trained(family, GrowConfig())
    tokens = ids()
    expected = logits(model, tokens)
    width_key = EXPERT_WIDTH.get(family, "intermediate_size")
    width = getattr(model.config, width_key)
    merged = model.merge_and_unload()
    assert close(logits(merged, tokens), expected)
    assert getattr(merged.config, width_key) == 2 * width
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert close(logits(reloaded, tokens), expected)


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_partial_growth_merges_in_either_layout(family, tmp_path):
    """Only the last layer grown: "pad" widens the others with zero units (plain transformers reloads it);
    "per-layer" records the shapes for load_merged."""
    tokens = ids()
    for layout in ("pad", "per-layer"):
        model = trained(family, GrowConfig(layers=[-1]))
        expected = logits(model, tokens)
        save_merged(model, tmp_path / layout, layout=layout)
        shapes = json.loads((tmp_path / layout / "config.json").read_text()).get("peft_grow_shapes")
        assert (shapes is None) == (layout == "pad")
        reloaded = load_merged(tmp_path / layout)
        assert close(logits(reloaded, tokens), expected)
        if layout == "pad":
            assert close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / layout), tokens), expected)


def test_merge_and_unmerge_restore_the_original_tensors():
    model = trained("gpt_oss", GrowConfig(mode="train"))
    tokens = ids()
    expected = logits(model, tokens)
    layer = experts_layers(model)[0]
    original = {key: value.clone() for key, value in layer.get_base_layer().named_parameters()}
    model.merge_adapter()
    assert layer.get_base_layer().down_proj.shape != original["down_proj"].shape
    assert close(logits(model, tokens), expected)
    model.unmerge_adapter()
    assert all(torch.equal(layer.get_base_layer()._parameters[k], v) for k, v in original.items())
    assert torch.equal(logits(model, tokens), expected)


def test_experts_whose_work_is_not_per_unit_are_refused(monkeypatch):
    from transformers.models.mixtral import modeling_mixtral

    def across_the_width(self, gate_up):  # a normalisation across the expert's width: copies would not stay equal
        gate, up = gate_up.chunk(2, dim=-1)
        hidden = self.act_fn(gate) * up
        return hidden / hidden.norm(dim=-1, keepdim=True)

    monkeypatch.setattr(modeling_mixtral.MixtralExperts, "_apply_gate", across_the_width, raising=False)
    model = tiny_moe("mixtral")
    model.config._experts_implementation = "batched_mm"  # the implementations that call _apply_gate
    for module in model.modules():
        if hasattr(module, "is_concatenated"):
            module.config._experts_implementation = "batched_mm"
    refusal = r"experts of model\.layers\.0\.mlp\.experts.*not elementwise"
    with pytest.raises(UnsupportedArchitectureError, match=refusal):
        get_peft_model(model, GrowConfig())


def test_excluded_experts_stay_as_they_are():
    model = get_peft_model(tiny_moe("qwen2_moe"), GrowConfig(exclude_modules=["experts"]))
    assert not experts_layers(model)
    assert any("shared_expert.gate_proj" in name for name, _ in model.named_modules())


@pytest.mark.parametrize("config", SETTINGS[:3], ids=["freeze", "train-k3", "zero"])
def test_inspect_accepts_an_experts_adapter_and_names_what_is_missing(config, tmp_path):
    from safetensors.torch import save_file

    from peft_grow.io.inspection import inspect_adapter

    get_peft_model(tiny_moe("gpt_oss"), copy.deepcopy(config)).save_pretrained(tmp_path)
    report = inspect_adapter(str(tmp_path))
    assert report.problems == []
    assert set(report.roles.values()) == {"experts"}
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    dropped = next(key for key in tensors if key.endswith("layers.1.mlp.experts.grow_new_weight"))
    save_file({key: value for key, value in tensors.items() if key != dropped}, path)
    problems = inspect_adapter(str(tmp_path)).problems
    assert any("layers.1.mlp.experts lacks grow_new_weight" in problem for problem in problems)


def test_two_adapters_on_the_experts_switch_and_delete():
    base = tiny_moe("olmoe")
    tokens = ids()
    expected = logits(base, tokens)
    model = trained("olmoe", GrowConfig())
    first = logits(model, tokens)
    model.add_adapter("second", GrowConfig(k=3, mode="train"))
    model.set_adapter("second")
    assert close(logits(model, tokens), expected)  # the second adapter starts at the base function
    model.set_adapter("default")
    assert torch.equal(logits(model, tokens), first)
    model.delete_adapter("second")
    assert not any("second" in name for name, _ in model.named_parameters())
    assert torch.equal(logits(model, tokens), first)


def test_a_partitioned_or_offloaded_experts_module_is_refused_as_a_projection_is():
    """The refusals of GrowLayer.__init__ (tests/test_errors.py) hold for each 3-D tensor of an experts module."""
    from accelerate import cpu_offload

    model = tiny_moe("olmoe")
    weight = next(m for m in model.modules() if experts_layout(m) is not None).down_proj
    weight.ds_id, weight.ds_shape = 7, tuple(weight.shape)  # what DeepSpeed ZeRO-3 attaches to a partitioned weight
    with pytest.raises(RuntimeError, match=r"partitioned by DeepSpeed ZeRO-3"):
        get_peft_model(model, GrowConfig(check_function=False))
    model = tiny_moe("olmoe")
    cpu_offload(model, execution_device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"offloaded by accelerate.*Load the model without offloading"):
        get_peft_model(model, GrowConfig(check_function=False))
