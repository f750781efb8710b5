"""Greedy answers to prompts and their scores; the loss on a reference text with the adapter on and off."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ..sequences import token_windows
from .data import Example
from .metrics import METRICS, bleu, choice_accuracy, exact_match

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad batches with: the pad token, else end-of-sequence, else unknown, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return candidate
    return 0  # padded positions are masked out; any id will do


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 8,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations of `prompts`: only the new text, special tokens dropped.

    Prompts are encoded with the tokenizer's own special tokens and left-padded by hand, so a tokenizer
    without a pad token works and is not modified. Works for a PeftModel (adapter on) and a plain model. A
    continuation ends at EOS, after `max_new_tokens`, or once it ends with one of the `stop` strings (kept).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string.")
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    answers: list[str] = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            encoded = [tokenizer(p)["input_ids"] for p in prompts[start : start + batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                **({"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}),
            )
            answers += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return answers


def score_generation(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    metric: str = "exact_match",
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> float:
    """Generate an answer to every example and score it: "exact_match" or "choice" in [0, 1], "bleu" 0-100.

    "choice" compares option letters (extract_choice), the fair reading of "(F) local weather" against "F";
    "bleu" scores the first line of each generation, which stops at its first newline. max_new_tokens defaults
    to 16, or 128 for "bleu".
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: expected one of {METRICS}.")
    if max_new_tokens is None:
        max_new_tokens = 128 if metric == "bleu" else 16
    stop = ("\n",) if metric == "bleu" else ()
    predictions = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size, stop)
    references = [e.answer for e in examples]
    if metric == "bleu":
        return bleu([p.strip().split("\n", 1)[0].strip() for p in predictions], references)
    if metric == "choice":
        return choice_accuracy(predictions, references)
    return exact_match(predictions, references)


@torch.no_grad()
def reference_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> float:
    """Mean next-token loss (nats) over non-overlapping `seq_len`-token windows of a reference text.

    A string is encoded with the tokenizer as is; pass ids to control special tokens. A text shorter than
    one window is scored as one window; a shorter tail after whole windows is dropped (equal weights).
    """
    ids = _as_ids(tokenizer, text_or_ids)
    if len(ids) < 2:
        raise ValueError(f"Expected a reference text of at least 2 tokens, found {len(ids)}.")
    windows = token_windows(ids, seq_len) if len(ids) >= seq_len else ids.view(1, -1)
    if max_windows is not None:
        windows = windows[:max_windows]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return total / count


def _as_ids(tokenizer: PreTrainedTokenizerBase, text_or_ids: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        return torch.tensor(tokenizer(text_or_ids)["input_ids"], dtype=torch.long)
    return torch.as_tensor(text_or_ids, dtype=torch.long).flatten()


def loss_with_and_without_adapter(
    peft_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> tuple[float, float]:
    """(loss with the active adapter, loss with it disabled) on a reference text, in the same model.

    Disabling the adapter gives back exactly the base model (docs/method.md), so the second value is the
    base model's loss without keeping a copy of it; on the original domain the difference is the forgetting.
    """
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError(
            f"Expected a PeftModel (with disable_adapter()), found {type(peft_model).__name__}; for a plain "
            "model use reference_loss()."
        )
    kwargs = dict(seq_len=seq_len, batch_size=batch_size, max_windows=max_windows)
    with_adapter = reference_loss(peft_model, tokenizer, text_or_ids, **kwargs)
    with peft_model.disable_adapter():
        without_adapter = reference_loss(peft_model, tokenizer, text_or_ids, **kwargs)
    return with_adapter, without_adapter
