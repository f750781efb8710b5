"""What PEFT users reach for beyond the tuner itself: generate, task heads, trainable tokens, Trainer."""

import copy

import pytest
import torch
from helpers import DEVICE, logits, sample_inputs, tiny_model
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from peft_grow import GrowConfig, GrowLayer
from peft_grow.tuner.architectures import linear_shape


def test_generate_matches_the_base_model_at_initialisation():
    base = tiny_model("llama")
    ids = sample_inputs(base)["input_ids"]
    expected = base.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    model = get_peft_model(copy.deepcopy(base), GrowConfig(k=3, task_type="CAUSAL_LM"))
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0), expected)


def test_sequence_classification_head_is_trained_and_saved(tmp_path):
    model = get_peft_model(tiny_model("bert"), GrowConfig(layers=[0], task_type="SEQ_CLS"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable) and any(".grow_" in n for n in trainable)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter_model.safetensors", framework="pt") as f:
        assert any("classifier" in key for key in f.keys())  # noqa: SIM118


def test_trainable_token_indices():
    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[0], trainable_token_indices=[3, 4]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("token_adapter" in n for n in trainable)


def test_loaded_adapter_is_frozen_unless_trainable(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    get_peft_model(base, GrowConfig()).save_pretrained(tmp_path / "adapter")
    for is_trainable in (False, True):
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        model = PeftModel.from_pretrained(base, tmp_path / "adapter", is_trainable=is_trainable)
        assert any(p.requires_grad for p in model.parameters()) == is_trainable


def test_transformers_trainer_trains_and_checkpoints(tmp_path):
    model = get_peft_model(tiny_model("llama"), GrowConfig(layers=[1], task_type="CAUSAL_LM"))
    inputs = sample_inputs(model, batch=8, length=9)["input_ids"].cpu()
    dataset = [{"input_ids": row, "labels": row} for row in inputs]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_steps=3,
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        logging_steps=1,
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "adapter_config.json").is_file()
    assert logits(model, {"input_ids": inputs[:2].to(DEVICE)}).isfinite().all()


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3"])
def test_grown_layers_expose_the_feature_counts_they_compute_with(name):
    """in_features / out_features as PEFT's own layers expose them: the widths of the current computation."""
    base = tiny_model(name)
    model = get_peft_model(base, GrowConfig(k=3, layers=[0]))
    layers = [m for m in model.modules() if isinstance(m, GrowLayer)]
    seen = {}

    def record(module, args, out):
        seen[module] = (args[0].shape[-1], out.shape[-1])

    hooks = [m.register_forward_hook(record) for m in layers]
    model(**sample_inputs(model))
    for hook in hooks:
        hook.remove()
    assert all(seen[m] == (m.in_features, m.out_features) for m in layers)
    assert any(m.in_features != linear_shape(m.get_base_layer())[0] for m in layers)  # the down side is wider
    with model.disable_adapter():
        assert all((m.in_features, m.out_features) == linear_shape(m.get_base_layer()) for m in layers)
    model.merge_adapter()
    assert all((m.in_features, m.out_features) == linear_shape(m.get_base_layer()) for m in layers)
    assert all(seen[m] == (m.in_features, m.out_features) for m in layers)  # merged: the base layer is wide
