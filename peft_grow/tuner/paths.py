"""Which modules a text input reaches: one small forward of the model with hooks, no weight touched.

Names alone cannot tell a language model's decoder layers from a vision, audio or image-processor tower's: all
are numbered stacks of MLPs. What tells them apart is the forward itself: on a text input (token ids only) the
towers that read images or audio do not run. Growth uses this twice: to find the language model's stacks when
its layout is detected rather than known, and to confirm, before an adapter is injected, that every module it
grows takes part in the model's own forward (peft_grow.tuner.checking).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .quantization import is_bnb_4bit

logger = logging.getLogger(__name__)

TOKENS = 4  # a few tokens: every layer runs, whatever their number


def text_input(model: nn.Module) -> torch.Tensor | None:
    """A (1, TOKENS) batch of ordinary token ids for `model` (no special token: an image placeholder would make the
    model expect pixels), on its embedding's device; None where the model has no token embedding."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(embedding, nn.Embedding) or embedding.weight.is_meta:
        return None
    special = _special_token_ids(getattr(model, "config", None))
    ordinary = [i for i in range(min(embedding.num_embeddings, 1000)) if i not in special][-TOKENS:]
    if len(ordinary) < TOKENS:
        return None
    return torch.tensor([ordinary], device=embedding.weight.device)


def _special_token_ids(config: Any, seen: int = 0) -> set[int]:
    """Every integer a config (and its sub-configs) keeps under a name with `token` in it: pad, bos, eos, image..."""
    found: set[int] = set()
    for key, value in vars(config).items() if config is not None and seen < 3 else ():
        if "token" in key and isinstance(value, int) and not isinstance(value, bool):
            found.add(value)
        elif "token" in key and isinstance(value, (list, tuple)):
            found |= {v for v in value if isinstance(v, int)}
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text, vision, ...)
            found |= _special_token_ids(value, seen + 1)
    return found


def run_text(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits (or first output) on `ids`, in eval mode without gradients; modes restored after."""
    inputs: dict[str, Any] = {"input_ids": ids}
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None:  # no key/value cache to fill (not every forward takes it)
        inputs["use_cache"] = False
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    with evaluating(model), torch.no_grad():
        output = model(**inputs)
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
    return logits


@dataclass
class TextRun:
    """One forward of a model on a text input: the ids, the logits, and which of the watched modules ran."""

    ids: torch.Tensor
    logits: torch.Tensor
    reached: set[str]


def run_watching(model: nn.Module, names: Iterable[str]) -> TextRun | None:
    """One forward of `model` on a text input, recording which of the modules `names` run; None where the model
    cannot be run that way (no token embedding, weights on the meta device or sharded away, a forward that needs
    more than token ids): the caller then cannot tell."""
    ids = text_input(model)
    if ids is None:
        return None
    reached: set[str] = set()
    try:
        with recording(model, names, reached.add):
            logits = run_text(model, ids)
    except Exception as error:  # noqa: BLE001  (any model's forward: not being able to run it is the answer)
        logger.debug("Could not run %s on a text input: %s", type(model).__name__, error)
        return None
    return TextRun(ids, logits, reached)


@contextmanager
def recording(model: nn.Module, names: Iterable[str], record: Callable[[str], None]) -> Iterator[None]:
    """`record(name)` each time one of the modules `names` is called."""
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda *_, n=n: record(n)) for n in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Dropout off; every submodule's mode restored after.

    bitsandbytes' 4-bit layers stay in train mode (they have no dropout): on CPUs with AVX512-BF16 their first
    forward in eval mode without gradients repacks the weights for an inference kernel for good, after which the
    layer passes no gradient to its input and rounds differently; a check must not do that to the user's model."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    for m in module.modules():
        if is_bnb_4bit(m):
            m.training = True
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
