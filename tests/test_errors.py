"""Bad input gets an error that says what was expected, what was found and what to do."""

import copy
import re
import shutil

import pytest
import torch
from helpers import DEVICE, logits, sample_inputs, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from peft_grow import GrowCheckpointError, GrowConfig, UnsupportedArchitectureError


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=1), "k must be an integer >= 2"),
        (dict(k=2.5), "k must be an integer >= 2"),
        (dict(k=True), "k must be an integer >= 2"),
        (dict(mode="frozen"), "mode must be one of"),
        (dict(init="random"), "init must be one of"),
        (dict(layers=[]), "empty list"),
        (dict(layers=[1, 1]), "repeated"),
        (dict(layers=["1"]), "layers must be None"),
        (dict(symmetry_noise=-0.1), "symmetry_noise must be >= 0"),
        (dict(up_modules=["mlp.fc_in"]), "go together"),
        (dict(fused_up_chunks=2), "only applies with up_modules"),
        (dict(up_modules=["a"], down_modules=["b"], fused_up_chunks=0), "fused_up_chunks must be an int >= 1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GrowConfig(**kwargs)


def test_layer_index_out_of_range_names_the_range():
    with pytest.raises(ValueError, match=r"index \[7\] is out of range; 'model.layers' has 3 \(indices 0..2\)"):
        get_peft_model(tiny_model("llama"), GrowConfig(layers=[0, 7]))


class Mystery(nn.Module):
    """A model type peft-grow does not know: attention-free blocks with an fc_in -> gelu -> fc_out MLP."""

    def __init__(self, fused: bool = False, experts: bool = False, names: tuple[str, str] = ("fc_in", "fc_out")):
        super().__init__()
        self.config = PretrainedConfig()
        self.config.model_type = "mystery"
        self.embed = nn.Embedding(50, 16)
        self.fused, self.names = fused, names
        self.layers = nn.ModuleList(nn.ModuleDict(self._block(fused, experts, names)) for _ in range(2))
        self.head = nn.Linear(16, 50)

    @staticmethod
    def _block(fused, experts, names):
        block = {"mix": nn.Linear(16, 16), names[0]: nn.Linear(16, 48 if fused else 24), names[1]: nn.Linear(24, 16)}
        if experts:
            block["experts"] = nn.ParameterDict({"gate_up": nn.Parameter(torch.zeros(4, 48, 16))})
        return block

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.layers:
            x = x + block["mix"](x)
            hidden = block[self.names[0]](x)
            if self.fused:
                gate, up = hidden.chunk(2, dim=-1)
                hidden = nn.functional.silu(gate) * up
            else:
                hidden = nn.functional.gelu(hidden)
            x = x + block[self.names[1]](hidden)
        return self.head(x)


def test_unknown_architecture_lists_the_linear_layers_and_the_way_out():
    with pytest.raises(UnsupportedArchitectureError) as error:
        get_peft_model(Mystery(names=("expand", "contract")), GrowConfig())
    message = str(error.value)
    assert "'mystery'" in message and "mix, expand, contract" in message and "up_modules" in message


def test_an_unknown_model_type_with_a_common_mlp_shape_is_detected_and_grown_exactly():
    torch.manual_seed(0)
    base = Mystery().eval()
    ids = torch.randint(0, 50, (2, 5))
    model = get_peft_model(copy.deepcopy(base), GrowConfig(k=3))  # fc_in / fc_out, found by name and shape
    assert sorted(model.peft_config["default"].target_modules)[:2] == ["layers.0.fc_in", "layers.0.fc_out"]
    assert (model(ids) - base(ids)).abs().max() <= 1e-5
    with pytest.raises(UnsupportedArchitectureError, match="does not know the MLP layout"):
        get_peft_model(Mystery(fused=True), GrowConfig())  # a fused gate/up needs fused_up_chunks: never guessed


@pytest.mark.parametrize("fused", [False, True])
def test_unknown_architecture_grows_with_explicit_modules(fused):
    torch.manual_seed(0)
    base = Mystery(fused=fused).eval()
    ids = torch.randint(0, 50, (2, 5))
    expected = base(ids)
    config = GrowConfig(up_modules=["fc_in"], down_modules=["fc_out"], fused_up_chunks=2 if fused else None, k=3)
    model = get_peft_model(copy.deepcopy(base), config)
    assert (model(ids) - expected).abs().max() <= 1e-5
    if fused:  # without the fused layout the shapes cannot pair up: a clear error, not a silent mix-up
        with pytest.raises(UnsupportedArchitectureError, match="fused_up_chunks"):
            get_peft_model(copy.deepcopy(base), GrowConfig(up_modules=["fc_in"], down_modules=["fc_out"]))


def test_expert_parameters_outside_the_standard_experts_module_are_refused():
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts weights outside"):
        get_peft_model(Mystery(experts=True), GrowConfig(up_modules=["fc_in"], down_modules=["fc_out"]))


def test_moe_model_type_with_experts_of_its_own_layout_is_refused():
    model = Mystery()
    model.config.model_type = "dbrx"
    with pytest.raises(UnsupportedArchitectureError, match="dbrx.*layout of their own"):
        get_peft_model(model, GrowConfig())


def test_non_elementwise_mlp_is_refused():
    model = Mystery()
    model.config.model_type = "gemma3n"
    with pytest.raises(UnsupportedArchitectureError, match="not elementwise"):
        get_peft_model(model, GrowConfig())


@pytest.fixture
def adapter_dir(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").to(DEVICE)
    saving = get_peft_model(base, GrowConfig(init_weights=False))
    saving.save_pretrained(tmp_path / "adapter")
    save_file({"logits": logits(saving, {"input_ids": torch.tensor([[5, 6, 7]], device=DEVICE)}).cpu()}, tmp_path / "x")
    return tmp_path


def test_adapter_onto_a_base_of_other_width_names_both_shapes(adapter_dir):
    with pytest.raises(
        GrowCheckpointError,
        match=r"shape \((32, 40|40, 32)\) in the adapter file, but this model needs \((32, 48|48, 32)\)"
        r".*Load the adapter onto .*base",
    ):
        PeftModel.from_pretrained(tiny_model("llama", intermediate_size=48), adapter_dir / "adapter")


def test_adapter_onto_a_base_with_more_layers(adapter_dir):
    with pytest.raises(GrowCheckpointError, match="lacks 3 tensor"):
        PeftModel.from_pretrained(tiny_model("llama", num_hidden_layers=4), adapter_dir / "adapter")


def test_matching_base_loads(adapter_dir):
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapter_dir / "base"), adapter_dir / "adapter"
    )
    found = logits(model.to(DEVICE), {"input_ids": torch.tensor([[5, 6, 7]], device=DEVICE)}).cpu()
    assert torch.equal(found, load_file(adapter_dir / "x")["logits"])  # what the saving model computed


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_adapter_file(adapter_dir, damage):
    path = adapter_dir / "adapter" / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(GrowCheckpointError, match="not a readable safetensors file.*save the adapter again"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_dir / "base"), adapter_dir / "adapter")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_adapter_that_cannot_compute_is_refused_at_load_naming_the_tensor(adapter_dir, value):
    path = adapter_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[1]
    tensors[name].view(-1)[3] = value
    save_file(tensors, path)
    with pytest.raises(GrowCheckpointError, match=rf"tensor {re.escape(name)} holds 1 NaN or infinite value.*lower"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_dir / "base"), adapter_dir / "adapter")


