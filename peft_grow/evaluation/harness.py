"""Retention through lm-eval (the `eval` extra): the packaged tasks in tasks/, run on a model in memory, and
`python -m peft_grow.evaluation`, lm-eval's command line with GROW registered."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._extras import require
from .data import RETENTION_TASKS, TASK_FILES, data_file, resolve_data_dir
from .generation import eval_mode

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedTokenizerBase

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval task definitions: --include_path this folder
TASK_PREFIX = "grow_"  # our task names never clash with lm-eval's built-in ones
DEFAULT_RETENTION_TASKS = ("winogrande",)  # the paper's retention proxy


def task_name(name: str) -> str:
    """The packaged lm-eval task for `name` ("winogrande" or "grow_winogrande" -> "grow_winogrande")."""
    short = name.removeprefix(TASK_PREFIX)
    if short not in RETENTION_TASKS:
        raise ValueError(
            f"Unknown retention task {name!r}: expected one of {list(RETENTION_TASKS)} (optionally prefixed "
            f"{TASK_PREFIX!r}). For lm-eval's own tasks call lm_eval.simple_evaluate directly."
        )
    return TASK_PREFIX + short


def task_manager(data_dir: str | os.PathLike | None = None, include_defaults: bool = False) -> TaskManager:
    """An lm_eval TaskManager that knows the packaged tasks and reads their data from `data_dir`.

    The directory reaches the tasks' loaders as task metadata, the same path as `--metadata` on the lm_eval
    command line. include_defaults=False skips indexing lm-eval's thousands of built-in tasks.
    """
    tasks = require("lm_eval.tasks", "The lm-eval harness")
    root = resolve_data_dir(data_dir)
    return tasks.TaskManager(
        include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata={"data_dir": str(root)}
    )


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] = DEFAULT_RETENTION_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    **simple_evaluate_kwargs: Any,
) -> dict:
    """lm_eval.simple_evaluate's full results for the packaged tasks, on a model object already in memory.

    The model (plain or PeftModel, adapter as it is set) is wrapped in lm-eval's HFLM without copying; HFLM
    puts it in eval mode, which is undone afterwards. The tokenizer is copied, because HFLM sets a pad token
    on it. Data files are checked before lm-eval starts, so a missing one gives a clear error.
    """
    names = [task_name(t) for t in tasks]
    root = resolve_data_dir(data_dir)
    for name in names:
        for relative in TASK_FILES[name.removeprefix(TASK_PREFIX)]:
            data_file(root, relative)
    evaluator = require("lm_eval.evaluator", "The lm-eval harness")
    huggingface = require("lm_eval.models.huggingface", "The lm-eval harness")
    with eval_mode(model):
        lm = huggingface.HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        options = dict(log_samples=False, bootstrap_iters=0) | simple_evaluate_kwargs
        return evaluator.simple_evaluate(
            model=lm, tasks=names, task_manager=task_manager(root), limit=limit, num_fewshot=num_fewshot, **options
        )


def retention(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] = DEFAULT_RETENTION_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy (lm-eval's `acc`, zero-shot) per retention task, keyed by short name: {"winogrande": 0.51}.

    Compare a grown model with the adapter on and inside `model.disable_adapter()` (the base model).
    """
    results = evaluate_tasks(model, tokenizer, tasks, data_dir=data_dir, limit=limit, batch_size=batch_size)
    return {name.removeprefix(TASK_PREFIX): scores["acc,none"] for name, scores in results["results"].items()}


def main() -> None:
    """`python -m peft_grow.evaluation ...` is the lm_eval command line with GROW registered with PEFT.

    lm_eval loads `--model_args ...,peft=<adapter>` before it reads any task, so `import peft_grow` must come
    first or PEFT does not know the GROW adapter type.
    """
    import peft_grow  # noqa: F401  (registers GROW with PEFT)

    require("lm_eval", "python -m peft_grow.evaluation")
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
