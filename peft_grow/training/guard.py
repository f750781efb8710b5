"""The retention guard: the new task's loss plus `weight` times the KL divergence from the base model's next-token
distribution to the model's own, on batches of retention text.

An adapter carries the exact base model for free: `with model.disable_adapter():` computes the pretrained model's
predictions with no second copy in memory (for GROW, whose adapter disabled is the base function exactly, as for
LoRA). A full fine-tune has no such thing and must be given a frozen `reference` copy.

    guard = RetentionGuard(windows)                     # windows: [n, length] token ids (peft_grow.training.texts)
    for step, batch in enumerate(loader):
        loss = model(**batch).loss
        penalty, kl = guard.penalty(model, step)        # weight * KL, and the KL itself (detached) to log
        (loss + penalty).backward()

The term is the mean over every position of every window of KL(base || model), both at `temperature`, times
temperature squared (so that its gradient keeps its scale as the temperature changes, as in Hinton et al.'s
distillation). With TRL's `GKDTrainer.generalized_jsd_loss` it is `beta=0` over all positions, times T squared.

Which rows a step reads is a function of the step's index alone (a seeded permutation per pass over the windows),
so resuming at step s reads what an unbroken run reads, and a step split into micro-batches reads the same rows as
one large batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# Chosen from measurements (docs/results.md, "The retention guard"): weight 0.3 at temperature 1, with 2 windows
# of 128 tokens per step against a task batch of 8 (a quarter of it; scale it with yours). On SmolLM2-135M
# G-Freeze learns as fast with it as without and keeps ARC-Easy; weight 1 stopped Gemma-3-270M from learning the
# task in 200 steps; on stories260K 0.3 removes three quarters of the forgetting for almost none of the new task.
DEFAULT_WEIGHT = 0.3
DEFAULT_TEMPERATURE = 1.0
DEFAULT_BATCH_SIZE = 2


class RetentionGuardError(ValueError):
    """The guard cannot run as set up; the message says what was expected, what was found and what to do."""


def _check_number(name: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RetentionGuardError(f"RetentionGuard {name} must be a finite number; got {value!r}.")
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more (0 only measures the KL, without training on it)"
        raise RetentionGuardError(f"RetentionGuard {name} must be {bound}; got {value!r}.")
    return float(value)


def retention_kl(student_logits: torch.Tensor, base_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(base || student) at `temperature`, times temperature squared; in float32."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1).flatten(0, -2)
    base = F.log_softmax(base_logits.float() / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(student, base, reduction="batchmean", log_target=True) * temperature**2


def has_adapter(model: nn.Module) -> bool:
    """Whether `model` is a PEFT model, whose `disable_adapter()` gives the base model."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def vocabulary_size(model: nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.weight.shape[0] if head is not None and getattr(head, "weight", None) is not None else None


