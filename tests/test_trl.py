"""TRL's SFTTrainer with `peft_config=GrowConfig(...)`: train, checkpoint, resume, reload, chat templates, packing.

The base is the real pretrained stories260K with its own tokenizer, so TRL's tokenisation, templating and
collation run as they do for users. Each run is a few steps on one thread.
"""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import DEVICE
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from peft_grow import GrowConfig

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODEL = DATA / "stories260K"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def text_dataset(rows: int = 32) -> Dataset:
    paragraphs = [p for p in (DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    return Dataset.from_dict({"text": paragraphs[:rows]})


def sft_config(out: Path, **overrides) -> SFTConfig:
    settings = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=64,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=DEVICE.type == "cpu",
        bf16=False,  # SFTConfig turns bf16 autocast on by default, even on CPU; these tests compare in float32
        seed=0,
        dataloader_num_workers=0,
        activation_checkpointing=True,  # TRL's default, under transformers' current name (TRL sets the old one)
    )
    return SFTConfig(**{**settings, **overrides})


def base_model(**kwargs):
    return AutoModelForCausalLM.from_pretrained(MODEL, **kwargs).to(DEVICE)


def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


def grown_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def sample_ids(vocab: int = 512) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 24), generator=torch.Generator().manual_seed(0)).to(DEVICE)


@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_sft_trainer_trains_only_the_new_weights_and_the_adapter_reloads_exactly(tmp_path, mode):
    trainer = SFTTrainer(
        model=base_model(),
        args=sft_config(tmp_path),
        train_dataset=text_dataset(),
        peft_config=GrowConfig(task_type="CAUSAL_LM", layers=[1, 3], mode=mode),
        processing_class=tokenizer(),
    )
    model = trainer.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = grown_state(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
        ".grow_" in n for n, p in model.named_parameters() if p.requires_grad
    )
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    trained = grown_state(model)
    assert all(not torch.equal(trained[k], start[k]) for k in start), "every new tensor should have trained"

    trainer.save_model()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k].to(DEVICE), trained[k]) for k in saved)
    assert "import peft_grow" in (tmp_path / "README.md").read_text()  # TRL's card does not replace ours

    reloaded = PeftModel.from_pretrained(base_model(), tmp_path).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(sample_ids()).logits, model(sample_ids()).logits)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path):
    def run(out: Path, resume: str | None = None):
        trainer = SFTTrainer(
            model=base_model(),
            args=sft_config(out, max_steps=6, save_strategy="steps", save_steps=3),
            train_dataset=text_dataset(),
            peft_config=GrowConfig(task_type="CAUSAL_LM", k=3),
            processing_class=tokenizer(),
        )
        trainer.train(resume_from_checkpoint=resume)
        return grown_state(trainer.model)

    straight = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert load_file(checkpoint / "adapter_model.safetensors").keys() == straight.keys()  # new weights only
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_packing_and_padding_free_batches_keep_the_function_at_initialisation(tmp_path):
    """BFD packing flattens a batch into one row with restarting position ids; growth is per token, so the
    grown model's loss on such a batch must still equal the base model's before training."""
    trainer = SFTTrainer(
        model=base_model(),
        args=sft_config(tmp_path, packing=True, max_length=128),
        train_dataset=text_dataset(),
        peft_config=GrowConfig(task_type="CAUSAL_LM"),
        processing_class=tokenizer(),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "position_ids" in batch and batch["input_ids"].shape[0] == 1  # padding-free: one packed row
    batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
    model = trainer.model
    with torch.no_grad():
        grown = model(**batch).loss
        with model.disable_adapter():
            base = model(**batch).loss
    assert torch.allclose(grown, base, atol=1e-5, rtol=0)
    start = grown_state(model)
    trainer.train()
    assert any(not torch.equal(v, start[k]) for k, v in grown_state(model).items())


def test_completion_only_loss_trains_on_prompt_completion_data(tmp_path):
    data = Dataset.from_dict(
        {
            "prompt": ["Once upon a time, there was a"] * 16,
            "completion": [" little girl named Lily. She liked to play."] * 16,
        }
    )
    trainer = SFTTrainer(
        model=base_model(),
        args=sft_config(tmp_path, completion_only_loss=True, max_steps=3),
        train_dataset=data,
        peft_config=GrowConfig(task_type="CAUSAL_LM", mode="train"),
        processing_class=tokenizer(),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    prompt_length = len(tokenizer()("Once upon a time, there was a")["input_ids"])
    assert (batch["labels"][:, :prompt_length] == -100).all()  # the prompt is masked out of the loss
    assert (batch["labels"][:, prompt_length:] != -100).any()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = dict(trainer.model.named_parameters())
    assert before and all(".grow_" in n for n in before)
    assert any(not torch.equal(after[n], p) for n, p in before.items())  # the completion's loss moved grown weights


def chat_source_tokenizer(folder: Path) -> Path:
    """A local tokenizer with a ChatML template whose two markers the stories260K vocabulary lacks."""
    source = tokenizer()
    source.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    source.eos_token = "<|im_end|>"
    source.chat_template = CHAT_TEMPLATE
    source.save_pretrained(folder)
    return folder


def test_chat_template_with_added_tokens_trains_the_new_tokens(tmp_path):
    """TRL adds the template's tokens, resizes the embeddings, and asks PEFT to train the new rows through
    `trainable_token_indices` and `lm_head` through `modules_to_save`: GrowConfig must accept both, train them,
    and save them with the adapter. (The base is untied: see docs/training.md for tied embeddings.)"""
    conversation = [
        {"role": "user", "content": "Who is Lily?"},
        {"role": "assistant", "content": "Lily is a little girl who likes to play."},
    ]
    config = GrowConfig(task_type="CAUSAL_LM", layers=[4])
    trainer = SFTTrainer(
        model=base_model(tie_word_embeddings=False),
        args=sft_config(tmp_path / "out", chat_template_path=str(chat_source_tokenizer(tmp_path / "source"))),
        train_dataset=Dataset.from_list([{"messages": conversation}] * 16),
        peft_config=config,
        processing_class=tokenizer(),
    )
    added = config.trainable_token_indices["embed_tokens"]
    assert min(added) == 512 and "lm_head" in config.modules_to_save
    model = trainer.model
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight[:512].detach().clone()
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in start) and any("modules_to_save" in n for n in start)
    trainer.train()
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, start[n])}
    assert moved == set(start), f"did not train: {set(start) - moved}"
    assert torch.equal(embeddings.weight[:512], old_rows)  # only the added tokens' rows move

    trainer.save_model()
    vocabulary = len(trainer.processing_class)
    base = base_model(tie_word_embeddings=False)
    base.resize_token_embeddings(vocabulary)  # as for any PEFT adapter: the base must have the tokenizer's size
    reloaded = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    model.eval()
    ids = sample_ids(vocabulary)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
