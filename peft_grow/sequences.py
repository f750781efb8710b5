"""Token sequences and the forward passes over them, the same way everywhere: a token stream cut into windows
(`token_windows`), their mean next-token loss (`mean_token_loss`), and a forward that continues a key/value cache
under the name this transformers version gives it (`cached_forward`). Needs only torch and transformers, so the
analysis, evaluation and training modules, the benchmarks and the examples all use it without depending on one
another.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import ModelOutput

# transformers renamed forward's key/value cache argument, and the output's field, from past_key_values to cache (5.2x)
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def token_windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A 1-D stream of token ids cut into non-overlapping [n, seq_len] windows; a shorter tail is dropped (so
    a stream shorter than `seq_len` gives no window)."""
    return ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)


@torch.no_grad()
def mean_token_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over the [n, seq_len] `windows` (all have the same length), in eval
    mode; the model is left in train mode."""
    model.eval()
    total = sum(model(input_ids=b, labels=b).loss.item() * len(b) for b in windows.split(batch_size))
    model.train()
    return total / len(windows)


def cached_forward(model: nn.Module, cache: Any = None, **inputs: Any) -> tuple[ModelOutput, Any]:
    """`model(**inputs, use_cache=True)` continuing from `cache` (None: from the start): (output, the new cache)."""
    if cache is not None:
        inputs[CACHE_ARGUMENT] = cache
    output = model(**inputs, use_cache=True)
    return output, getattr(output, CACHE_ARGUMENT)