class RetentionGuard:
    """Keeps a model's next-token distribution on retention text close to its base model's while it learns.

    Args:
        windows (`torch.Tensor`): token ids, shape [n, length] (every window the same length, no padding), from
            `peft_grow.training.texts`: a dataset of the user's, text the base model wrote, or the task's prompts.
        weight (`float`, defaults to `DEFAULT_WEIGHT`): the KL term's weight; 0 measures the KL without training on
            it (the run is then bit-identical to one without a guard).
        temperature (`float`, defaults to `DEFAULT_TEMPERATURE`): the softmax temperature of both distributions.
        batch_size (`int`, defaults to `DEFAULT_BATCH_SIZE`): retention windows per step (per micro-batch and
            process when training is split).
        seed (`int`, defaults to 0): the order of the windows.
        reference (`nn.Module`, *optional*): a frozen copy of the base, for a model with no adapter (full
            fine-tuning). Without it the model must be a PEFT model and the base is its adapter disabled.
    """

    def __init__(
        self,
        windows: torch.Tensor,
        weight: float = DEFAULT_WEIGHT,
        temperature: float = DEFAULT_TEMPERATURE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        reference: nn.Module | None = None,
    ) -> None:
        if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
            found = f"{type(windows).__name__} {getattr(windows, 'dtype', '')} {tuple(getattr(windows, 'shape', ()))}"
            raise RetentionGuardError(
                f"RetentionGuard expects token ids as a 2-D int64 tensor [windows, length]; got {found}. Build them "
                "with peft_grow.training.dataset_windows, self_generated_windows or prompt_windows."
            )
        if windows.shape[0] == 0 or windows.shape[1] < 2:
            raise RetentionGuardError(
                f"RetentionGuard needs at least one window of 2 tokens or more; got shape {tuple(windows.shape)}. "
                "Give more retention text, or a shorter window length."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RetentionGuardError(f"RetentionGuard batch_size must be an integer of 1 or more; got {batch_size!r}.")
        self.windows = windows
        self.weight = _check_number("weight", weight, positive=False)
        self.temperature = _check_number("temperature", temperature, positive=True)
        self.batch_size = batch_size
        self.seed = seed
        self.reference = reference.eval().requires_grad_(False) if reference is not None else None
        self._last_order: tuple[int, torch.Tensor | None] = (-1, None)

    def __repr__(self) -> str:
        return (
            f"RetentionGuard(windows={tuple(self.windows.shape)}, weight={self.weight}, "
            f"temperature={self.temperature}, batch_size={self.batch_size}, seed={self.seed}, "
            f"reference={'yes' if self.reference is not None else 'none (the adapter disabled)'})"
        )

    def check(self, model: nn.Module) -> None:
        """Refuse, before any step, a model the guard cannot compare with its base."""
        if self.reference is None and not has_adapter(model):
            raise RetentionGuardError(
                f"RetentionGuard needs the base model's predictions: the model ({type(model).__name__}) has no PEFT "
                "adapter to disable, and no reference model was given. Wrap it with get_peft_model(...), or pass "
                "reference=<a frozen copy of the base> (full fine-tuning)."
            )
        limit = vocabulary_size(model)
        if self.reference is not None:
            theirs = vocabulary_size(self.reference)
            if None not in (limit, theirs) and limit != theirs:
                raise RetentionGuardError(
                    f"RetentionGuard's reference model predicts {theirs} tokens, the model {limit}: the two "
                    "distributions cannot be compared. Give a reference with the model's own tokenizer and "
                    "embeddings (a copy of the base before training)."
                )
        largest = int(self.windows.max())
        if limit is not None and largest >= limit:
            raise RetentionGuardError(
                f"RetentionGuard's windows hold token id {largest}, but the model's vocabulary has {limit} "
                "tokens: the retention text was tokenized for another model. Build it with this model's tokenizer."
            )

    def rows(self, index: int) -> torch.Tensor:
        """Row numbers of batch `index`: the stream of seeded permutations of all windows, cut into batches."""
        n = self.windows.shape[0]
        start = index * self.batch_size
        return torch.tensor(
            [int(self._order(position // n)[position % n]) for position in range(start, start + self.batch_size)]
        )

    def _order(self, epoch: int) -> torch.Tensor:
        """The permutation of pass `epoch` over the windows (the last one is kept: batches read passes in order)."""
        if self._last_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._last_order = (epoch, torch.randperm(self.windows.shape[0], generator=generator))
        return self._last_order[1]

    def batch(self, index: int) -> torch.Tensor:
        """The retention windows of batch `index`."""
        return self.windows[self.rows(index)]

    def base_logits(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The base model's logits: the reference's, or the model's own with its adapter disabled; no gradient."""
        with torch.no_grad():
            if self.reference is not None:
                return self.reference(input_ids=input_ids).logits
            with model.disable_adapter():
                return model(input_ids=input_ids).logits

    def kl(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """KL(base || model) on `input_ids`, with gradient through the model's own forward."""
        base = self.base_logits(model, input_ids)
        return retention_kl(model(input_ids=input_ids).logits, base, self.temperature)

    def penalty(self, model: nn.Module, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight * KL, the KL detached) on batch `index`, for the loss and the log.

        With weight 0 the KL is only measured: without gradient, and with the random state restored afterwards, so
        the training run is bit-identical to one without a guard."""
        device = next(model.parameters()).device
        input_ids = self.batch(index).to(device)
        if self.weight == 0:
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                kl = self.kl(model, input_ids)
            return torch.zeros((), device=device), kl
        kl = self.kl(model, input_ids)
        return self.weight * kl, kl.detach()