def test_pickled_or_missing_weights_are_refused(adapter_dir):
    adapter = adapter_dir / "adapter"
    shutil.move(adapter / "adapter_model.safetensors", adapter / "adapter_model.bin")
    with pytest.raises(GrowCheckpointError, match="pickle"):
        GrowConfig.from_pretrained(adapter)
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(GrowCheckpointError, match="incomplete"):
        GrowConfig.from_pretrained(adapter)


def test_foreign_safetensors_file_is_refused(adapter_dir):
    from safetensors.torch import save_file

    save_file(
        {"model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 2)},
        adapter_dir / "adapter" / "adapter_model.safetensors",
    )
    with pytest.raises(GrowCheckpointError, match="not a peft-grow adapter"):
        GrowConfig.from_pretrained(adapter_dir / "adapter")


def test_zero3_partitioned_weight_is_refused_with_the_way_out():
    model = tiny_model("llama")
    weight = model.model.layers[1].mlp.up_proj.weight
    weight.ds_id, weight.ds_shape = 7, tuple(weight.shape)  # what DeepSpeed ZeRO-3 attaches to a partitioned weight
    with pytest.raises(RuntimeError, match=r"partitioned by DeepSpeed ZeRO-3.*before creating the TrainingArguments"):
        get_peft_model(model, GrowConfig(layers=[1]))


def test_offloaded_weights_are_refused_at_growth():
    """accelerate's offloading leaves meta placeholders in the modules; growth would copy them."""
    from accelerate import cpu_offload

    model = tiny_model("llama")
    cpu_offload(model, execution_device=DEVICE)
    with pytest.raises(RuntimeError, match=r"offloaded by accelerate.*Load the model without offloading"):
        get_peft_model(model, GrowConfig(layers=[1]))


def test_offloading_a_grown_model_fails_loudly_instead_of_computing_garbage():
    """Offloaded after growth, the new weights are meta placeholders that no hook restores; F.linear would return
    uninitialised memory from them, so the forward raises."""
    from accelerate import cpu_offload

    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[1]))
    cpu_offload(model, execution_device=DEVICE)
    with pytest.raises(RuntimeError, match=r"meta placeholders.*do not offload the grown model"):
        logits(model, sample_inputs(model))


