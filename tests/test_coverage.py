"""Coverage of the model types transformers knows (benchmarks/coverage.py): every causal LM is grown exactly or
refused with its reason, never changed silently. Model types without a table line are found by the shape of
their MLP (peft_grow.tuner.architectures.STRUCTURES) and guarded by growth's self-check."""

import pytest
from peft import get_peft_model

from benchmarks import coverage
from peft_grow import GrowConfig, UnsupportedArchitectureError, find_mlps

DETECTED = [  # popular model types with no table line: structural detection grows them
    "apertus",
    "bart",
    "bloom",
    "exaone4",
    "falcon",
    "gpt_neo",
    "internlm3",
    "lfm2",
    "mllama",
    "olmo3",
    "seed_oss",
    "smollm3",
    "vaultgemma",
]
HYBRIDS = ["falcon_h1", "qwen3_5"]  # dense MLPs beside Mamba or linear-attention blocks (3-D conv weights)


@pytest.mark.parametrize("model_type", DETECTED + HYBRIDS)
def test_detected_and_hybrid_model_types_grow_exactly(model_type):
    outcomes = coverage.census(model_type)
    settings = [(o.setting, o.result) for o in outcomes]  # GrowConfig() twice, explicit, init_weights=False
    assert settings == [("k=2 freeze", "exact"), ("k=3 train", "exact"), ("explicit", "exact"), ("moves", "exact")]


LANGUAGE_MODELS = {  # model type -> where its language model's MLPs are, beside towers for images or audio
    "git": "git.encoder.layer.",
    "phi4_multimodal": "model.layers.",
    "longcat_flash": "model.layers.",
}


@pytest.mark.parametrize("model_type", sorted(LANGUAGE_MODELS))
def test_the_language_model_is_grown_and_is_on_the_path(model_type):
    """GIT and Phi-4-multimodal hold vision (and audio) towers of numbered MLPs, which the names alone took for the
    model's before; LongCat-Flash has two dense MLPs per layer (`mlps.0`, `mlps.1`) beside its experts, which only
    experts were grown of. Each now grows its language model exactly, and an adapter that is not an identity moves
    the logits of a text input."""
    outcomes = {o.setting: o for o in coverage.census(model_type)}
    assert [outcomes[s].result for s in ("k=2 freeze", "k=3 train", "moves")] == ["exact"] * 3, outcomes
    base = coverage.AutoModelForCausalLM.from_config(coverage.tiny_config(model_type))
    grown = [m.down for m in find_mlps(base)]
    assert grown and all(name.startswith(LANGUAGE_MODELS[model_type]) for name in grown), grown
    if model_type == "longcat_flash":  # both dense MLPs of every layer, and the experts
        first = {name.removeprefix("model.layers.0.") for name in grown if name.startswith("model.layers.0.")}
        assert first == {"mlps.0.down_proj", "mlps.1.down_proj", "mlp.experts"}, grown


def test_update_ranks_keep_one_column_per_dense_mlp_of_a_layer():
    """LongCat-Flash's two dense MLPs per layer shared one (stack, layer) key in the update-rank recorder, so one
    overwrote the other; each now has its own column, labelled with its path inside the layer."""
    import torch

    from peft_grow.analysis import UpdateRankRecorder

    model = coverage.AutoModelForCausalLM.from_config(coverage.tiny_config("longcat_flash"))
    recorder = UpdateRankRecorder()
    recorder.record(model, 0)
    with torch.no_grad():
        model.model.layers[0].mlps[1].up_proj.weight.add_(1.0)  # a rank-1 update of the second MLP only
    recorder.record(model, 1)
    layers = len(model.model.layers)
    assert len(recorder.layers) == 2 * layers
    columns = dict(zip(recorder.labels(), recorder.ranks[0], strict=True))
    assert columns["0 mlps.1"] == pytest.approx(1.0, abs=1e-3) and columns["0 mlps.0"] == 0.0, columns
    assert sum(rank > 0 for rank in recorder.ranks[0]) == 1


def test_a_module_outside_the_mlp_that_adds_to_its_width_is_refused_at_injection():
    """Zamba2 adds its per-layer adapters' p-wide output to gate_up_proj's: a widened gate_up_proj crashed the
    first forward. The whole-model check refuses it at injection, naming the MLP and the reason."""
    outcomes = coverage.census("zamba2")
    assert [o.result for o in outcomes] == ["refused"] * 3, outcomes
    base = coverage.AutoModelForCausalLM.from_config(coverage.tiny_config("zamba2"))
    with pytest.raises(UnsupportedArchitectureError, match="shared_transformer.feed_forward") as refusal:
        get_peft_model(base, GrowConfig())
    assert "fails (RuntimeError" in str(refusal.value) and "reads or adds to its width" in str(refusal.value)


MIXTURES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "deepseek_v3", "gpt_oss", "llama4_text"]
TABLE_LINES = ["ctrl", "xlm", "modernbert-decoder"]  # the table's lines for types detection cannot find


@pytest.mark.parametrize("model_type", MIXTURES + TABLE_LINES + ["afmoe"])
def test_mixtures_of_experts_and_new_table_lines_grow_exactly(model_type):
    """Experts grown per expert (peft_grow.tuner.experts); afmoe: an attention output gate named gate_proj beside
    the MLP is not taken for the MLP's (an MLP's projections are siblings)."""
    outcomes = coverage.census(model_type)
    assert [o.result for o in outcomes if o.setting != "explicit"] == ["exact"] * 3, outcomes  # with "moves"
    assert all(o.result != "WRONG" for o in outcomes), outcomes


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen2_moe", "smollm3", "phi3"])
def test_the_explicit_path_grows_the_same_mlps_exactly(model_type):
    outcomes = {o.setting: o for o in coverage.census(model_type)}
    assert outcomes["explicit"].result == "exact", outcomes


@pytest.mark.parametrize("model_type", ["bitnet", "dory"])
def test_mlps_with_work_across_the_width_are_refused_by_the_self_check(model_type):
    """BitNet and Dory normalise across the MLP's width between up and down (ffn_sub_norm)."""
    outcomes = coverage.census(model_type)
    assert [o.result for o in outcomes] == ["refused", "refused", "refused"]  # named explicitly too
    assert all("function-preserving start" in o.detail for o in outcomes if o.setting != "explicit")


@pytest.mark.slow
def test_every_causal_lm_type_is_grown_exactly_or_refused():
    outcomes = coverage.main([])
    wrong = [o for o in outcomes if o.result == "WRONG"]
    assert not wrong, wrong
    not_exact = {o.model_type for o in outcomes if o.result != "exact" and o.setting != "explicit"}
    exact = {o.model_type for o in outcomes} - not_exact  # GrowConfig() alone
    assert len(exact) >= 150, f"{len(exact)} model types grown exactly"  # 158 with transformers 5.24 (docs/coverage.md)
    on_path = {o.model_type for o in outcomes if o.setting == "moves" and o.result == "exact"}
    assert exact <= on_path, exact - on_path  # every type grown exactly is grown on the path from tokens to logits
