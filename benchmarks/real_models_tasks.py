"""The real-model benchmark's new tasks and their training batches: which files each task reads and how it is
scored (TASKS), and prompt + answer + EOS batches with the loss on the answer and EOS only."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from peft_grow import evaluation as ev


@dataclass(frozen=True)
class Task:
    train: str  # file relative to the data folder
    test: str
    read: Callable[[Path], list[ev.Example]]  # the peft_grow.evaluation reader of its files
    metric: str  # "exact_match" or "bleu"
    max_new_tokens: int


TASKS = {
    "qasc": Task("qasc/train.json", "qasc/dev.json", ev.qasc_examples, "exact_match", 4),
    "qasc-facts": Task(
        "qasc/train.json", "qasc/dev.json", partial(ev.qasc_examples, with_facts=True), "exact_match", 4
    ),
    "mathqa": Task("mathqa/dev.json", "mathqa/test.json", ev.mathqa_examples, "exact_match", 4),
    "mtnt": Task("mtnt/valid.en-fr.tsv", "mtnt/test.en-fr.tsv", partial(ev.mtnt_examples, one_shot=True), "bleu", 96),
}


def read_examples(data: Path, task: str, split: str) -> list[ev.Example]:
    spec = TASKS[task]
    return spec.read(data / {"train": spec.train, "test": spec.test}[split])


def spread(items: list, n: int) -> list:
    """`n` items evenly spaced over the list (all of them if it holds fewer): a fixed sample of the whole file."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


# Batches: right-padded prompt + answer + EOS, the loss on the answer and EOS only


@dataclass
class Encoded:
    prompt: list[int]
    answer: list[int]  # the answer's tokens and EOS


def encode(tokenizer, examples: list[ev.Example]) -> list[Encoded]:
    """Prompt and answer tokenized apart, as generation sees them: the prompt with the tokenizer's own special
    tokens, then " answer" and EOS."""
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    answers = tokenizer([" " + e.answer for e in examples], add_special_tokens=False)["input_ids"]
    return [Encoded(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]


def collate(items: list[Encoded], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """A right-padded batch, and the positions whose logits predict an answer token in some row (`keep`).

    Right padding leaves no row of queries fully masked (on CUDA, attention over a fully masked row gives NaN, and
    0 * NaN poisons every gradient). The loss needs logits at `keep` only: a few positions per row instead of all.
    Prompts longer than `max_len` minus their answer lose their beginning (the question stays next to the answer).
    """
    rows = [(it.prompt + it.answer)[-max_len:] for it in items]
    starts = [len(r) - min(len(it.answer), len(r) - 1) for it, r in zip(items, rows, strict=True)]  # first answer
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -100)  # targets[i, t]: the token that position t must predict
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets[i, start - 1 : len(row) - 1] = torch.tensor(row[start:])
    keep = (targets != -100).any(0).nonzero().flatten()
    return {"input_ids": input_ids, "attention_mask": mask, "labels": targets[:, keep], "keep": keep}


def answer_loss(model: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, from logits at the `keep` positions only (a 262k-word vocabulary
    makes full logits the most expensive part of a step)."""
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    logits = model(**inputs, logits_to_keep=batch["keep"].to(device)).logits.float()
    labels = batch["labels"].to(device)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def full_label_batch(batch: dict) -> dict:
    """The same batch with labels over whole rows, for code that calls model(**batch).loss (the pilot ranking);
    models shift labels themselves, so each answer token stands at its own position."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, batch["keep"] + 1] = batch["labels"]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def batches(data: list[Encoded], size: int, seed: int, pad_id: int, max_len: int) -> Iterator[dict]:
    """Shuffled epochs over the training examples; the same order for every method at a given seed."""
    order = random.Random(seed)
    while True:
        indices = list(range(len(data)))
        order.shuffle(indices)
        for start in range(0, len(indices) - size + 1, size):
            yield collate([data[i] for i in indices[start : start + size]], pad_id, max_len)
