"""The paper's claim on real pretrained models: new-task score and retention of what the model knew, per method.

Models (fetched once with benchmarks/fetch_models.py, outside the repository): SmolLM2-135M-Instruct (Apache-2.0)
and Gemma-3-270M base (Gemma Terms of Use), both dequantized from 4-5-bit GGUF files, which makes them close to,
not equal to, the published weights.

New tasks, as prompt/answer SFT with the loss on the answer only (peft_grow.evaluation builds the prompts):

  qasc    QASC closed-book, trained on train.json (8,134), scored on dev.json: exact match of the option letter
  mathqa  MathQA, trained on dev.json (4,475; the training split is not available offline), scored on test.json:
          exact match of the option letter (the paper uses G-Train here)
  mtnt    MTNT English to French, trained on valid (852), scored on test: SacreBLEU (for multilingual Gemma)

Retention: zero-shot accuracy on the packaged lm-eval tasks (peft_grow/evaluation/tasks: WinoGrande, ARC-Easy,
BoolQ, COPA, OpenBookQA, CommonsenseQA), read from the original files in the task data folder (--data, else
$PEFT_GROW_DATA; no default: the commands below pass ../shared/data/tasks). `baseline`
measures the base model on every task with its standard error; runs track the tasks where the base model is clearly
above chance (`--retention`, by default read from the model's baseline.json), on the first `--retention-limit`
questions.

Methods (METHODS): full fine-tuning; LoRA r=16 and LoRA at the rank matched to G-Freeze on every layer; G-Freeze
(k=2) on every layer and on the top third of layers by the paper's pilot ranking; G-Train with and without
symmetry_noise; the zero-init growth baseline. Every run: AdamW without weight decay (Adam), constant rate, clipped
gradients, the same data order for every method at a seed, evaluated every `--eval-every` steps. Each
(model, task, method, rate, seed) run writes its own JSON to docs/results/real_models/<model>/<task>/ with its
curve, wall times and where it ran; a rerun skips finished runs, and a lock file per run lets several workers
(processes, machines sharing the folder) take jobs side by side. A run saves its state at every evaluation
(`--checkpoints`, outside the repository) and a stopped run resumes from there, exactly as if unbroken.

    python -m benchmarks.fetch_models smollm2-135m
    python -m benchmarks.real_models baseline --model smollm2-135m --data ../shared/data/tasks
    python -m benchmarks.real_models run --model smollm2-135m --task qasc --methods full g-freeze --lrs 1e-3 1e-4 \
        --data ../shared/data/tasks
    python -m benchmarks.real_models run ... --tiny         # a seconds-long smoke run (tests use it)
    python -m benchmarks.real_models_report                 # tables and figures from the JSON files

Step 0 of every run is the base model (growth and LoRA start at the base function, full fine-tuning at the base),
so its scores are measured once per model and task (`<task>/base.json`) and shared by every run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars, one per evaluation

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from peft_grow import evaluation as ev  # noqa: E402
from peft_grow.analysis.selection import pilot_ranking, top_layers  # noqa: E402
from peft_grow.training import RetentionGuard  # noqa: E402

from . import guarded  # noqa: E402
from .methods import METHODS, matched_lora_rank, trainable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "real_models"
CACHE_ENV = "PEFT_GROW_CACHE"  # as in benchmarks/fetch_models.py
MODELS = ("smollm2-135m", "gemma3-270m")
log = logging.getLogger("real_models")


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft-grow" / "models")


def guard_cache() -> Path:
    """Where self-generated retention text is cached: beside the model cache."""
    return default_cache().parent / "retention-text"


def default_data() -> Path | None:
    """The task data folder when --data is not given: $PEFT_GROW_DATA, else none (never a guess)."""
    return Path(os.environ[ev.DATA_ENV]) if os.environ.get(ev.DATA_ENV) else None


# ---------------------------------------------------------------------------------------------------------------
# New tasks


@dataclass(frozen=True)
class Task:
    train: str  # file relative to the data folder
    test: str
    reader: str  # the peft_grow.evaluation function that reads it
    metric: str  # "exact_match" or "bleu"
    max_new_tokens: int


TASKS = {
    "qasc": Task("qasc/train.json", "qasc/dev.json", "qasc_examples", "exact_match", 4),
    "qasc-facts": Task("qasc/train.json", "qasc/dev.json", "qasc_examples_with_facts", "exact_match", 4),
    "mathqa": Task("mathqa/dev.json", "mathqa/test.json", "mathqa_examples", "exact_match", 4),
    "mtnt": Task("mtnt/valid.en-fr.tsv", "mtnt/test.en-fr.tsv", "mtnt_examples", "bleu", 96),
}


def read_examples(data: Path, task: str, split: str) -> list[ev.Example]:
    spec = TASKS[task]
    path = data / getattr(spec, split)
    if spec.reader == "qasc_examples_with_facts":
        return ev.qasc_examples(path, with_facts=True)
    return getattr(ev, spec.reader)(path)


def spread(items: list, n: int) -> list:
    """`n` items evenly spaced over the list (all of them if it holds fewer): a fixed sample of the whole file."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


