"""Coverage of the model types transformers knows (benchmarks/coverage.py): every causal LM is grown exactly or
refused with its reason, never changed silently. Model types without a table line are found by the shape of
their MLP (peft_grow.architectures.STRUCTURES) and guarded by growth's self-check."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

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
    assert [o.result for o in outcomes] == ["exact", "exact"], outcomes


@pytest.mark.parametrize("model_type", ["bitnet", "dory"])
def test_mlps_with_work_across_the_width_are_refused_by_the_self_check(model_type):
    """BitNet and Dory normalise across the MLP's width between up and down (ffn_sub_norm)."""
    outcomes = coverage.census(model_type)
    assert [o.result for o in outcomes] == ["refused", "refused"]
    assert all("function-preserving start" in o.detail for o in outcomes)


@pytest.mark.slow
def test_every_causal_lm_type_is_grown_exactly_or_refused():
    outcomes = coverage.main([])
    wrong = [o for o in outcomes if o.result == "WRONG"]
    assert not wrong, wrong
    exact = {o.model_type for o in outcomes} - {o.model_type for o in outcomes if o.result != "exact"}
    assert len(exact) >= 100, f"{len(exact)} model types grown exactly"  # 102 with transformers 5.24 (docs/coverage.md)
