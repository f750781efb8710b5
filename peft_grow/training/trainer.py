"""The retention guard inside `transformers.Trainer` and TRL's `SFTTrainer`: a mixin that adds the guard's term to
the training loss, the way TRL's own distillation trainers (GKD, SDFT) extend `SFTTrainer`.

    trainer = GuardedSFTTrainer(model=..., args=SFTConfig(...), train_dataset=..., peft_config=GrowConfig(...),
                                retention_guard=RetentionGuard(windows))

`retention_kl` is logged beside `loss` (which includes the weighted term). The retention batch of each micro-batch
is a function of the global step, the micro-batch's place in the step and the process's rank: gradient
accumulation reads the rows one large batch reads, data-parallel processes read disjoint rows, and a run resumed
from a checkpoint reads what the unbroken run read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .guard import RetentionGuard


class RetentionGuardMixin:
    """Put before a `transformers.Trainer` subclass: `class MyTrainer(RetentionGuardMixin, Trainer)`; takes the
    keyword `retention_guard` (a `RetentionGuard`, or None for the plain trainer)."""

    def __init__(self, *args: Any, retention_guard: RetentionGuard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retention_guard = retention_guard
        self._retention_kl: list[torch.Tensor] = []
        self._retention_micro = (-1, 0)  # (global step, micro-batches of it seen so far)
        if retention_guard is not None:
            retention_guard.check(self.model)  # before any step: no adapter and no reference, wrong vocabulary
            if retention_guard.reference is not None:
                retention_guard.reference.to(self.args.device)

    def _retention_index(self) -> int:
        step = self.state.global_step
        micro = self._retention_micro[1] if self._retention_micro[0] == step else 0
        self._retention_micro = (step, micro + 1)
        index = step * self.args.gradient_accumulation_steps + micro
        return index * self.args.world_size + self.args.process_index

    def _trainer_divides_by_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether `training_step` will divide this loss by the accumulation steps (transformers' rule: not when
        the loss was already normalised by the number of items in the whole accumulated batch)."""
        if self.loss_is_scaled_for_ga is not None:
            return not self.loss_is_scaled_for_ga
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        return not (scaled or self.compute_loss_func is not None)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        guard = self.retention_guard
        if guard is None or not model.training:  # evaluation losses stay the task's own
            return result
        loss, outputs = result if return_outputs else (result, None)
        # the unwrapped model: its adapter can be disabled, and a second forward outside the DDP wrapper still
        # sends its gradients through the same parameters' hooks, reduced once in the one backward
        penalty, kl = guard.penalty(self.accelerator.unwrap_model(model), self._retention_index())
        if not self._trainer_divides_by_accumulation(num_items_in_batch):
            penalty = penalty / self.current_gradient_accumulation_steps
        self._retention_kl.append(kl)
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._retention_kl and "loss" in logs:  # a training log: the mean KL since the last one, over processes
            mean = torch.stack(self._retention_kl).mean().to(self.args.device)
            logs["retention_kl"] = round(self.accelerator.reduce(mean, reduction="mean").item(), 6)
            self._retention_kl.clear()
        super().log(logs, *args, **kwargs)


class GuardedTrainer(RetentionGuardMixin, Trainer):
    """`transformers.Trainer` with a retention guard (`retention_guard=RetentionGuard(...)`)."""