@pytest.mark.parametrize("entry", ["down_proj", "mlp.up_proj", "model.layers.1.mlp.gate_proj"])
def test_modules_to_save_naming_a_grown_projection_is_refused(entry):
    with pytest.raises(ValueError, match=rf"modules_to_save names '{re.escape(entry)}', which growth widens"):
        get_peft_model(tiny_model("llama"), GrowConfig(modules_to_save=[entry]))


def test_modules_to_save_beside_growth_still_works():
    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[0], modules_to_save=["lm_head"]))
    assert any("modules_to_save" in name and p.requires_grad for name, p in model.named_parameters())


class NormedMLP(nn.Module):
    """An MLP with a normalisation across its width between up and down: BitNet's ffn_sub_norm has learned
    weights of the old width (the grown forward fails); an L2 norm runs at any width, but copies raise the norm (its
    output changes; statistics that average over the width, such as an RMS norm, are unchanged by copies)."""

    def __init__(self, learned: bool):
        super().__init__()
        self.config = PretrainedConfig()
        self.up, self.down = nn.Linear(8, 12), nn.Linear(12, 8)
        self.norm = nn.LayerNorm(12) if learned else (lambda a: a / a.norm(dim=-1, keepdim=True))

    def forward(self, x):
        return self.down(self.norm(torch.relu(self.up(x))))


@pytest.mark.parametrize(("learned", "measured"), [(False, "changes its output by up to"), (True, "fails")])
def test_growth_that_would_change_an_mlps_function_is_refused_with_the_measured_difference(learned, measured):
    model = NormedMLP(learned)
    config = dict(up_modules=["up"], down_modules=["down"])
    with pytest.raises(UnsupportedArchitectureError, match=rf"Growing NormedMLP \(up, down\).*{measured}"):
        get_peft_model(copy.deepcopy(model), GrowConfig(**config))
    assert not any("grow" in name for name, _ in model.named_modules())  # nothing was changed
    grown = get_peft_model(copy.deepcopy(model), GrowConfig(**config, check_function=False))  # the user's call
    assert any("grow_new_weight" in name for name, _ in grown.named_parameters())


def test_activation_sparsity_across_the_width_is_caught_where_the_table_has_no_line():
    """gemma3n's text model computes its activation sparsity over the MLP's width; with zero-init growth the new
    zero units shift that statistic. Its model_type gemma3n_text is not in REFUSED: the check catches it."""
    config = AutoConfig.for_model(
        "gemma3n_text",
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        activation_sparsity_pattern=[0.95, 0.95],
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=96,
        laurel_rank=4,
        num_kv_shared_layers=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="gemma3n_text.*activation sparsity"):
        get_peft_model(copy.deepcopy(model), GrowConfig())  # the table's line for the type the Auto class builds
    growth = dict(up_modules=[r"mlp\.(gate|up)_proj"], down_modules=[r"mlp\.down_proj"])
    with pytest.raises(UnsupportedArchitectureError, match="not elementwise"):
        get_peft_model(copy.deepcopy(model), GrowConfig(**growth, init="zero"))
    ids = torch.randint(0, 96, (2, 7))
    grown = get_peft_model(copy.deepcopy(model), GrowConfig(**growth))  # copies keep the width's mean and spread
    with torch.no_grad():
        assert (grown(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() <= 1e-5
