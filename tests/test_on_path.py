"""Every grown module takes part in the model's own forward on a text input (peft_grow.tuner.paths and the
whole-model check in peft_grow.tuner.checking): growth refuses an MLP that a text input does not reach on its
default path, warns where the user named it, and tells the language model apart from other towers by running it."""

import copy

import pytest
import torch
from peft import get_peft_model

from benchmarks import coverage
from peft_grow import GrowConfig, UnsupportedArchitectureError, find_mlps
from peft_grow.testing import logits, sample_inputs, tiny_model
from peft_grow.tuner.paths import run_watching, text_input


def skipping_layer(model, index: int):
    """`model` whose decoder layer `index` passes its input through: its MLP is in the model but never runs."""
    model.model.layers[index].forward = lambda hidden_states, *args, **kwargs: hidden_states
    return model


def test_an_mlp_that_a_text_input_does_not_reach_is_refused_by_name():
    model = skipping_layer(tiny_model("llama"), 1)
    with pytest.raises(UnsupportedArchitectureError, match=r"model\.layers\.1\.mlp\.down_proj") as refusal:
        get_peft_model(model, GrowConfig())
    assert "do not run when the model reads a text input" in str(refusal.value)
    assert "model.layers.0." not in str(refusal.value)  # only the modules that do not run are named


def test_named_modules_off_the_path_are_grown_with_a_warning_and_check_function_false_is_silent():
    named = GrowConfig(up_modules=[r"mlp\.gate_proj", r"mlp\.up_proj"], down_modules=[r"mlp\.down_proj"])
    with pytest.warns(UserWarning, match=r"model\.layers\.1\.mlp.*Growing them anyway"):
        get_peft_model(skipping_layer(tiny_model("llama"), 1), named)
    grown = get_peft_model(skipping_layer(tiny_model("llama"), 1), GrowConfig(check_function=False))
    assert "model.layers.1.mlp.down_proj" in grown.peft_config["default"].target_modules


def test_a_text_run_reaches_every_layer_and_no_vision_tower():
    model = tiny_model("gemma3")  # multimodal: a vision tower beside the language model
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    reached = run_watching(model, names).reached
    assert any(".language_model.layers.0.mlp." in name for name in reached)
    assert any(".language_model.layers.2.mlp." in name for name in reached)
    assert not any("vision" in name for name in reached), sorted(reached)[:5]


def test_the_text_input_holds_no_special_token():
    model = tiny_model("llama", bos_token_id=95, eos_token_id=94, pad_token_id=93)
    ids = text_input(model).tolist()[0]
    assert len(ids) == 4 and not {93, 94, 95} & set(ids)


def test_a_model_with_several_stacks_that_cannot_be_run_is_refused_listing_them():
    config = coverage.tiny_config("git")  # a vision encoder's stack beside the text decoder's
    with torch.device("meta"):
        model = coverage.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="could not run it on a text input") as refusal:
        find_mlps(model)
    assert "git.encoder.layer" in str(refusal.value) and "git.image_encoder.vision_model.encoder.layers" in str(
        refusal.value
    )


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5", "bert"])
def test_growth_stays_exact_through_the_whole_model_check(name):
    """The check runs the model twice on a few tokens and leaves it as it was: same logits, same training mode."""
    model = tiny_model(name)
    model.train()
    inputs = sample_inputs(model)
    expected = logits(copy.deepcopy(model).eval(), inputs)
    grown = get_peft_model(model, GrowConfig())
    assert grown.training
    assert torch.allclose(logits(grown.eval(), inputs), expected, atol=1e-5)
