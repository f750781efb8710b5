"""Training-time helpers that are not the tuner: the retention guard (KL to the base model on retention text) and
its text sources. Nothing here changes what an adapter saves."""

from __future__ import annotations

from typing import Any

from .guard import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT,
    RetentionGuard,
    RetentionGuardError,
    retention_kl,
)
from .texts import dataset_windows, drop_overlapping, prompt_windows, self_generated_windows
from .trainer import GuardedTrainer, RetentionGuardMixin

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WEIGHT",
    "GuardedSFTTrainer",
    "GuardedTrainer",
    "RetentionGuard",
    "RetentionGuardError",
    "RetentionGuardMixin",
    "dataset_windows",
    "drop_overlapping",
    "prompt_windows",
    "retention_kl",
    "self_generated_windows",
]


def __getattr__(name: str) -> Any:
    if name == "GuardedSFTTrainer":  # TRL is an extra: imported on first use
        from .sft import GuardedSFTTrainer

        return GuardedSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
