"""plan_costs: parameter counts against the closed forms of docs/method.md, LoRA rank choice, memory arithmetic."""

import pytest
import torch
from helpers import GEMMA3_1B, TINY_CONFIGS, tiny_model
from transformers import AutoConfig

from peft_grow import GrowConfig, UnsupportedArchitectureError, find_mlps
from peft_grow.analysis.planning import ADAM_STATE_BYTES, LoraShape, load_model_config, plan_costs

GEMMA3_1B_PARAMS = 999_885_952
GEMMA3_1B_MLP = 23_887_872  # 3 * 1152 * 6912 per layer
# LoRA on q (1152 -> 1024), k, v (1152 -> 256), o (1024 -> 1152), gate, up (1152 -> 6912), down (6912 -> 1152)
GEMMA3_1B_LORA_PER_RANK = 26 * (2 * (1152 + 1024) + 2 * (1152 + 256) + 3 * (1152 + 6912))


@pytest.fixture(scope="module")
def gemma_config():
    return AutoConfig.for_model("gemma3_text", **GEMMA3_1B)


def test_gemma3_1b_all_layers_matches_docs(gemma_config):
    costs = plan_costs(gemma_config)  # all layers, k=2, G-Freeze, bfloat16
    assert costs.base_params == GEMMA3_1B_PARAMS
    assert costs.trainable_params == costs.added_params == 26 * GEMMA3_1B_MLP
    assert round(costs.trainable_share, 3) == 0.621
    assert costs.grown_layers == {"model.layers": tuple(range(26))}
    assert costs.stack_sizes == {"model.layers": 26}
    assert costs.mlp_shapes == ((1152, 6912, 1, 0),)
    assert costs.grow.trainable_share == costs.trainable_share


def test_gemma3_1b_ten_layers_and_g_train(gemma_config):
    costs = plan_costs(gemma_config, layers=list(range(10)))
    assert costs.trainable_params == 10 * GEMMA3_1B_MLP
    assert round(costs.trainable_share, 3) == 0.239
    # G-Train from copies: k * U (a delta on the original up rows plus k-1 copies), nothing on the down side
    train = plan_costs(gemma_config, layers=list(range(10)), k=3, mode="train")
    assert train.trainable_params == 10 * 3 * (2 * 1152 * 6912)
    assert train.grow.name == "G-Train k=3"


def test_lora_rank_is_closest_to_grown_count(gemma_config):
    costs = plan_costs(gemma_config)
    shape = costs.lora_shape
    assert shape.modules == 26 * 7
    assert shape.in_plus_out == GEMMA3_1B_LORA_PER_RANK
    assert shape.min_dim == 256
    target = costs.trainable_params
    best = min(range(1, 2000), key=lambda r: abs(r * GEMMA3_1B_LORA_PER_RANK - target))
    assert costs.lora_rank == best == 762
    assert costs.lora.trainable_params == costs.lora.added_params == 762 * GEMMA3_1B_LORA_PER_RANK
    assert costs.lora_reference_rank == 16
    assert costs.lora_reference.trainable_params == 16 * GEMMA3_1B_LORA_PER_RANK
    assert any("above the smallest in/out dimension" in note for note in costs.notes)  # r=762 > 256


def test_closest_rank_rounds_to_the_nearer_and_is_at_least_one():
    shape = LoraShape(modules=1, in_plus_out=100, min_dim=10)
    assert shape.closest_rank(249) == 2
    assert shape.closest_rank(251) == 3
    assert shape.closest_rank(250) == 2  # a tie goes to the smaller rank
    assert shape.closest_rank(3) == 1


def test_memory_arithmetic_bfloat16_with_float32_adapter_weights(gemma_config):
    costs = plan_costs(gemma_config, dtype="bfloat16")
    base, added = GEMMA3_1B_PARAMS, 26 * GEMMA3_1B_MLP
    assert costs.adapter_dtype == "float32"
    assert costs.grow.weight_bytes == 2 * base + 4 * added
    assert costs.grow.gradient_bytes == 4 * added
    assert costs.grow.optimizer_bytes == 8 * added == ADAM_STATE_BYTES * added
    assert costs.grow.total_bytes == 2 * base + 16 * added
    lora = costs.lora.trainable_params
    assert costs.lora.weight_bytes == 2 * base + 4 * lora
    assert (costs.lora.gradient_bytes, costs.lora.optimizer_bytes) == (4 * lora, 8 * lora)
    full = costs.full
    assert (full.trainable_params, full.added_params, full.trainable_share) == (base, 0, 1.0)
    assert (full.weight_bytes, full.gradient_bytes, full.optimizer_bytes) == (2 * base, 2 * base, 8 * base)
    assert any("autocast_adapter_dtype=True" in line for line in costs.assumptions)
    assert any("activations" in line for line in costs.assumptions)


