"""TRL's `SFTTrainer` with the retention guard (needs the `trl` extra; `peft_grow.training` imports it lazily)."""

from __future__ import annotations

from .._extras import require
from .trainer import RetentionGuardMixin

SFTTrainer = require("trl", "GuardedSFTTrainer").SFTTrainer


class GuardedSFTTrainer(RetentionGuardMixin, SFTTrainer):
    """`trl.SFTTrainer` with a retention guard: `GuardedSFTTrainer(..., retention_guard=RetentionGuard(...))`.
    It takes `peft_config=GrowConfig(...)` as `SFTTrainer` does; the guard then reads the base model through the
    adapter TRL wraps."""
