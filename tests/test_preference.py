"""Preference and reward training through TRL with `peft_config=GrowConfig(...)`, on the real stories260K model.

DPO: the reference model is the base with the adapter disabled, which growth reproduces exactly, so the implicit
rewards start at exactly zero; only the new weights train; the adapter reloads. Reward model: a sequence
classifier (`task_type="SEQ_CLS"`) with its score head in `modules_to_save` trains the head and the new weights.
"""

from pathlib import Path

import torch
from datasets import Dataset
from helpers import DEVICE
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from peft_grow import GrowConfig

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODEL = DATA / "stories260K"


def tokenizer():
    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.pad_token = tok.unk_token  # the model has no pad token; TRL's collators need one
    return tok


def preferences(rows: int = 16) -> Dataset:
    lines = [line for line in (DATA / "tinyshakespeare.txt").read_text().splitlines() if len(line.split()) > 4]
    return Dataset.from_dict(
        {
            "prompt": [" ".join(line.split()[:3]) for line in lines[:rows]],
            "chosen": [" " + " ".join(line.split()[3:]) for line in lines[:rows]],
            "rejected": [" " + " ".join(line.split()[3:][::-1]) for line in lines[:rows]],
        }
    )


def common(out: Path) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        activation_checkpointing=True,  # TRL's default, under transformers' current name (TRL sets the old one)
    )


def test_dpo_starts_from_the_base_as_reference_trains_only_new_weights_and_reloads(tmp_path):
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(MODEL).to(DEVICE),
        args=DPOConfig(**common(tmp_path), max_length=48),
        train_dataset=preferences(),
        processing_class=tokenizer(),
        peft_config=GrowConfig(task_type="CAUSAL_LM", layers=[1, 3]),
    )
    model = trainer.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".grow_" in n for n in trained)
    trainer.train()
    first = next(entry for entry in trainer.state.log_history if "rewards/chosen" in entry)
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0  # the reference is the base, exactly
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(MODEL).to(DEVICE), tmp_path / "adapter", is_trainable=True
    )
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_reward_model_trains_the_score_head_and_the_new_weights(tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1).to(DEVICE)
    tok = tokenizer()
    base.config.pad_token_id = tok.pad_token_id
    trainer = RewardTrainer(
        model=base,
        args=RewardConfig(**common(tmp_path), max_length=48),
        train_dataset=preferences(),
        processing_class=tok,
        peft_config=GrowConfig(task_type="SEQ_CLS", layers=[1, 3], modules_to_save=["score"]),
    )
    model = trainer.model
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(".grow_" in n for n in trained) and any("score" in n for n in trained)
    assert all(".grow_" in n or "score" in n for n in trained)
    trainer.train()
    moved = {n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])}
    assert any(".grow_" in n for n in moved) and any("score" in n for n in moved)


def test_grpo_generates_through_the_unmerged_grown_model(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    def longer_is_better(completions, **kwargs):
        return [float(len(c)) for c in completions]

    prompts = Dataset.from_dict({"prompt": preferences(8)["prompt"]})
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(MODEL).to(DEVICE),
        reward_funcs=longer_is_better,
        args=GRPOConfig(**common(tmp_path), num_generations=2, max_completion_length=8, generation_batch_size=4),
        train_dataset=prompts,
        processing_class=tokenizer(),
        peft_config=GrowConfig(task_type="CAUSAL_LM", layers=[1, 3]),
    )
    trained = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(".grow_" in n for n in trained)
    trainer.train()
    assert any("completions/mean_length" in entry for entry in trainer.state.log_history)
    assert any(not torch.equal(p, trained[n]) for n, p in trainer.model.named_parameters() if n in trained)
