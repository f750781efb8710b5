"""Coverage of the model types transformers knows (benchmarks/coverage.py): every causal LM is grown exactly or
refused with its reason, never changed silently. Model types without a table line are found by the shape of
their MLP (peft_grow.tuner.architectures.STRUCTURES) and guarded by growth's self-check."""

import pytest

from benchmarks import coverage

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
    assert [o.result for o in outcomes] == ["exact", "exact", "exact"], outcomes  # GrowConfig() twice, explicit


MIXTURES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "deepseek_v3", "gpt_oss", "llama4_text"]
TABLE_LINES = ["ctrl", "xlm", "modernbert-decoder"]  # the table's lines for types detection cannot find


@pytest.mark.parametrize("model_type", MIXTURES + TABLE_LINES + ["afmoe"])
def test_mixtures_of_experts_and_new_table_lines_grow_exactly(model_type):
    """Experts grown per expert (peft_grow.tuner.experts); afmoe: an attention output gate named gate_proj beside
    the MLP is not taken for the MLP's (an MLP's projections are siblings)."""
    outcomes = coverage.census(model_type)
    assert [o.result for o in outcomes if o.setting != "explicit"] == ["exact", "exact"], outcomes
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
    assert len(exact) >= 150, f"{len(exact)} model types grown exactly"  # 153 with transformers 5.24 (docs/coverage.md)