def test_memory_arithmetic_without_autocast_and_in_float32(gemma_config):
    costs = plan_costs(gemma_config, layers=[0], dtype=torch.float16, autocast_adapter_dtype=False)
    added = GEMMA3_1B_MLP
    assert (costs.dtype, costs.adapter_dtype) == ("float16", "float16")
    assert costs.grow.weight_bytes == 2 * GEMMA3_1B_PARAMS + 2 * added
    assert (costs.grow.gradient_bytes, costs.grow.optimizer_bytes) == (2 * added, 8 * added)
    fp32 = plan_costs(gemma_config, layers=[0], dtype="float32")
    assert fp32.adapter_dtype == "float32"
    assert fp32.grow.weight_bytes == 4 * (GEMMA3_1B_PARAMS + added)
    assert fp32.full.gradient_bytes == 4 * GEMMA3_1B_PARAMS


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "t5-gated"])
@pytest.mark.parametrize("mode,init", [("freeze", "copy"), ("train", "copy"), ("train", "zero")])
def test_tiny_models_match_closed_form(name, mode, init):
    """The trainable count is the closed form of docs/method.md; LoRA counts r*(in+out) over the blocks' Linears."""
    model = tiny_model(name)
    config = GrowConfig(layers=[0, -1], k=3, mode=mode, init=init)
    k, expected = config.k, 0
    for mlp in find_mlps(model, config.mlp_layout, config.layers, config.exclude_modules):
        up = sum(p.numel() for up_name in mlp.up for p in model.get_submodule(up_name).parameters())
        down = model.get_submodule(mlp.down).weight.numel()
        expected += (k - 1) * (up + down) if mode == "freeze" else k * up + ((k - 1) * down if init == "zero" else 0)
    costs = plan_costs(model.config, layers=[0, -1], k=3, mode=mode, init=init, dtype="float32")
    assert costs.trainable_params == expected
    assert costs.base_params == sum(p.numel() for p in model.parameters())
    assert costs.grow.weight_bytes == 4 * (costs.base_params + costs.added_params)


def test_lora_shape_of_gpt2_conv1d_and_t5_stacks():
    h, p, layers = 32, 40, 3
    # GPT-2 blocks: c_attn (h -> 3h), attn c_proj (h -> h), mlp c_fc (h -> p), mlp c_proj (p -> h); Conv1D layout
    gpt2 = plan_costs(tiny_model("gpt2").config, dtype="float32")
    assert gpt2.lora_shape.in_plus_out == layers * ((h + 3 * h) + 2 * h + 2 * (h + p))
    assert gpt2.lora_shape.modules == 4 * layers
    # T5: both stacks are grown (an index selects that layer in every stack) and LoRA covers both
    t5 = plan_costs(tiny_model("t5-gated").config, layers=[0, 1])
    assert t5.model_class == "T5ForConditionalGeneration"
    assert t5.grown_layers == {"decoder.block": (0, 1), "encoder.block": (0, 1)}
    assert t5.stack_sizes == {"decoder.block": 3, "encoder.block": 2}


def test_g_train_symmetry_noise_buffers_count_in_weights():
    config = tiny_model("llama").config
    plain = plan_costs(config, mode="train", dtype="float32")
    noisy = plan_costs(config, mode="train", dtype="float32", symmetry_noise=0.1)
    h, p, k, layers = 32, 40, 2, 3
    assert noisy.added_buffer_elements == layers * h * k * p
    assert noisy.trainable_params == plain.trainable_params
    assert noisy.grow.weight_bytes == plain.grow.weight_bytes + 4 * layers * h * k * p


def test_config_from_folder_and_json_file(tmp_path, gemma_config):
    gemma_config.save_pretrained(tmp_path)
    from_folder = plan_costs(tmp_path, layers=[0])
    from_file = plan_costs(str(tmp_path / "config.json"), layers=[0])
    assert from_folder.trainable_params == from_file.trainable_params == GEMMA3_1B_MLP
    assert from_file.source.endswith("config.json")


def test_bad_inputs_raise_clear_errors(tmp_path, gemma_config):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_model_config(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        plan_costs(tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        plan_costs(gemma_config, dtype="int8")
    with pytest.raises(ValueError, match="GrowConfig.k"):
        plan_costs(gemma_config, k=1)
    with pytest.raises(ValueError, match="out of range"):
        plan_costs(gemma_config, layers=[26])
    moe = AutoConfig.for_model("jetmoe", **TINY_CONFIGS["llama"][0], num_local_experts=2)  # experts of its own
    with pytest.raises(UnsupportedArchitectureError):
        plan_costs(moe)