# ---------------------------------------------------------------------------------------------------------------
# Batches: left-padded prompt + answer + EOS, the loss on the answer and EOS only


@dataclass
class Encoded:
    prompt: list[int]
    answer: list[int]  # the answer's tokens and EOS


def encode(tokenizer, examples: list[ev.Example]) -> list[Encoded]:
    """Prompt and answer tokenized apart, as generation sees them: the prompt with the tokenizer's own special
    tokens, then " answer" and EOS."""
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    answers = tokenizer([" " + e.answer for e in examples], add_special_tokens=False)["input_ids"]
    return [Encoded(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]


def collate(items: list[Encoded], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """A right-padded batch, and the positions whose logits predict an answer token in some row (`keep`).

    Right padding leaves no row of queries fully masked (on CUDA, attention over a fully masked row gives NaN, and
    0 * NaN poisons every gradient). The loss needs logits at `keep` only: a few positions per row instead of all.
    Prompts longer than `max_len` minus their answer lose their beginning (the question stays next to the answer).
    """
    rows = [(it.prompt + it.answer)[-max_len:] for it in items]
    starts = [len(r) - min(len(it.answer), len(r) - 1) for it, r in zip(items, rows, strict=True)]  # first answer
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -100)  # targets[i, t]: the token that position t must predict
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets[i, start - 1 : len(row) - 1] = torch.tensor(row[start:])
    keep = (targets != -100).any(0).nonzero().flatten()
    return {"input_ids": input_ids, "attention_mask": mask, "labels": targets[:, keep], "keep": keep}


def answer_loss(model: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, from logits at the `keep` positions only (a 262k-word vocabulary
    makes full logits the most expensive part of a step)."""
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    logits = model(**inputs, logits_to_keep=batch["keep"].to(device)).logits.float()
    labels = batch["labels"].to(device)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def full_label_batch(batch: dict) -> dict:
    """The same batch with labels over whole rows, for code that calls model(**batch).loss (the pilot ranking);
    models shift labels themselves, so each answer token stands at its own position."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, batch["keep"] + 1] = batch["labels"]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def batches(data: list[Encoded], size: int, seed: int, pad_id: int, max_len: int) -> Iterator[dict]:
    """Shuffled epochs over the training examples; the same order for every method at a given seed."""
    order = random.Random(seed)
    while True:
        indices = list(range(len(data)))
        order.shuffle(indices)
        for start in range(0, len(indices) - size + 1, size):
            yield collate([data[i] for i in indices[start : start + size]], pad_id, max_len)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def task_score(model, tokenizer, examples: list[ev.Example], task: str, batch_size: int) -> dict:
    """The new-task score (exact match in [0, 1], or SacreBLEU 0-100), with per-question correctness for EM."""
    spec = TASKS[task]
    predictions = ev.generate_answers(model, tokenizer, [e.prompt for e in examples], spec.max_new_tokens, batch_size)
    if spec.metric == "bleu":
        lines = [p.strip().split("\n", 1)[0].strip() for p in predictions]
        return {"score": ev.bleu(lines, [e.answer for e in examples]), "n": len(examples)}
    correct = [
        int(ev.normalize_answer(p) == ev.normalize_answer(e.answer)) for p, e in zip(predictions, examples, strict=True)
    ]
    return {
        "score": sum(correct) / len(correct),
        "n": len(correct),
        "correct": "".join(map(str, correct)),
        "sample": predictions[:3],
    }


# lm-eval metric per retention task: length-normalised accuracy where lm-eval's own task cards report it
RETENTION_METRIC = {"arc_easy": "acc_norm", "openbook_qa": "acc_norm"}


def retention_scores(model, tokenizer, tasks: list[str], data: Path, limit: int | None, batch_size: int) -> dict:
    """lm-eval accuracy per retention task, with the per-question outcomes (for paired standard errors)."""
    if not tasks:
        return {}
    results = ev.evaluate_tasks(
        model, tokenizer, tasks, data_dir=data, limit=limit, batch_size=batch_size, log_samples=True
    )
    scores = {}
    for task in tasks:
        name = ev.task_name(task)
        metric = RETENTION_METRIC.get(task, "acc")
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        correct = [int(s[metric]) for s in samples]
        chance = [1 / len(s["arguments"]) for s in samples]
        targets = [s["target"] for s in samples]  # the gold choice's index (WinoGrande's is its continuation)
        scores[task] = {
            "metric": metric,
            "acc": sum(correct) / len(correct),
            "n": len(correct),
            "chance": sum(chance) / len(chance),
            # always answering the commonest choice; WinoGrande's two options are balanced by design
            "majority": max(map(targets.count, set(targets))) / len(targets) if task != "winogrande" else 0.5,
            "correct": "".join(map(str, correct)),
        }
    return scores


def evaluate(model, tokenizer, setup: Setup) -> dict:
    start = time.perf_counter()
    point = {"task": task_score(model, tokenizer, setup.test, setup.task, setup.args.eval_batch)}
    point["retention"] = retention_scores(
        model, tokenizer, setup.retention, setup.data, setup.args.retention_limit, setup.args.eval_batch
    )
    point["seconds"] = time.perf_counter() - start
    return point


# ---------------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class Setup:
    args: argparse.Namespace
    task: str
    data: Path
    tokenizer: object
    base: torch.nn.Module
    train: list[Encoded]
    test: list[ev.Example]
    retention: list[str]
    context: dict  # pilot's top layers, matched LoRA rank
    device: torch.device
    prompts: list[str] = field(default_factory=list)  # the training prompts (the guard's `prompts` source)


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


def run_path(folder: Path, method: str, lr: float, seed: int) -> Path:
    return folder / f"{method}_lr{lr:.0e}_s{seed}.json"


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temporary file in the same folder, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
        out.write("\n")
    os.replace(temporary, path)


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


def where(device: torch.device, dtype: str) -> dict:
    info = {"device": str(device), "dtype": dtype, "torch": torch.__version__, "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def train_run(setup: Setup, method: str, lr: float, seed: int, path: Path, base_point: dict) -> Run:
    args = setup.args
    settings = {
        k: getattr(args, k) for k in ("steps", "batch", "eval_every", "max_len", "test_limit", "retention_limit")
    }
    guard, guard_settings = make_guard(setup, method)  # before the seed (sampling leaves the random state alone)
    settings |= {"retention": setup.retention} | guard_settings
    run = Run(args.model, setup.task, run_name(method, args), lr, seed, settings)
    torch.manual_seed(seed)  # LoRA's and zero-init's random weights, the symmetry noise
    model = METHODS[method].build(copy.deepcopy(setup.base), method_context(setup.context)).to(setup.device)
    if guard:
        guard.check(model)
    params = [p for p in model.parameters() if p.requires_grad]
    run.trainable, run.total = trainable(model), sum(p.numel() for p in model.parameters())
    run.where = where(setup.device, args.dtype)
    run.curve.append({"step": 0, "train_loss": None, **base_point})
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pad = ev.pad_token_id(setup.tokenizer)
    data = batches(setup.train, args.batch, seed, pad, args.max_len)
    checkpoints = args.checkpoints / args.model / setup.task / path.stem if args.checkpoints else None
    done = resume(checkpoints, model, optimizer, run) if checkpoints else 0
    for _ in range(done):  # the batches the checkpoint has seen: the same data order as an unbroken run
        next(data)
    autocast = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16-autocast")
    losses, kls, started = [], [], time.perf_counter()
    for step in range(done + 1, args.steps + 1):
        train_step(model, next(data), setup.device, autocast, guard, step, params, optimizer, losses, kls)
        if step % args.eval_every == 0 or step == args.steps:
            run.seconds_train += time.perf_counter() - started
            with autocast:
                point = evaluate(model, setup.tokenizer, setup)
            run.seconds_eval += point["seconds"]
            run.curve.append({"step": step, "train_loss": sum(losses) / len(losses), **point})
            run.curve[-1] |= {"retention_kl": sum(kls) / len(kls)} if kls else {}
            losses, kls = [], []
            if not math.isfinite(run.curve[-1]["train_loss"]):
                run.status = "diverged"
                break
            write_json(path.with_suffix(".partial.json"), asdict(run))  # progress of a long run, for a look
            if checkpoints and step < args.steps:
                save_checkpoint(checkpoints, model, optimizer, run, step)
            log.info(
                "%s %s lr %.0e seed %d step %d: loss %.3f, %s %.3f, retention %s",
                args.model,
                method,
                lr,
                seed,
                step,
                run.curve[-1]["train_loss"],
                TASKS[setup.task].metric,
                point["task"]["score"],
                {t: round(r["acc"], 3) for t, r in point["retention"].items()},
            )
            started = time.perf_counter()
    if run.status == "running":
        run.status = "done"
    if args.keep_weights:
        keep_weights(model, args.keep_weights / args.model / setup.task / path.stem)
    if checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return run


def method_context(context: dict) -> dict:
    """What a method's build reads, from context.json (whose pilot layers are under "top")."""
    return {"layers": context["top"], "lora_rank": context["lora_rank"]} if context else {}


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


# A long run saves its state at every evaluation (trainable weights, AdamW's moments, the curve so far) in
# <checkpoints>/<model>/<task>/<run>/step-N, outside the repository; a run that was stopped resumes from its last
# complete one and continues exactly as an unbroken run would (same weights, moments and data order).


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: Run, step: int):
    """Written to a temporary folder and renamed; state.json last, so a folder with it is complete. Older steps
    are removed once the new one is in place."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f"step-{step}.", dir=folder))
    save_file(
        {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
        temporary / "weights.safetensors",
    )
    state = optimizer.state_dict()
    moments = {f"{i}.{key}": value for i, slots in state["state"].items() for key, value in slots.items()}
    save_file(moments, temporary / "optimizer.safetensors")
    write_json(temporary / "state.json", {"step": step, "run": asdict(run), "param_groups": state["param_groups"]})
    temporary.replace(folder / f"step-{step}")
    for older in folder.iterdir():
        if older.name != f"step-{step}":
            shutil.rmtree(older, ignore_errors=True)


def resume(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: Run) -> int:
    """Load the last complete checkpoint of this run into model, optimizer and run; the step it reached (0: none).
    A checkpoint of other settings (steps, batch, evaluation) is not this run's and is ignored."""
    complete = [f for f in folder.glob("step-*") if f.name[5:].isdigit() and (f / "state.json").is_file()]
    if not complete:
        return 0
    last = max(complete, key=lambda f: int(f.name[5:]))
    state = json.loads((last / "state.json").read_text(encoding="utf-8"))
    if state["run"]["settings"] != json.loads(json.dumps(run.settings)):
        log.warning("ignoring %s: saved with settings %s, not %s", last, state["run"]["settings"], run.settings)
        return 0
    weights = load_file(last / "weights.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise SystemExit(f"error: {last} holds other trainable weights than this run's model; remove it to restart.")
    model.load_state_dict(weights, strict=False)
    moments: dict[int, dict] = {}
    for key, value in load_file(last / "optimizer.safetensors").items():
        index, _, slot = key.partition(".")
        moments.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
    for name, value in state["run"].items():
        setattr(run, name, value)
    log.info("resumed %s at step %d", folder.name, state["step"])
    return state["step"]


def keep_weights(model: torch.nn.Module, folder: Path) -> None:
    """The trained weights, for later analysis (function vectors): an adapter folder for PEFT methods, a full
    checkpoint for full fine-tuning; written to a temporary folder and renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    model.save_pretrained(temporary)
    shutil.rmtree(folder, ignore_errors=True)
    temporary.replace(folder)


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
        point = evaluate(base, setup.tokenizer, setup)
    write_json(path, {"key": key, "point": point, "where": where(setup.device, setup.args.dtype)})
    return point


def context(setup: Setup, folder: Path) -> dict:
    """The pilot's top third of layers (the paper's heuristic) and the matched LoRA rank, computed once per task."""
    path = folder / "context.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    layers = setup.base.config.num_hidden_layers
    model = copy.deepcopy(setup.base).to(setup.device)
    pad = ev.pad_token_id(setup.tokenizer)
    data = batches(setup.train, setup.args.batch, 0, pad, setup.args.max_len)
    steps = setup.args.pilot_steps
    pilot = ({k: v.to(setup.device) for k, v in full_label_batch(next(data)).items()} for _ in range(steps))
    scores = pilot_ranking(model, pilot, steps=steps, lr=1e-4)
    found = {
        "top": sorted(top_layers(scores, max(1, layers // 3))),
        "pilot": {"steps": steps, "lr": 1e-4, "scores": {str(i): s for (_, i), s in scores.scores.items()}},
        "lora_rank": matched_lora_rank(setup.base),
    }
    write_json(path, found)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Command line


def load(args) -> tuple[object, torch.nn.Module]:
    folder = args.model_dir or default_cache() / args.model / "hf"
    if not (Path(folder) / "config.json").is_file():
        raise SystemExit(
            f"error: no checkpoint of {args.model} in {folder}. Fetch it first: "
            f"python -m benchmarks.fetch_models {args.model} (or pass --model-dir)."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return tokenizer, model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        measured = retention_scores(model, tokenizer, args.tasks, args.data, args.limit, args.eval_batch)
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


def cmd_run(args) -> None:
    tokenizer, base = load(args)
    device = pick_device(args.device)
    retention = args.retention if args.retention is not None else baseline_tasks(args.model, args.results)
    train = encode(tokenizer, read_examples(args.data, args.task, "train"))
    test = spread(read_examples(args.data, args.task, "test"), args.test_limit)
    setup = Setup(args, args.task, args.data, tokenizer, base, train, test, retention, {}, device)
    setup.prompts = [e.prompt for e in read_examples(args.data, args.task, "train")]
    folder = args.results / args.model / args.task
    folder.mkdir(parents=True, exist_ok=True)
    needs_context = {"g-freeze-top", "lora-matched"} & {m for m, _ in args.runs}
    setup.context = context(setup, folder) if needs_context else {}
    point = base_point(setup, folder)
    if args.prepare_only:
        return
    jobs = [(m, lr, s) for s in args.seeds for m, lr in args.runs]
    for method, lr, seed in jobs:
        path = run_path(folder, run_name(method, args), lr, seed)
        if path.is_file():
            continue
        with claimed(path) as mine:
            if not mine or path.is_file():
                continue
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


def parse_run(text: str, parser: argparse.ArgumentParser) -> tuple[str, float]:
    method, _, rate = text.partition("@")
    try:
        lr = float(rate)
    except ValueError:
        lr = None
    if method not in METHODS or lr is None:
        parser.error(f"--runs takes METHOD@LR with METHOD one of {', '.join(METHODS)}, e.g. full@1e-4; got {text!r}")
    return method, lr


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help=f"{', '.join(MODELS)}, or any name with --model-dir")
    common.add_argument(
        "--model-dir", type=Path, help="the checkpoint (default: <cache>/<model>/hf, the fetch script's cache)"
    )
    common.add_argument(
        "--data",
        type=Path,
        default=default_data(),
        help=f"task data folder (default ${ev.DATA_ENV}; one of the two is needed)",
    )
    common.add_argument("--results", type=Path, default=RESULTS, help="results folder (default docs/results/...)")
    common.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    common.add_argument(
        "--dtype",
        choices=["fp32", "bf16-autocast"],
        default=None,
        help="fp32 (default on CPU) or bf16 autocast over fp32 weights (default on CUDA)",
    )
    common.add_argument("--eval-batch", type=int, default=32, help="batch size of evaluation (default 32)")
    common.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")

    baseline = commands.add_parser("baseline", parents=[common], help="the base model on every retention task")
    baseline.add_argument("--tasks", nargs="+", default=list(ev.RETENTION_TASKS), choices=ev.RETENTION_TASKS)
    baseline.add_argument("--limit", type=int, help="questions per task (default: all)")

    run = commands.add_parser("run", parents=[common], help="train and evaluate runs; finished ones are skipped")
    run.add_argument("--task", choices=TASKS, required=True)
    run.add_argument("--methods", nargs="+", choices=METHODS, help="methods, each at every rate of --lrs")
    run.add_argument("--lrs", nargs="+", type=float, help="learning rates")
    run.add_argument(
        "--runs", nargs="+", metavar="METHOD@LR", help="or: runs in this order, e.g. full@1e-3 g-freeze@1e-4"
    )
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--steps", type=int, default=300)
    run.add_argument("--batch", type=int, default=16, help="examples per step (default 16)")
    run.add_argument("--eval-every", type=int, default=50)
    run.add_argument("--max-len", type=int, default=256, help="tokens per example at most (default 256)")
    run.add_argument("--test-limit", type=int, default=300, help="new-task questions scored (default 300)")
    run.add_argument(
        "--retention",
        nargs="*",
        choices=ev.RETENTION_TASKS,
        help="retention tasks (default: baseline.json's tasks clearly above chance)",
    )
    run.add_argument("--retention-limit", type=int, default=300, help="questions per retention task (default 300)")
    run.add_argument("--pilot-steps", type=int, default=20, help="full fine-tuning steps of the layer ranking")
    run.add_argument(
        "--keep-weights", type=Path, metavar="DIR", help="save each run's trained weights under DIR/<model>/<task>/"
    )
    run.add_argument(
        "--checkpoints",
        type=lambda text: Path(text) if text else None,
        default=default_cache().parent / "checkpoints",
        metavar="DIR",
        help="where runs save their state at every evaluation, to resume after a stop (default: beside the model "
        "cache; pass '' for none)",
    )
    run.add_argument(
        "--prepare-only",
        action="store_true",
        help="only the pilot ranking and the base model's scores (before starting workers side by side)",
    )
    run.add_argument(
        "--guard-weight",
        type=float,
        help="train with the retention guard at this weight (peft_grow.training; the run is named METHOD+kl-...)",
    )
    run.add_argument("--guard-source", choices=guarded.SOURCES, default="self", help="the guard's retention text")
    run.add_argument("--guard-batch", type=int, default=2, help="retention windows per step (default 2)")
    run.add_argument("--guard-length", type=int, default=128, help="tokens per retention window (default 128)")
    run.add_argument("--guard-temperature", type=float, default=1.0)
    run.add_argument("--tiny", action="store_true", help="smoke run: 2 steps, 4 questions, tiny retention")
    args = parser.parse_args(argv)
    if args.command == "run":
        if (args.runs is None) == (args.methods is None or args.lrs is None):
            parser.error("give --methods and --lrs, or --runs")
        args.runs = (
            [parse_run(r, parser) for r in args.runs]
            if args.runs
            else [(m, lr) for lr in args.lrs for m in args.methods]
        )
    if args.data is None:
        parser.error(
            "no task data folder given (expected the folder holding winogrande/, icl/, qasc/, mathqa/ and mtnt/, "
            f"see docs/evaluation.md): pass --data or set ${ev.DATA_ENV}"
        )
    if args.command == "run":
        args.guard = None
        if args.guard_weight is not None:
            args.guard = guarded.GuardSpec(
                args.guard_weight, args.guard_source, args.guard_batch, args.guard_length, args.guard_temperature
            )
    if getattr(args, "tiny", False):
        args.steps, args.batch, args.eval_every, args.test_limit, args.retention_limit = 2, 2, 1, 4, 4
        args.pilot_steps = 1
        if args.guard:
            args.guard = replace(args.guard, count=4, length=16)
    if args.dtype is None:
        args.dtype = "bf16-autocast" if pick_device(args.device).type == "cuda" else "fp32"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"baseline": cmd_baseline, "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    main()
