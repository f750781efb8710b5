"""transformers.Trainer with a grown model: checkpoints, precision, gradient checkpointing, torch.compile."""

from pathlib import Path

import pytest
import torch
import torch._dynamo as dynamo
from helpers import DEVICE, tiny_model
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from scripts.train_ddp import RandomText
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from peft_grow import GrowConfig

MODEL = Path(__file__).resolve().parents[1] / "examples" / "data" / "stories260K"


def arguments(out: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**settings, **overrides})


def grown(config: GrowConfig | None = None, dtype: torch.dtype = torch.float32, **peft_kwargs) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=dtype).to(DEVICE)
    return get_peft_model(base, config or GrowConfig(layers=[0, 2, 4]), **peft_kwargs)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_trainer_checkpoints_hold_only_the_new_weights_and_reload_exactly(tmp_path):
    model = grown()
    trainer = Trainer(
        model=model, args=arguments(tmp_path, save_strategy="steps", save_steps=2), train_dataset=RandomText()
    )
    trainer.train()
    checkpoint = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    assert checkpoint.keys() == state(model).keys() and all(".grow_" in k for k in checkpoint)
    trainer.save_model()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MODEL).to(DEVICE), tmp_path).eval()
    ids = RandomText().ids[:2].to(DEVICE)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_gradient_checkpointing_gives_the_same_training(tmp_path, use_reentrant, mode):
    def run(**checkpointing) -> dict[str, torch.Tensor]:
        model = grown(GrowConfig(mode=mode))
        Trainer(model=model, args=arguments(tmp_path, **checkpointing), train_dataset=RandomText()).train()
        return state(model)

    plain = run()
    checkpointed = run(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype,flag,autocast_adapter_dtype",
    [(torch.bfloat16, "bf16", True), (torch.bfloat16, "bf16", False), (torch.float16, "fp16", True)],
    ids=["bf16-base-fp32-new", "bf16-base-bf16-new", "fp16-base-fp32-new"],
)
def test_half_precision_bases_train_under_autocast(tmp_path, dtype, flag, autocast_adapter_dtype):
    """PEFT's default keeps the new weights in float32 (master weights) on a bf16/fp16 base; with
    autocast_adapter_dtype=False they stay in the base dtype. Both train under the trainer's autocast. (fp16
    trainable weights are left out: CUDA's fp16 grad scaler refuses to unscale fp16 gradients.)"""
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=dtype).to(DEVICE)
    model = get_peft_model(base, GrowConfig(layers=[1, 3]), autocast_adapter_dtype=autocast_adapter_dtype)
    new_dtype = torch.float32 if autocast_adapter_dtype else dtype
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {new_dtype}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = state(model)
    result = Trainer(model=model, args=arguments(tmp_path, **{flag: True}), train_dataset=RandomText()).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {new_dtype}
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(v, start[k]) for k, v in state(model).items())


def test_bfloat16_new_weights_lose_small_updates_that_float32_ones_keep():
    """Why the default stays float32: the new weights are copies of pretrained rows, and at a typical fine-tuning
    learning rate one AdamW step (size ~lr) is below half a bf16 spacing for almost all of them."""

    def changed_share(autocast_adapter_dtype: bool) -> float:
        model = grown(GrowConfig(), dtype=torch.bfloat16, autocast_adapter_dtype=autocast_adapter_dtype)
        weights = [p for p in model.parameters() if p.requires_grad]
        before = [w.detach().clone() for w in weights]
        ids = RandomText().ids[:4].to(DEVICE)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        torch.optim.AdamW(weights, lr=1e-5, weight_decay=0.0).step()
        moved = sum((w != b).sum().item() for w, b in zip(weights, before, strict=True))
        return moved / sum(w.numel() for w in weights)

    assert changed_share(autocast_adapter_dtype=True) > 0.99
    assert changed_share(autocast_adapter_dtype=False) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_grown_forward_and_loss_compile_into_one_graph(mode):
    model = get_peft_model(tiny_model("llama"), GrowConfig(k=3, mode=mode, layers=[0, 2], symmetry_noise=0.1))
    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    explanation = dynamo.explain(lambda batch: model(input_ids=batch, labels=batch).loss)(ids)
    dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.slow
def test_compiled_grown_model_trains_like_the_eager_one():
    torch.manual_seed(0)
    eager = get_peft_model(tiny_model("llama", num_hidden_layers=1), GrowConfig(mode="train"))
    compiled_model = get_peft_model(tiny_model("llama", num_hidden_layers=1), GrowConfig(mode="train"))
    compiled = torch.compile(compiled_model)
    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    losses = []
    for model, parameters in ((eager, eager.parameters()), (compiled, compiled_model.parameters())):
        optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-2)
        run = []
        for _ in range(3):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.append(loss.item())
        losses.append(run)
    dynamo.reset()
    assert losses[0][-1] < losses[0][0]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-4, rtol=1e-4)
