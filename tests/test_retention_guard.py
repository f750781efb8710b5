"""The retention guard (peft_grow.training): the KL term, its text sources, its trainers, and its refusals.

The base is the real pretrained stories260K with its own tokenizer; the task text is tiny Shakespeare, the
retention text what the model writes itself.
"""

import copy
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import DEVICE
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from trl import SFTConfig
from trl.experimental.gkd import GKDTrainer

from peft_grow import GrowConfig
from peft_grow.training import (
    GuardedSFTTrainer,
    GuardedTrainer,
    RetentionGuard,
    RetentionGuardError,
    dataset_windows,
    drop_overlapping,
    prompt_windows,
    retention_kl,
    self_generated_windows,
)

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODEL = DATA / "stories260K"


def base_model():
    return AutoModelForCausalLM.from_pretrained(MODEL).to(DEVICE)


def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


def shakespeare(rows: int = 32) -> list[str]:
    return [p for p in (DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()][:rows]


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    """32 windows of 24 tokens of the base model's own text (sampled once for the module)."""
    return self_generated_windows(base_model(), tokenizer(), count=32, length=24, seed=0, batch=8)


def trained_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


# ------------------------------------------------------------------------------------------------ the KL term


ADAPTERS = {  # name -> (config, whether the start is bit-exact)
    "grow-k2": (GrowConfig(layers=[1, 3], k=2), True),  # halves of W_down add up exactly
    "grow-k3": (GrowConfig(k=3), False),  # thirds round: float32 rounding, far below any training signal
    "grow-train": (GrowConfig(mode="train"), True),
    "lora": (LoraConfig(target_modules="all-linear"), True),  # B = 0
}


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_kl_term_is_zero_at_initialisation_for_a_function_preserving_adapter(windows, name):
    config, exact = ADAPTERS[name]
    model = get_peft_model(base_model(), config)
    guard = RetentionGuard(windows, batch_size=4)
    kl = guard.penalty(model, 0)[1].item()
    assert kl == 0.0 if exact else abs(kl) < 1e-7
    # an adapter that is not the identity moves the distribution
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    assert guard.penalty(model, 0)[1].item() > 1e-4


def test_the_kl_term_is_trls_generalised_jsd_at_beta_0_times_the_temperature_squared():
    student, teacher = torch.randn(2, 5, 40), torch.randn(2, 5, 40)
    for temperature in (1.0, 2.0):
        theirs = GKDTrainer.generalized_jsd_loss(
            student, teacher, labels=torch.zeros(2, 5, dtype=torch.long), beta=0.0, temperature=temperature
        )
        torch.testing.assert_close(retention_kl(student, teacher, temperature), theirs * temperature**2)


def test_the_base_logits_are_those_of_a_separately_loaded_base_model(windows):
    model = get_peft_model(base_model(), GrowConfig(k=2))
    with torch.no_grad():  # train the adapter away from the identity first
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    guard = RetentionGuard(windows)
    ids = guard.batch(0).to(DEVICE)
    with torch.no_grad():
        assert torch.equal(guard.base_logits(model, ids), base_model()(input_ids=ids).logits)


def test_the_gradient_reaches_only_the_trainable_parameters(windows):
    model = get_peft_model(base_model(), GrowConfig(layers=[0, 2], k=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    penalty, _ = RetentionGuard(windows, weight=2.0).penalty(model, 0)
    penalty.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)


def test_a_full_fine_tune_is_guarded_by_a_frozen_reference_copy(windows):
    model = base_model()
    guard = RetentionGuard(windows, reference=copy.deepcopy(model))
    guard.check(model)
    assert guard.penalty(model, 0)[1].item() == 0.0  # the same weights: exactly the same distribution
    assert not any(p.requires_grad for p in guard.reference.parameters())
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)  # tied embeddings: both move
    penalty, kl = guard.penalty(model, 0)
    penalty.backward()
    assert kl.item() > 0 and model.lm_head.weight.grad is not None


def test_batches_are_a_function_of_the_index_alone_and_cover_every_window_once_per_pass(windows):
    guard = RetentionGuard(windows, batch_size=4, seed=3)
    first_pass = torch.cat([guard.rows(i) for i in range(8)])  # 8 x 4 = the 32 windows
    assert sorted(first_pass.tolist()) == list(range(32))
    assert torch.equal(RetentionGuard(windows, batch_size=4, seed=3).rows(5), guard.rows(5))
    # two micro-batches of 2 read the rows of one batch of 4
    halves = RetentionGuard(windows, batch_size=2, seed=3)
    assert torch.equal(torch.cat([halves.rows(2), halves.rows(3)]), guard.rows(1))
    assert not torch.equal(RetentionGuard(windows, batch_size=4, seed=4).rows(0), guard.rows(0))


# ------------------------------------------------------------------------------------------------ text sources


def test_self_generated_text_is_reproducible_from_its_seed_and_cached(tmp_path, windows):
    model = base_model()
    assert torch.equal(self_generated_windows(model, tokenizer(), count=32, length=24, seed=0, batch=8), windows)
    assert windows.shape == (32, 24) and windows.dtype == torch.long
    other = self_generated_windows(model, tokenizer(), count=32, length=24, seed=1, batch=8)
    assert not torch.equal(other, windows)
    state = torch.random.get_rng_state()
    cached = self_generated_windows(model, tokenizer(), count=32, length=24, seed=0, cache_dir=tmp_path, batch=8)
    assert torch.equal(cached, windows) and torch.equal(torch.random.get_rng_state(), state)  # random state kept
    (file,) = tmp_path.iterdir()
    # a second call reads the file: proven by changing what it holds
    with safe_open(file, "pt") as saved:
        metadata = saved.metadata()
    save_file({"windows": torch.zeros(2, 3, dtype=torch.long)}, file, metadata=metadata)
    again = self_generated_windows(model, tokenizer(), count=32, length=24, seed=0, cache_dir=tmp_path, batch=8)
    assert again.shape == (2, 3)


def test_self_generated_text_is_the_base_models_even_from_a_trained_adapter(windows):
    model = get_peft_model(base_model(), GrowConfig(k=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.train()
    assert torch.equal(self_generated_windows(model, tokenizer(), count=32, length=24, seed=0, batch=8), windows)
    assert model.training  # its mode is given back


def test_the_text_is_the_models_own_stories():
    text = tokenizer().batch_decode(self_generated_windows(base_model(), tokenizer(), count=4, length=48, batch=4))
    words = " ".join(text).split()
    assert len(words) > 60 and sum(w.strip(".,!\"'") in {"the", "a", "and", "to", "was"} for w in words) > 5


def test_dataset_and_prompt_windows_cut_the_tokenized_texts_into_equal_windows():
    texts = shakespeare()
    tok = tokenizer()
    stream = [t for ids in tok(texts)["input_ids"] for t in [*ids, tok.eos_token_id]]
    found = dataset_windows(Dataset.from_dict({"text": texts}), tok, length=32)
    assert found.shape == (len(stream) // 32, 32) and found.flatten().tolist() == stream[: found.numel()]
    assert torch.equal(dataset_windows([{"text": t} for t in texts], tok, 32), found)
    assert torch.equal(dataset_windows(texts, tok, 32, max_windows=3), found[:3])
    assert torch.equal(prompt_windows(Dataset.from_dict({"prompt": texts}), tok, 32), found)


def test_windows_that_share_a_run_of_words_with_the_evaluation_are_dropped():
    tok = tokenizer()
    texts = ["Once upon a time there was a little girl named Lily who loved to play outside in the park."] * 2
    texts += ["The dog ran fast and jumped over the big red ball, then it went home to sleep all day long."] * 2
    found = dataset_windows(texts, tok, length=16)
    question = "Why did Lily love to play outside in the park with her friends?"
    kept, dropped = drop_overlapping(found, tok, [question], n=6)
    assert dropped > 0 and len(kept) == len(found) - dropped
    assert all("play outside in the park" not in t for t in tok.batch_decode(kept))
    assert drop_overlapping(found, tok, ["an unrelated sentence about the weather today"], n=6)[1] == 0


# ------------------------------------------------------------------------------------------------ trainers


def training_args(out: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**settings, **overrides})


def task_data(rows: int = 16) -> Dataset:
    ids = dataset_windows(shakespeare(64), tokenizer(), length=32)[:rows]
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def guarded_run(out: Path, guard: RetentionGuard | None, config=None, **overrides):
    trainer = GuardedTrainer(
        model=get_peft_model(base_model(), config or GrowConfig(layers=[1, 3], k=2)),
        args=training_args(out, **overrides),
        train_dataset=task_data(),
        retention_guard=guard,
    )
    trainer.train()
    return trainer


def test_weight_0_measures_the_kl_and_trains_bit_identically_to_no_guard(tmp_path, windows):
    plain = trained_state(guarded_run(tmp_path / "plain", None).model)
    measured = guarded_run(tmp_path / "zero", RetentionGuard(windows, weight=0.0))
    assert all(torch.equal(trained_state(measured.model)[k], plain[k]) for k in plain)
    logged = [h["retention_kl"] for h in measured.state.log_history if "retention_kl" in h]
    assert len(logged) == 3 and logged[0] == 0.0 and logged[-1] > 0  # measured, and it grows as the task is learnt


def test_the_guard_changes_training_and_keeps_the_model_closer_to_its_base(tmp_path, windows):
    plain = guarded_run(tmp_path / "plain", RetentionGuard(windows, weight=0.0), max_steps=6)
    kept = guarded_run(tmp_path / "kept", RetentionGuard(windows, weight=10.0), max_steps=6)
    probe = RetentionGuard(windows, batch_size=32)
    with torch.no_grad():
        drift_plain, drift_kept = (probe.kl(t.model, probe.batch(0).to(DEVICE)).item() for t in (plain, kept))
    assert drift_kept < 0.7 * drift_plain  # measured: 0.17 against 0.29


def test_gradient_accumulation_gives_the_update_of_one_large_batch(tmp_path, windows):
    large = guarded_run(tmp_path / "large", RetentionGuard(windows, weight=5.0, batch_size=4), max_steps=2)
    accumulated = guarded_run(
        tmp_path / "accumulated",
        RetentionGuard(windows, weight=5.0, batch_size=2),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    expected = trained_state(large.model)
    found = trained_state(accumulated.model)
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], atol=1e-5, rtol=1e-4)
    # and the same holds where the task loss is normalised over the accumulated batch's tokens (the model takes
    # num_items_in_batch): the guard's term must then be divided by the accumulation steps itself
    assert accumulated.model_accepts_loss_kwargs


def sft_run(out: Path, guard: RetentionGuard, resume: str | None = None, **overrides):
    trainer = GuardedSFTTrainer(
        model=base_model(),
        args=SFTConfig(
            **{
                "output_dir": str(out),
                "max_steps": 6,
                "per_device_train_batch_size": 4,
                "learning_rate": 1e-3,
                "max_length": 64,
                "logging_steps": 1,
                "report_to": [],
                "use_cpu": DEVICE.type == "cpu",
                "bf16": False,
                "seed": 0,
                "dataloader_num_workers": 0,
                "activation_checkpointing": True,
                **overrides,
            }
        ),
        train_dataset=Dataset.from_dict({"text": shakespeare()}),
        peft_config=GrowConfig(task_type="CAUSAL_LM", k=2),
        processing_class=tokenizer(),
        retention_guard=guard,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_sft_trainer_runs_end_to_end_with_the_guard_and_logs_the_kl_beside_the_loss(tmp_path, windows):
    trainer = sft_run(tmp_path, RetentionGuard(windows, weight=1.0), save_strategy="no")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all("retention_kl" in h and math.isfinite(h["retention_kl"]) for h in logs)
    assert logs[0]["retention_kl"] == 0.0 and logs[-1]["retention_kl"] > 0
    trainer.save_model()
    saved = load_file(tmp_path / "adapter_model.safetensors")  # the adapter's format is unchanged by the guard
    assert saved.keys() == get_peft_model_state_dict(trainer.model).keys()


def test_resuming_a_guarded_sft_run_gives_the_uninterrupted_run(tmp_path, windows):
    guard = RetentionGuard(windows, weight=1.0)
    straight = trained_state(sft_run(tmp_path / "straight", guard, save_strategy="steps", save_steps=3).model)
    resumed = sft_run(
        tmp_path / "resumed", guard, resume=str(tmp_path / "straight" / "checkpoint-3"), save_strategy="no"
    )
    found = trained_state(resumed.model)
    assert all(torch.equal(found[k], straight[k]) for k in straight)


def test_bf16_autocast_and_the_guard_train_together(tmp_path, windows):
    trainer = sft_run(tmp_path, RetentionGuard(windows, weight=1.0), save_strategy="no", max_steps=2)
    assert trainer.state.global_step == 2
    bf16 = sft_run(tmp_path / "bf16", RetentionGuard(windows, weight=1.0), save_strategy="no", max_steps=2, bf16=True)
    logs = [h["retention_kl"] for h in bf16.state.log_history if "retention_kl" in h]
    assert len(logs) == 2 and all(math.isfinite(x) for x in logs)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"weight": -1.0}, "weight must be 0 or more"),
        ({"weight": float("nan")}, "weight must be a finite number"),
        ({"weight": "1"}, "weight must be a finite number"),
        ({"temperature": 0.0}, "temperature must be greater than 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"batch_size": 0}, "batch_size must be an integer of 1 or more"),
    ],
)
def test_bad_numbers_are_refused_with_what_was_expected(windows, settings, message):
    with pytest.raises(RetentionGuardError, match=message):
        RetentionGuard(windows, **settings)


