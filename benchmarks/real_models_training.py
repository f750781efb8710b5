"""The real-model benchmark's training loop: one run of one method at one learning rate and seed.

AdamW without weight decay at a constant rate, gradients clipped at 1.0, the answer-only loss (plus the retention
guard's term with --guard-weight), the same data order for every method at a seed; evaluated every --eval-every
steps, where a full fine-tune also records the effective rank of each layer's up-projection update since the last
evaluation (the paper's Figure 5). A run saves its state at every evaluation and resumes from it
(real_models_checkpoints.py)."""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from peft_grow import evaluation as ev
from peft_grow.analysis import UpdateRankRecorder
from peft_grow.training import RetentionGuard

from . import guarded
from . import real_models_scores as scores  # through the module, so that tests can stand in for evaluate
from .methods import method as method_named
from .methods import trainable
from .real_models_checkpoints import keep_weights, resume, save_checkpoint, write_json
from .real_models_sdft import SDFT_SETTINGS, train_sdft
from .real_models_setup import Setup, evaluates_at, guard_cache, where
from .real_models_tasks import TASKS, answer_loss, batches

log = logging.getLogger("real_models")


@dataclass
class Run:
    model: str
    task: str
    method: str
    lr: float
    seed: int
    settings: dict
    trainable: int = 0
    total: int = 0
    where: dict = field(default_factory=dict)
    seconds_train: float = 0.0
    seconds_eval: float = 0.0
    curve: list = field(default_factory=list)  # [{"step", "train_loss", "task", "retention", "seconds"}]
    status: str = "running"


def run_name(method: str, args: argparse.Namespace) -> str:
    """The method's name, with the guard's settings when the run has one (`g-freeze+kl-self-w1`)."""
    return method + (args.guard.tag if getattr(args, "guard", None) else "")


def method_context(context: dict) -> dict:
    """What a method's build reads, from context.json (whose pilot layers are under "top")."""
    if not context:
        return {}
    return {"layers": context["top"], "lora_rank": context["lora_rank"], "rankings": context.get("rankings")}


def make_guard(setup: Setup, method: str) -> tuple[RetentionGuard | None, dict]:
    """The run's retention guard (None without --guard-weight) and the settings to record of it."""
    spec = setup.args.guard
    if not spec:
        return None, {}
    guard, found = guarded.build_guard(
        spec, method, setup.base, setup.tokenizer, setup.prompts, setup.retention, setup.data, guard_cache()
    )
    if guard.reference is not None:
        guard.reference.to(setup.device)
    return guard, {"guard": spec.settings() | found}


def new_run(
    setup: Setup, method: str, lr: float, seed: int, base_point: dict
) -> tuple[Run, torch.nn.Module, RetentionGuard | None]:
    """The run's record (settings, sizes, where it runs, step 0), its model built at the run's seed, and its
    retention guard (None without one)."""
    args = setup.args
    settings = {
        k: getattr(args, k) for k in ("steps", "batch", "eval_every", "max_len", "test_limit", "retention_limit")
    }
    guard, guard_settings = make_guard(setup, method)  # before the seed (sampling leaves the random state alone)
    settings |= {"retention": setup.retention} | guard_settings
    settings |= {"sdft": SDFT_SETTINGS} if method == "sdft" else {}
    run = Run(args.model, setup.task, run_name(method, args), lr, seed, settings)
    torch.manual_seed(seed)  # LoRA's and zero-init's random weights, the symmetry noise
    model = method_named(method).build(copy.deepcopy(setup.base), method_context(setup.context)).to(setup.device)
    if guard:
        guard.check(model)
    run.trainable, run.total = trainable(model), sum(p.numel() for p in model.parameters())
    run.where = where(setup.device, args.dtype)
    run.curve.append({"step": 0, "train_loss": None, **base_point})
    return run, model, guard


