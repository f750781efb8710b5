"""Reading inputs the same way everywhere: a model from the architecture its config records, a token stream cut
into windows, and a forward that reuses a key/value cache under the name this transformers version gives it.

This module needs only torch and transformers (both required by `import peft_grow`, which imports `peft_grow.io`
anyway), so the command line, `peft_grow.analysis` and `peft_grow.evaluation` all use it without depending on
one another.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, LlamaForCausalLM, PretrainedConfig
from transformers.modeling_outputs import ModelOutput

# transformers renamed forward's key/value cache argument, and the output's field, from past_key_values to cache (5.2x)
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def architecture_class(config: PretrainedConfig) -> type[nn.Module]:
    """The transformers class named first in `config.architectures` (the class that saved the checkpoint)."""
    return getattr(transformers, config.architectures[0])


def load_base_model(path_or_id: str | os.PathLike, dtype: str | torch.dtype = "auto") -> nn.Module:
    """A model (a local folder or a Hub id) loaded as the class its config records, in `dtype` ("auto": the
    checkpoint's own dtype), whatever task head that class carries."""
    model_class = architecture_class(AutoConfig.from_pretrained(path_or_id))
    return model_class.from_pretrained(path_or_id, dtype=dtype)


def token_windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A 1-D stream of token ids cut into non-overlapping [n, seq_len] windows; a shorter tail is dropped (so
    a stream shorter than `seq_len` gives no window)."""
    return ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)


def cached_forward(model: nn.Module, cache: Any = None, **inputs: Any) -> tuple[ModelOutput, Any]:
    """`model(**inputs, use_cache=True)` continuing from `cache` (None: from the start): (output, the new cache)."""
    if cache is not None:
        inputs[CACHE_ARGUMENT] = cache
    output = model(**inputs, use_cache=True)
    return output, getattr(output, CACHE_ARGUMENT)