def test_bad_windows_are_refused():
    with pytest.raises(RetentionGuardError, match="2-D int64 tensor"):
        RetentionGuard(torch.zeros(4, 8))
    with pytest.raises(RetentionGuardError, match="at least one window"):
        RetentionGuard(torch.zeros(0, 8, dtype=torch.long))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (Dataset.from_dict({"text": []}), "retention text is empty"),
        (Dataset.from_dict({"text": ["", "  "]}), "retention text is empty"),
        (Dataset.from_dict({"content": ["some words"]}), r"no column 'text'; its columns are \['content'\]"),
        ([{"body": "some words"}], "has no key 'text'"),
        ([], "retention text is empty"),
        (["Once."], "fewer than one window of 128"),
        ([3, 4], "list of records or a list of strings"),
    ],
)
def test_unusable_retention_datasets_are_refused_before_training(data, message):
    with pytest.raises(RetentionGuardError, match=message):
        dataset_windows(data, tokenizer(), length=128)


def test_a_model_with_no_adapter_and_no_reference_is_refused_before_any_step(tmp_path, windows):
    with pytest.raises(RetentionGuardError, match="no PEFT adapter to disable, and no reference model"):
        GuardedTrainer(
            model=base_model(),
            args=training_args(tmp_path),
            train_dataset=task_data(),
            retention_guard=RetentionGuard(windows),
        )


