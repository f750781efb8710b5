"""The retention guard in the real-model runner: which text it reads, and how that text is kept clear of the
retention tasks.

Sources (`--guard-source`):

  self      text the base model writes itself (peft_grow.training.self_generated_windows), sampled once with
            seed 0 and cached beside the checkpoints
  prompts   the new task's own training prompts (peft_grow.training.prompt_windows)
  wikitext  the head of WikiText-2's validation split shipped in benchmarks/data (a dataset a user would give)

Every source goes through `drop_overlapping` against the questions and choices of every retention task measured
(ARC-Easy, COPA, ...): a window sharing a run of 8 words with any of them is dropped, and the count is recorded in
the run's settings, with a hash of the windows kept (so that reruns elsewhere can show they guarded on the same text).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from peft_grow import evaluation as ev
from peft_grow.training import (
    RetentionGuard,
    dataset_windows,
    drop_overlapping,
    prompt_windows,
    self_generated_windows,
)

SOURCES = ("self", "prompts", "wikitext")
WIKITEXT = Path(__file__).resolve().parent / "data" / "wikitext2_valid_head.txt"
OVERLAP_WORDS = 8


@dataclass(frozen=True)
class GuardSpec:
    weight: float
    source: str
    batch: int = 2  # a quarter of the task batch of 8
    length: int = 128
    temperature: float = 1.0
    count: int = 256  # windows of self-generated text

    @property
    def tag(self) -> str:
        """The suffix of a guarded run's method name: `g-freeze+kl-self-w1`."""
        return f"+kl-{self.source}-w{self.weight:g}" + (f"-t{self.temperature:g}" if self.temperature != 1 else "")

    def settings(self) -> dict:
        return asdict(self)


def reference_texts(tasks: list[str], data: Path) -> list[str]:
    """Every question and choice of the retention tasks, as the evaluation reads them."""
    texts = []
    for task in tasks:
        if task == "winogrande":
            texts += [r["sentence"] for r in ev.read_winogrande(data)]
            continue
        for record in ev.read_icl(task, data):
            texts += [record["query"], *map(str, record["choices"])]
    return texts


def windows(spec: GuardSpec, base: torch.nn.Module, tokenizer, prompts: list[str], cache: Path) -> torch.Tensor:
    if spec.source == "self":
        return self_generated_windows(base, tokenizer, spec.count, spec.length, seed=0, cache_dir=cache)
    if spec.source == "prompts":
        return prompt_windows(prompts, tokenizer, spec.length)
    return wikitext_windows(tokenizer, spec.length)


def wikitext_windows(tokenizer, length: int) -> torch.Tensor:
    """The `wikitext` source: the non-blank lines of the WikiText-2 head shipped in benchmarks/data."""
    lines = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    return dataset_windows(lines, tokenizer, length)


def build_guard(
    spec: GuardSpec, method: str, base: torch.nn.Module, tokenizer, prompts: list[str], tasks: list[str], data, cache
) -> tuple[RetentionGuard, dict]:
    """The guard for one run and what to record of it (windows kept, windows dropped as overlapping)."""
    found = windows(spec, base, tokenizer, prompts, cache)
    kept, dropped = drop_overlapping(found, tokenizer, reference_texts(tasks, data), n=OVERLAP_WORDS)
    reference = copy.deepcopy(base) if method == "full" else None  # full fine-tuning has no adapter to disable
    guard = RetentionGuard(kept, spec.weight, spec.temperature, spec.batch, seed=0, reference=reference)
    digest = hashlib.sha256(kept.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
    return guard, {
        "windows": len(kept),
        "dropped_overlapping": dropped,
        "overlap_words": OVERLAP_WORDS,
        "windows_sha256": digest,  # of the token ids kept (int64), first 16 hex digits
    }
