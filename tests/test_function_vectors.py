"""Function vectors (peft_grow.analysis.function_vectors) with known answers, on the real stories260K model: a head
made the only causal one ranks first and the others have no effect at all; a model compared with itself shares all its
heads and its vector; a freshly grown adapter gives its base model's analysis; LoRA-wrapped projections work."""

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_grow import GrowConfig
from peft_grow.analysis import function_vectors as fv

MODEL = Path(__file__).resolve().parents[1] / "examples" / "data" / "stories260K"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture
def model():
    return AutoModelForCausalLM.from_pretrained(MODEL).eval()


def test_tasks_and_prompts():
    pairs = fv.task_pairs("capitalize")
    assert len(pairs) == 400 and all(a == q.capitalize() and q.islower() for q, a in pairs)
    assert fv.task_pairs("first_letter", ["word"]) == [("word", "w")]
    clean = fv.icl_prompts(pairs, 6, shots=3, seed=1)
    corrupted = fv.icl_prompts(pairs, 6, shots=3, seed=1, shuffle_labels=True)
    for c, d in zip(clean, corrupted, strict=True):
        assert c.answer == d.answer and c.text.endswith("A:") and c.text.count("Q: ") == 4
        assert c.text.rsplit("Q: ", 1)[1] == d.text.rsplit("Q: ", 1)[1]  # the same query
        assert sorted(c.text.split("\n")) == sorted(d.text.split("\n"))  # the same answers, in another order
    assert any(c.text != d.text for c, d in zip(clean, corrupted, strict=True))
    assert fv.icl_prompts(pairs, 2, shots=0)[0].text.count("Q: ") == 1
    with pytest.raises(ValueError, match="Unknown function-vector task"):
        fv.task_pairs("reverse")


def test_the_only_causal_head_ranks_first_and_the_others_have_no_effect(model, tokenizer):
    heads = fv.find_heads(model)
    layer, head = 3, 5
    span = slice(head * heads.head_dim, (head + 1) * heads.head_dim)
    with torch.no_grad():
        for index, projection in enumerate(heads.projections):
            kept = projection.weight[:, span].clone()
            projection.weight.zero_()
            if index == layer:  # one head writes into the residual stream; every other head's output goes nowhere
                projection.weight[:, span] = kept * 3
    pairs = fv.task_pairs("copy")
    clean = fv.icl_prompts(pairs, 8)
    corrupted = fv.icl_prompts(pairs, 8, shuffle_labels=True)
    means = fv.mean_head_activations(model, tokenizer, clean, heads)
    effects = fv.causal_indirect_effects(model, tokenizer, corrupted, means, heads)
    if effects[layer, head] < 0:  # which way the head pushes the answer is up to its random-looking weights
        with torch.no_grad():
            heads.projections[layer].weight.neg_()
        effects = fv.causal_indirect_effects(model, tokenizer, corrupted, means, heads)
    assert effects[layer, head] > 0
    others = effects.clone()
    others[layer, head] = 0
    assert torch.count_nonzero(others) == 0
    assert fv.top_heads(effects, 3)[0] == (layer, head)
    vector = fv.function_vector(means, heads, [(layer, head)])
    expected = heads.projections[layer].weight[:, span] @ means[layer, head]
    assert torch.allclose(vector, expected, atol=1e-6)


def analysis(model, tokenizer):
    torch.manual_seed(0)
    return fv.analyze(model, tokenizer, "capitalize", n_prompts=8)


def test_a_model_compared_with_itself_shares_every_head_and_its_vector(model, tokenizer):
    result = analysis(model, tokenizer)
    assert len(result.heads) == 10 and result.vector.shape == (model.config.hidden_size,)
    assert result.layer == model.config.num_hidden_layers // 3
    for accuracy in (result.icl_accuracy, result.zero_shot, result.zero_shot_with_vector):
        assert 0.0 <= accuracy <= 1.0
    shared, cosine = fv.compare(result, analysis(model, tokenizer))
    assert shared == 10 and cosine == pytest.approx(1.0, abs=1e-6)


def test_a_freshly_grown_adapter_gives_its_base_models_analysis(model, tokenizer):
    base = analysis(model, tokenizer)
    grown = get_peft_model(copy.deepcopy(model), GrowConfig(k=2)).train()
    result = analysis(grown, tokenizer)
    assert torch.allclose(result.effects, base.effects, atol=1e-6)
    shared, cosine = fv.compare(base, result)
    assert shared == 10 and cosine == pytest.approx(1.0, abs=1e-5)
    assert grown.training  # analyze evaluates without dropout and gives the model back in the mode it came in


def test_trained_weights_move_the_heads_and_lora_wrapped_projections_are_found(model, tokenizer):
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules=["o_proj"], init_lora_weights=False))
    heads = fv.find_heads(lora)
    assert len(heads.projections) == model.config.num_hidden_layers
    assert all(type(p).__name__ == "Linear" and hasattr(p, "base_layer") for p in heads.projections)
    shared, cosine = fv.compare(analysis(model, tokenizer), analysis(lora, tokenizer))
    assert cosine < 0.999  # the adapter's random non-zero weights change what the heads write


def test_a_model_without_known_projections_is_refused_with_the_fix(model):
    with pytest.raises(ValueError, match="no attention output projection.*regular expression"):
        fv.find_heads(model, pattern=r"no_such_module$")


def test_the_command_line_compares_an_adapter_with_its_base(model, tmp_path, capsys):
    from peft_grow import cli

    get_peft_model(copy.deepcopy(model), GrowConfig(k=2)).save_pretrained(tmp_path / "grown")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["function-vectors", str(MODEL), str(tmp_path / "grown"), "--prompts", "4", "--task", "copy"])
    assert exit_info.value.code == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "10/10" in line]
    assert len(rows) == 2 and all("1.000" in row for row in rows)  # a fresh adapter: the base's heads and vector
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["function-vectors", str(MODEL), str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err


def answer_probs(model, inputs, answers):
    """The probability of each prompt's answer at its final token, from a whole forward pass."""
    logits = model(**inputs).logits[:, -1].float()
    return logits.softmax(-1).gather(1, answers[:, None]).squeeze(1)


def test_cached_patching_equals_running_each_patched_prompt_whole(model, tokenizer):
    """The effects computed on the final token over a cached prefix equal those of whole patched forward passes."""
    heads = fv.find_heads(model)
    pairs = fv.task_pairs("capitalize")
    clean, corrupted = fv.icl_prompts(pairs, 6), fv.icl_prompts(pairs, 6, shuffle_labels=True)
    means = fv.mean_head_activations(model, tokenizer, clean, heads)
    effects = fv.causal_indirect_effects(model, tokenizer, corrupted, means, heads)
    inputs, answers = fv._encode(tokenizer, corrupted, torch.device("cpu"))
    with torch.no_grad():
        baseline = answer_probs(model, inputs, answers)
        for layer, head in [(0, 0), (2, 5), (4, 7)]:
            span = slice(head * heads.head_dim, (head + 1) * heads.head_dim)

            def patch(module, args, span=span, value=means[layer, head]):
                x = args[0].clone()
                x[:, -1, span] = value
                return (x, *args[1:])

            handle = heads.projections[layer].register_forward_pre_hook(patch)
            whole = (answer_probs(model, inputs, answers) - baseline).mean().item()
            handle.remove()
            assert effects[layer, head].item() == pytest.approx(whole, abs=1e-6)