def test_a_reference_with_another_vocabulary_is_refused(windows):
    model = base_model()
    other = copy.deepcopy(model)
    other.resize_token_embeddings(600)
    with pytest.raises(RetentionGuardError, match="reference model predicts 600 tokens, the model 512"):
        RetentionGuard(windows, reference=other).check(model)


def test_text_tokenized_for_another_model_is_refused(windows):
    with pytest.raises(RetentionGuardError, match="token id 9999, but the model's vocabulary has 512"):
        RetentionGuard(torch.full((2, 8), 9999)).check(get_peft_model(base_model(), GrowConfig(k=2)))


def test_trls_self_distillation_trainer_trains_a_grown_adapter_with_the_base_as_its_teacher(tmp_path):
    """SDFTTrainer (TRL's on-policy self-distillation, Shenfeld et al. 2026), the field's neighbour of the guard:
    its default teacher is the model under the adapter, which for GROW is the base exactly."""
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    tok = tokenizer()
    tok.pad_token = tok.pad_token or tok.eos_token
    data = Dataset.from_dict({"prompt": ["Once upon a time"] * 8, "privileged_context": ["Lily went to the park."] * 8})
    args = SDFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        bf16=False,
        logging_steps=1,
        save_strategy="no",
    )
    assert args.teacher_model_kind == "base"
    trainer = SDFTTrainer(
        model=base_model(), args=args, train_dataset=data, processing_class=tok, peft_config=GrowConfig(k=2)
    )
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    before = trained_state(trainer.model)
    trainer.train()
    after = trained_state(trainer.model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every new tensor moved
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
