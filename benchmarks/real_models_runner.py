"""The real-model benchmark's resumable runner: the `baseline` and `run` commands.

Each (model, task, method, rate, seed) run writes its own JSON under <results>/<model>/<task>/; a rerun skips
finished runs, and a lock file per run lets several workers (processes, machines sharing the folder) take jobs side
by side. The base model's scores (step 0 of every run) and the pilot's context are measured once per task and kept
beside the runs (base.json, context.json)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from peft_grow import evaluation as ev
from peft_grow.analysis.selection import gradient_ranking, pilot_ranking, top_layers

from . import real_models_scores as scores  # through the module, so that tests can stand in for evaluate
from .methods import layer_count, matched_lora_rank
from .real_models_checkpoints import write_json
from .real_models_setup import Setup, load, pick_device, where
from .real_models_tasks import batches, encode, full_label_batch, read_examples, spread
from .real_models_training import run_name, train_run


def run_path(folder: Path, method: str, lr: float, seed: int) -> Path:
    return folder / f"{method}_lr{lr:.0e}_s{seed}.json"


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """A lock file beside the result, so that workers side by side never train the same run; a lock whose
    process is gone on this machine is taken over."""
    lock = path.with_suffix(".lock")
    me = f"{socket.gethostname()} {os.getpid()}"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        host, _, pid = lock.read_text().partition(" ")
        if host != socket.gethostname() or _alive(int(pid or 0)):
            yield False
            return
        lock.write_text(me)
    else:
        os.write(fd, me.encode())
        os.close(fd)
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def base_point(setup: Setup, folder: Path) -> dict:
    """Scores of the base model (step 0 of every run), measured once per model, task and evaluation settings."""
    path = folder / "base.json"
    key = {
        "test_limit": setup.args.test_limit,
        "retention_limit": setup.args.retention_limit,
        "retention": setup.retention,
        "dtype": setup.args.dtype,
    }
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["key"] != key:
            raise SystemExit(
                f"error: {folder} holds runs evaluated with {saved['key']}, but this call asks for {key}; runs are "
                "only comparable with the same evaluation. Use the same settings or another --results folder."
            )
        return saved["point"]
    base = setup.base.to(setup.device)
    autocast = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.args.dtype == "bf16-autocast")
    with autocast:
        point = scores.evaluate(base, setup.tokenizer, setup)
    write_json(path, {"key": key, "point": point, "where": where(setup.device, setup.args.dtype)})
    return point


def context(setup: Setup, folder: Path, rankings: bool = False) -> dict:
    """The pilot's top third of layers (the paper's heuristic) and the matched LoRA rank, computed once per task;
    with `rankings`, also every layer in the order of each ranking (added to an earlier context.json, whose pilot
    scores give the pilot's order)."""
    path = folder / "context.json"
    found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if found and (found.get("rankings") or not rankings):
        return found
    if not found:
        steps = setup.args.pilot_steps
        model = copy.deepcopy(setup.base).to(setup.device)
        pilot = first_batches(setup, steps)
        scores = pilot_ranking(model, pilot, steps=steps, lr=1e-4)
        layers = setup.base.config.num_hidden_layers
        found = {
            "top": sorted(top_layers(scores, max(1, layers // 3))),
            "pilot": {"steps": steps, "lr": 1e-4, "scores": {str(i): s for (_, i), s in scores.scores.items()}},
            "lora_rank": matched_lora_rank(setup.base),
        }
    if rankings:
        found["rankings"] = layer_rankings(setup, found["pilot"]["scores"])
        found["proxy_batches"] = setup.args.proxy_batches
    write_json(path, found)
    return found


def first_batches(setup: Setup, n: int) -> Iterator[dict]:
    """The first n training batches of seed 0's order, every token labelled (what the layer rankings train on)."""
    data = batches(setup.train, setup.args.batch, 0, ev.pad_token_id(setup.tokenizer), setup.args.max_len)
    return ({k: v.to(setup.device) for k, v in full_label_batch(next(data)).items()} for _ in range(n))


def layer_rankings(setup: Setup, pilot_scores: dict[str, float]) -> dict[str, list[int]]:
    """Every layer, best first: by the pilot's scores, by the gradient proxy (peft_grow's `gradient_ranking`) on
    the first --proxy-batches batches, and in a random order fixed by seed 0."""
    proxy = gradient_ranking(copy.deepcopy(setup.base).to(setup.device), first_batches(setup, setup.args.proxy_batches))
    layers = len(pilot_scores)
    return {
        "pilot": sorted(range(layers), key=lambda i: (-pilot_scores[str(i)], i)),
        "proxy": [i for _, i in proxy.ranked()],
        "random": torch.randperm(layers, generator=torch.Generator().manual_seed(0)).tolist(),
    }


def baseline_tasks(model: str, results: Path) -> list[str]:
    """The retention tasks on which the base model is clearly above chance and the majority answer (baseline.json's
    `above_chance`)."""
    path = results / model / "baseline.json"
    if not path.is_file():
        raise SystemExit(
            f"error: {path} is missing: measure the base model first (python -m benchmarks.real_models baseline "
            f"--model {model}) or name the tasks with --retention."
        )
    return json.loads(path.read_text(encoding="utf-8"))["above_chance"]


def cmd_baseline(args) -> None:
    """The base model on retention tasks: accuracy, standard error and chance rate, merged into baseline.json (so
    that tasks can be measured in several calls, e.g. BoolQ's long passages with a smaller --limit)."""
    tokenizer, model = load(args)
    device = pick_device(args.device)
    model.to(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16-autocast"):
        measured = scores.retention_scores(model, tokenizer, args.tasks, args.data, args.limit, args.eval_batch)
    path = args.results / args.model / "baseline.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"scores": {}, "seconds": {}}
    for task, score in measured.items():
        score |= {
            "stderr": math.sqrt(score["acc"] * (1 - score["acc"]) / score["n"]),
            "where": where(device, args.dtype),
        }
        saved["scores"][task] = score
        saved["seconds"][task] = (time.perf_counter() - start) / len(measured)
    above = []
    for task, score in saved["scores"].items():
        bar = max(score["chance"], score.get("majority", 0.0))
        clear = score["acc"] - bar > 3 * score["stderr"]
        above += [task] if clear else []
        verdict = "  clearly above chance (> 3 standard errors)" if clear else ""
        print(
            f"{task:<15} {score['metric']:<8} {score['acc']:.3f} ± {score['stderr']:.3f} (n={score['n']}, chance "
            f"{score['chance']:.3f}, majority {score.get('majority', float('nan')):.3f}){verdict}",
            flush=True,
        )
    write_json(path, saved | {"model": args.model, "above_chance": above})
    print(f"wrote {path}")


def prepare(args) -> tuple[Setup, Path, dict]:
    """The call's setup, its results folder, and the base model's scores (with the pilot's context where a method
    needs it)."""
    tokenizer, base = load(args)
    device = pick_device(args.device)
    retention = args.retention if args.retention is not None else baseline_tasks(args.model, args.results)
    train = encode(tokenizer, read_examples(args.data, args.task, "train"))
    test = spread(read_examples(args.data, args.task, "test"), args.test_limit)
    setup = Setup(args, args.task, args.data, tokenizer, base, train, test, retention, {}, device)
    setup.prompts = [e.prompt for e in read_examples(args.data, args.task, "train")]
    folder = args.results / args.model / args.task
    folder.mkdir(parents=True, exist_ok=True)
    methods = {m for m, _ in args.runs}
    counts = any(layer_count(m) for m in methods)
    needs_context = counts or {"g-freeze-top", "lora-matched"} & methods
    setup.context = context(setup, folder, rankings=counts) if needs_context else {}
    return setup, folder, base_point(setup, folder)


def cmd_run(args) -> None:
    setup, folder, point = prepare(args)
    if args.prepare_only:
        return
    jobs = [(m, lr, s) for s in args.seeds for m, lr in args.runs]
    for method, lr, seed in jobs:
        run_job(setup, folder, point, method, lr, seed)


def run_job(setup: Setup, folder: Path, point: dict, method: str, lr: float, seed: int) -> None:
    """Train and write one run, unless it is finished or another worker holds it."""
    args = setup.args
    path = run_path(folder, run_name(method, args), lr, seed)
    if path.is_file():
        return
    with claimed(path) as mine:
        if not mine or path.is_file():
            return
        run = train_run(setup, method, lr, seed, path, point)
        write_json(path, asdict(run))
        path.with_suffix(".partial.json").unlink(missing_ok=True)
        final = run.curve[-1]
        print(
            f"{args.model} {args.task} {method} lr {lr:.0e} seed {seed}: {run.status}, score "
            f"{final['task']['score']:.3f}, retention {[round(r['acc'], 3) for r in final['retention'].values()]}"
            f" ({run.seconds_train:.0f} s training, {run.seconds_eval:.0f} s evaluating)",
            flush=True,
        )