def train_run(setup: Setup, method: str, lr: float, seed: int, path: Path, base_point: dict) -> Run:
    """One run, resumed from its last checkpoint where there is one; evaluated every --eval-every steps and at the
    end, its progress written beside its result (`.partial.json`) at each evaluation."""
    args = setup.args
    run, model, guard = new_run(setup, method, lr, seed, base_point)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    checkpoints = args.checkpoints / args.model / setup.task / path.stem if args.checkpoints else None
    done = resume(checkpoints, model, optimizer, run) if checkpoints else 0
    ranks = update_recorder(method, model, done)
    autocast = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16-autocast")
    started = time.perf_counter()

    def evaluated(step: int, losses: list, kls: list) -> bool:
        """At an evaluation step: the point added to the curve; False if the run diverged, else its progress
        written, a checkpoint saved (before the last step) and the point logged."""
        nonlocal started
        run.seconds_train += time.perf_counter() - started
        point = record_point(run, model, setup, autocast, step, losses, kls, ranks)
        if not math.isfinite(run.curve[-1]["train_loss"]):
            run.status = "diverged"
            return False
        write_json(path.with_suffix(".partial.json"), asdict(run))  # progress of a long run, for a look
        if checkpoints and step < args.steps:
            save_checkpoint(checkpoints, model, optimizer, run, step)
        log_point(setup, method, lr, seed, step, run, point)
        started = time.perf_counter()
        return True

    if method == "sdft":  # TRL's trainer, with the runner's optimizer, evaluations and checkpoints
        train_sdft(setup, run, model, optimizer, done, evaluated)
        return finish(setup, run, model, path, checkpoints)
    data = batches(setup.train, args.batch, seed, ev.pad_token_id(setup.tokenizer), args.max_len)
    for _ in range(done):  # the batches the checkpoint has seen: the same data order as an unbroken run
        next(data)
    losses, kls = [], []
    for step in range(done + 1, args.steps + 1):
        train_step(model, next(data), setup.device, autocast, guard, step, params, optimizer, losses, kls)
        if evaluates_at(args, step):
            if not evaluated(step, losses, kls):
                break
            losses, kls = [], []
    return finish(setup, run, model, path, checkpoints)


def finish(setup: Setup, run: Run, model: torch.nn.Module, path: Path, checkpoints: Path | None) -> Run:
    """The run marked done (unless it diverged), its weights kept where asked, its checkpoints removed."""
    if run.status == "running":
        run.status = "done"
    if setup.args.keep_weights:
        keep_weights(model, setup.args.keep_weights / setup.args.model / setup.task / path.stem)
    if checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return run


def update_recorder(method: str, model: torch.nn.Module, step: int) -> UpdateRankRecorder | None:
    """For a full fine-tune, the recorder of its up-projection updates between evaluations (the paper's Figure 5),
    started from the weights at `step` (the base's, or those of the checkpoint resumed from); None otherwise."""
    if method != "full":
        return None
    ranks = UpdateRankRecorder()
    ranks.record(model, step)
    return ranks


def record_point(
    run: Run, model, setup: Setup, autocast, step: int, losses: list, kls: list, ranks: UpdateRankRecorder | None
) -> dict:
    """Evaluate the model and add the point, with the mean training loss (and KL) since the last one, and a full
    fine-tune's update ranks since the last one, to the curve."""
    with autocast:
        point = scores.evaluate(model, setup.tokenizer, setup)
    run.seconds_eval += point["seconds"]
    run.curve.append({"step": step, "train_loss": sum(losses) / len(losses), **point})
    run.curve[-1] |= {"retention_kl": sum(kls) / len(kls)} if kls else {}
    if ranks:
        ranks.record(model, step)
        run.curve[-1]["update_ranks"] = dict(zip(ranks.labels(), ranks.ranks[-1], strict=True))
    return point


def log_point(setup: Setup, method: str, lr: float, seed: int, step: int, run: Run, point: dict) -> None:
    log.info(
        "%s %s lr %.0e seed %d step %d: loss %.3f, %s %.3f, retention %s",
        setup.args.model,
        method,
        lr,
        seed,
        step,
        run.curve[-1]["train_loss"],
        TASKS[setup.task].metric,
        point["task"]["score"],
        {t: round(r["acc"], 3) for t, r in point["retention"].items()},
    )


def train_step(model, batch, device, autocast, guard, step, params, optimizer, losses, kls) -> None:
    """One optimizer step on the answer loss, plus the guard's term when there is one; appends the task loss and
    the KL to their lists."""
    model.train()
    with autocast:
        loss = answer_loss(model, batch, device)
        losses.append(loss.item())
        if guard:  # retention batch step - 1: a function of the step, so a resumed run reads what it would have
            penalty, kl = guard.penalty(model, step - 1)
            loss = loss + penalty
            kls.append(kl.item())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
