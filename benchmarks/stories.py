"""The stories260K setting of examples/demo.py, for the benchmarks that measure on it (forgetting, guard_sweep,
retention, layer_selection, update_ranks): the model, tiny Shakespeare split as the demo splits it, the
original-domain samples, the mean token loss over windows and the demo's training loop.

The demo writes these few lines out itself: an example is a script that imports only peft_grow and libraries and
reads top to bottom, and no benchmark imports an example. The benchmarks take them from here, so that they all
measure the demo's setting in one way (same split, same data order, same loss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from peft_grow.sequences import mean_token_loss, token_windows

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODEL_DIR = DATA / "stories260K"
NEW_DOMAIN = DATA / "tinyshakespeare.txt"  # tiny Shakespeare
ORIGINAL_DOMAIN = DATA / "stories260K_samples.txt"  # text sampled from the model (examples/make_original_domain.py)
BOS = 1
Curve = list[tuple[int, float, float]]  # (step, new-domain loss, original-domain loss)


def load_base() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)


def packed(tokenizer, documents: list[str]) -> torch.Tensor:
    """One token stream, each document preceded by <s> (how llama2.c packed TinyStories)."""
    return torch.tensor([t for ids in tokenizer(documents)["input_ids"] for t in [BOS, *ids]])


def original_samples() -> list[str]:
    return ORIGINAL_DOMAIN.read_text(encoding="utf-8").strip().split("\n\n")


@dataclass
class Data:
    train: torch.Tensor  # one stream of Shakespeare token ids
    new_heldout: torch.Tensor  # [n, seq_len] windows of held-out Shakespeare
    original: torch.Tensor  # [n, seq_len] windows of the original-domain samples


def load_data(tokenizer, seq_len: int) -> Data:
    """The demo's split: Shakespeare cut by position, its last 10% held out; the samples are all held out."""
    ids = packed(tokenizer, [NEW_DOMAIN.read_text(encoding="utf-8")])
    cut = int(len(ids) * 0.9)
    original = packed(tokenizer, original_samples())
    return Data(ids[:cut], token_windows(ids[cut:], seq_len), token_windows(original, seq_len))


def evaluate(model, data: Data) -> tuple[float, float]:
    """(held-out Shakespeare loss, original-domain loss)."""
    return mean_token_loss(model, data.new_heldout), mean_token_loss(model, data.original)


def random_windows(stream: torch.Tensor, batch: int, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    """[batch, seq_len] windows at random offsets of the stream; the same sequence for every method at a seed."""
    order = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=order).tolist()
        yield torch.stack([stream[s : s + seq_len] for s in starts])


def train(
    model,
    stream: torch.Tensor,
    evaluate: Callable[[torch.nn.Module], tuple[float, float]],
    *,
    lr: float,
    steps: int,
    batch: int,
    seq_len: int,
    eval_every: int,
    seed: int,
    penalty: Callable[[torch.nn.Module, int], torch.Tensor] | None = None,
    progress: str | None = None,
) -> Curve:
    """AdamW at a constant rate without weight decay, gradients clipped at 1.0, on random windows of `stream`;
    `evaluate` (new-domain loss, original-domain loss) at step 0, every `eval_every` steps and at the end.
    `penalty(model, step - 1)` is added to each step's loss (the retention guard's term); `progress` names a
    progress bar."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    curve = [(0, *evaluate(model))]
    model.train()
    data = random_windows(stream, batch, seq_len, seed)
    numbers = range(1, steps + 1)
    for step in tqdm(numbers, desc=progress, leave=False, mininterval=1.0) if progress else numbers:
        windows = next(data)
        extra = penalty(model, step - 1) if penalty else None  # before the step's forward, as it always ran
        loss = model(input_ids=windows, labels=windows).loss
        (loss if extra is None else loss + extra).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == steps:
            curve.append((step, *evaluate(model)))
    return curve
