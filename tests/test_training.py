"""What training moves and what it leaves alone, bit for bit."""

import pytest
import torch
from helpers import tiny_model, train
from peft import get_peft_model

from peft_grow import GrowConfig


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "opt"])
@pytest.mark.parametrize("mode,init", [("freeze", "copy"), ("train", "copy"), ("freeze", "zero"), ("train", "zero")])
def test_only_trainable_tensors_move(name, mode, init):
    model = get_peft_model(tiny_model(name), GrowConfig(layers=[0, 2], k=3, mode=mode, init=init))
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".grow_" in n for n in trainable)
    train(model)
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


@pytest.mark.parametrize("init", ["copy", "zero"])
def test_g_train_leaves_the_down_projection_untouched(init):
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=2, mode="train", init=init))
    down = model.base_model.model.model.layers[1].mlp.down_proj
    base_before = down.base_layer.weight.detach().clone()
    new_before = {n: p.detach().clone() for n, p in down.named_parameters() if ".grow_" in f".{n}"}
    up = model.base_model.model.model.layers[1].mlp.up_proj
    assert up.grow_delta_weight["default"].requires_grad and up.grow_new_weight["default"].requires_grad
    train(model)
    assert torch.equal(down.base_layer.weight, base_before)
    assert not down.base_layer.weight.requires_grad
    if init == "copy":  # every down block is the frozen W_down / k: nothing of the down side trains
        assert not any(p.requires_grad for p in down.parameters())
    else:  # Appendix C.2: the new zero columns must train, or the new units could never contribute
        assert all(not torch.equal(p, new_before[n]) for n, p in down.named_parameters() if n in new_before)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_trains(use_reentrant):
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=2))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.enable_input_require_grads()
    before = snapshot(model)
    losses = train(model, steps=8, weight_decay=0.0)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(".grow_" in n for n in changed)


def test_grown_model_learns_what_the_base_cannot_fit():
    """A sanity check that the new capacity is wired into the loss: training lowers it."""
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=2))
    losses = train(model, steps=30, lr=3e-3, weight_decay=0.0, seed=0)
    assert losses[-1] < losses[0] - 0.1, losses
