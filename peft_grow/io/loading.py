"""Loading a base model as the class its config records, whatever task head that class carries."""

from __future__ import annotations

import os

import torch
import transformers
from torch import nn
from transformers import AutoConfig, PretrainedConfig


def architecture_class(config: PretrainedConfig) -> type[nn.Module]:
    """The transformers class named first in `config.architectures` (the class that saved the checkpoint)."""
    return getattr(transformers, config.architectures[0])


def load_base_model(path_or_id: str | os.PathLike, dtype: str | torch.dtype = "auto") -> nn.Module:
    """A model (a local folder or a Hub id) loaded as the class its config records, in `dtype` ("auto": the
    checkpoint's own dtype), whatever task head that class carries."""
    model_class = architecture_class(AutoConfig.from_pretrained(path_or_id))
    return model_class.from_pretrained(path_or_id, dtype=dtype)
