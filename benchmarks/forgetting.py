"""The paper's Figure 2 on material we have: how much each fine-tuning method forgets while it learns a new domain.

The base model is the real pretrained stories260K LLaMA (examples/data/stories260K, 260K parameters, 5 layers,
trained on TinyStories). Its original domain is text sampled from the model itself
(examples/data/stories260K_samples.txt, as in examples/demo.py); a rise of its loss there is forgetting. It is
fine-tuned on three new domains of different shift from children's stories:

  * shakespeare: tiny Shakespeare, the last 10% held out;
  * wikitext:    WikiText-2, trained on the validation split, held out on the test split;
  * qasc:        QASC science questions as documents "Question: ...\\nOptions: (A) ... (H) ...\\nAnswer: (X) text",
                 trained on the training split, held out on the dev split.

Full files come from the folder given as --shared-data (text/tinyshakespeare.txt, text/wikitext-2/{valid,test}.txt,
tasks/qasc/{train,dev}.json; e.g. ../shared/data). Without it, and for any file it lacks, WikiText-2 and QASC come
from the slices in benchmarks/data and Shakespeare from the demo's copy (a notice is printed); there is no default
folder outside the repository. --tiny always uses the in-repository material.

Methods (METHODS below): full fine-tuning; LoRA on every linear layer at the rank whose trainable-parameter count
is closest to G-Freeze on all layers, and at r=4; G-Freeze (k=2) on all layers and on the top-N layers of the
paper's pilot ranking (peft_grow.analysis.selection, one pilot per domain); G-Train with and without symmetry_noise; the
zero-init growth baseline (Appendix C.2, original weights frozen).

Protocol: every run takes the same number of AdamW steps (constant learning rate, no weight decay, gradients
clipped at 1.0) on random windows of the new domain, drawn in the same order for every method at a given seed.
Held-out new-domain and original-domain losses are evaluated every --eval-every steps. Per method and domain,
the learning rate with the lowest final held-out new-domain loss at seed 0 is selected from the method's grid
of three, and the other seeds run at that rate. Reported (mean +- sample std over seeds): the final losses, and
the original-domain loss where each run's curve first reaches a common new-domain loss (linear between
evaluations): the worst final new-domain loss among the selected runs of all methods, and the worst final
new-domain loss among the full fine-tuning seeds (a level every full fine-tuning seed reached).

    python -m benchmarks.forgetting --tiny            # smoke test: in-repository material, seconds
    python -m benchmarks.forgetting --quick           # one seed, one rate per method, 50 steps: 4.3 min
    nice python -m benchmarks.forgetting --workers 2 --shared-data ../shared/data   # the full benchmark: 31 min

Measured runtimes: --quick 4.3 min (1 worker, 24 runs); the full mode 31.3 min on 2 idle CPU cores (--workers 2,
120 runs of 150 steps; 67.8 min when other jobs shared the cores), with identical results in both runs.
Results and their reading: docs/results.md.
`--replot RESULTS_JSON` only redraws the figures from a saved run.

Writes results.json and table.md to --out, forgetting_curves.png and forgetting_pareto.png to --figures
(docs/ in the full mode, --out otherwise).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from peft_grow.analysis.selection import pilot_ranking, top_layers  # noqa: E402
from peft_grow.sequences import mean_token_loss, token_windows  # noqa: E402

from . import stories  # noqa: E402  (the demo's model, original domain and data order)
from .methods import METHODS as SHARED  # noqa: E402
from .methods import Method, lora_at, markdown_table, matched_lora_rank, pareto_front, text_table, trainable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPO_DATA = ROOT / "benchmarks" / "data"
Curve = stories.Curve  # (step, new-domain loss, original-domain loss)


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Domain:
    key: str
    title: str
    train: torch.Tensor  # one stream of token ids; training windows are cut from it at random offsets
    heldout: torch.Tensor  # [n, seq_len] held-out windows
    source: str  # the files it was read from


def spread_windows(ids: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """`n` windows evenly spaced over the stream (all of them if it holds fewer), so that the held-out set covers
    the whole split rather than its first pages."""
    windows = token_windows(ids, seq_len)
    if len(windows) <= n:
        return windows
    return windows[torch.linspace(0, len(windows) - 1, n).round().long()]


def qasc_document(record: dict) -> str:
    """A QASC record as a question-answering document; the facts are left out, as a test taker would not see them."""
    return (
        f"Question: {record['question'].strip()}\nOptions: {record['answers'].strip()}\n"
        f"Answer: {record['answer'].strip()}"
    )


def show(path: Path) -> str:
    """A path as the report shows it: relative to the repository root."""
    return os.path.relpath(path, ROOT)


def pick(shared: Path | None, shared_name: str, repo_path: Path) -> Path:
    """The shared full file where there is one, else the in-repository copy."""
    if shared is not None and (shared / shared_name).is_file():
        return shared / shared_name
    return repo_path


def load_domains(
    tokenizer, keys: list[str], seq_len: int, eval_windows: int, shared: Path | None, announce: bool = False
) -> list[Domain]:
    """The new domains, read from the shared folder where it has them, else from the repository's slices (with a
    notice where one was given, or where `announce`)."""
    domains = []
    for key in keys:
        if key == "shakespeare":
            path = pick(shared, "text/tinyshakespeare.txt", stories.NEW_DOMAIN)
            ids = stories.packed(tokenizer, [path.read_text(encoding="utf-8")])
            cut = int(len(ids) * 0.9)  # split by position, as the demo does
            train, heldout, source = ids[:cut], ids[cut:], f"{show(path)} (first 90% / last 10%)"
        elif key == "wikitext":
            train_path = pick(shared, "text/wikitext-2/valid.txt", REPO_DATA / "wikitext2_valid_head.txt")
            test_path = pick(shared, "text/wikitext-2/test.txt", REPO_DATA / "wikitext2_test_head.txt")
            train = stories.packed(tokenizer, [train_path.read_text(encoding="utf-8")])
            heldout = stories.packed(tokenizer, [test_path.read_text(encoding="utf-8")])
            source = f"{show(train_path)} / {show(test_path)}"
        elif key == "qasc":
            train_path = pick(shared, "tasks/qasc/train.json", REPO_DATA / "qasc_train_every32.json")
            dev_path = pick(shared, "tasks/qasc/dev.json", REPO_DATA / "qasc_dev_every6.json")
            records = [json.loads(p.read_text(encoding="utf-8")) for p in (train_path, dev_path)]
            train, heldout = (stories.packed(tokenizer, [qasc_document(r) for r in rs]) for rs in records)
            source = f"{show(train_path)} / {show(dev_path)}"
        else:
            raise ValueError(f"unknown domain {key!r}; choose from {DOMAINS}")
        if shared is not None and show(shared) not in source:
            print(f"notice: {key}: shared data not found under {show(shared)}; using {source}")
        elif shared is None and announce:
            print(f"notice: {key}: no --shared-data, using the in-repository {source}")
        domains.append(Domain(key, DOMAINS[key], train, spread_windows(heldout, seq_len, eval_windows), source))
    return domains


DOMAINS = {"shakespeare": "tiny Shakespeare", "wikitext": "WikiText-2", "qasc": "QASC (Q&A format)"}


def original_domain(tokenizer, seq_len: int, eval_windows: int) -> torch.Tensor:
    """Held-out windows of the base model's own samples (examples/data/stories260K_samples.txt)."""
    return spread_windows(stories.packed(tokenizer, stories.original_samples()), seq_len, eval_windows)


# ---------------------------------------------------------------------------------------------------------------
# Methods: this benchmark's line-up from the shared table (benchmarks/methods.py), each with its learning-rate grid;
# `ctx` holds what the benchmark computed first (the pilot's layers, the matched LoRA rank).

GROWTH_LRS = (1e-3, 3e-3, 1e-2)
METHODS = {
    "full": replace(SHARED["full"], lrs=(3e-4, 1e-3, 3e-3)),
    "lora": replace(SHARED["lora-matched"], lrs=(1e-3, 3e-3, 1e-2)),
    "lora-r4": Method("LoRA r=4", lora_at(4), (3e-3, 1e-2, 3e-2)),
    "g-freeze": replace(SHARED["g-freeze"], lrs=GROWTH_LRS),
    "g-freeze-top": replace(SHARED["g-freeze-top"], label="G-Freeze top-N", lrs=GROWTH_LRS),
    "g-train": replace(SHARED["g-train"], label="G-Train", lrs=GROWTH_LRS),
    "g-train-noise": replace(SHARED["g-train-noise"], lrs=GROWTH_LRS),
    "zero-init": replace(SHARED["zero-init"], lrs=GROWTH_LRS),
}


# ---------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class Settings:
    steps: int
    batch: int
    seq_len: int
    eval_every: int
    eval_windows: int
    pilot_steps: int
    seeds: list[int]
    sweep: bool  # three learning rates per method at the first seed, or only the middle one


@dataclass
class Job:
    domain: str
    method: str
    lr: float
    seed: int


@dataclass
class Run:
    domain: str
    method: str
    lr: float
    seed: int
    trainable: int
    total: int
    seconds: float
    curve: Curve = field(default_factory=list)


@dataclass
class Setup:
    """Everything a run needs; a module global, so that forked workers share it without pickling."""

    base: torch.nn.Module
    domains: dict[str, Domain]
    original: torch.Tensor
    context: dict[str, dict]  # per domain: {"layers": pilot's top layers, "lora_rank": matched rank}
    settings: Settings


SETUP: Setup | None = None


def evaluate(model, domain: Domain, original: torch.Tensor) -> tuple[float, float]:
    return mean_token_loss(model, domain.heldout), mean_token_loss(model, original)


def train_run(job: Job) -> Run:
    torch.set_num_threads(1)  # one thread per run: small matrices, and workers run side by side
    setup, settings = SETUP, SETUP.settings
    domain = setup.domains[job.domain]
    torch.manual_seed(job.seed)  # LoRA's and zero-init's random weights, the symmetry noise
    model = METHODS[job.method].build(copy.deepcopy(setup.base), setup.context[job.domain])
    run = Run(
        job.domain,
        job.method,
        job.lr,
        job.seed,
        trainable(model),
        sum(p.numel() for p in model.parameters()),
        0.0,
    )
    start = time.perf_counter()
    run.curve = stories.train(
        model,
        domain.train,
        lambda trained: evaluate(trained, domain, setup.original),
        lr=job.lr,
        steps=settings.steps,
        batch=settings.batch,
        seq_len=settings.seq_len,
        eval_every=settings.eval_every,
        seed=job.seed,
    )
    run.seconds = time.perf_counter() - start
    return run


def run_all(jobs: list[Job], workers: int) -> list[Run]:
    """Run the jobs, in forked worker processes when asked (each inherits SETUP); results come back in job order."""
    if workers <= 1 or len(jobs) <= 1:
        return [log(train_run(job)) for job in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return [log(run) for run in pool.imap(train_run, jobs, chunksize=1)]


def log(run: Run) -> Run:
    """One line per finished run, so that a long benchmark shows its progress."""
    (_, new0, orig0), (_, new, orig) = run.curve[0], run.curve[-1]
    print(
        f"  {run.domain:<11} {run.method:<13} lr {run.lr:.0e} seed {run.seed}: new {new0:.3f} -> {new:.3f}, "
        f"original {orig0:.3f} -> {orig:.3f} ({run.seconds:.0f} s)",
        flush=True,
    )
    return run


def pilot_layers(base, domain: Domain, settings: Settings, n: int) -> list[int]:
    """The paper's heuristic: a short full fine-tune on the new domain, layers ranked by their MLP update norm."""
    model = copy.deepcopy(base)
    data = stories.random_windows(domain.train, settings.batch, settings.seq_len, seed=0)
    pilot = ({"input_ids": b, "labels": b} for b in (next(data) for _ in range(settings.pilot_steps)))
    scores = pilot_ranking(model, pilot, steps=settings.pilot_steps, lr=1e-3)
    return top_layers(scores, n)


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping


def original_at(curve: Curve, new_loss: float) -> float | None:
    """The original-domain loss where `curve` first reaches `new_loss` on the new domain, linear between evaluations;
    None if it never does."""
    if curve and curve[0][1] == new_loss:
        return curve[0][2]
    for (_, n0, o0), (_, n1, o1) in pairwise(curve):
        if n1 <= new_loss <= n0 and n1 < n0:
            return o0 + (n0 - new_loss) / (n0 - n1) * (o1 - o0)
    return None


def mean_std(values: list[float | None]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (None for one seed); None if any value is missing (a seed that never
    reached the level)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def select_lrs(runs: list[Run], first_seed: int) -> dict[tuple[str, str], float]:
    """Per (domain, method), the rate with the lowest final held-out new-domain loss at the first seed."""
    best: dict[tuple[str, str], Run] = {}
    for run in runs:
        key = (run.domain, run.method)
        if run.seed == first_seed and (key not in best or run.curve[-1][1] < best[key].curve[-1][1]):
            best[key] = run
    return {key: run.lr for key, run in best.items()}


def summarise(runs: list[Run], chosen: dict[tuple[str, str], float], domains: list[str], methods: list[str]) -> dict:
    """Per domain: the two common new-domain levels and, per method, the statistics of its selected runs."""
    summary = {}
    for domain in domains:
        selected = {
            m: [r for r in runs if r.domain == domain and r.method == m and r.lr == chosen[domain, m]] for m in methods
        }
        finals = [r.curve[-1][1] for rs in selected.values() for r in rs]
        level_equal = max(finals)  # every selected run reaches it, by construction
        # the level every full fine-tuning seed reached: its worst final new-domain loss
        level_ft = max(r.curve[-1][1] for r in selected["full"]) if "full" in selected else None
        rows = {}
        for method, rs in selected.items():
            grid = METHODS[method].lrs
            rows[method] = {
                "lr": chosen[domain, method],
                "lr_at_grid_edge": len(grid) > 1 and chosen[domain, method] in (min(grid), max(grid)),
                "seeds": [r.seed for r in rs],
                "trainable": rs[0].trainable,
                "new_start": rs[0].curve[0][1],
                "original_start": rs[0].curve[0][2],
                "new_end": mean_std([r.curve[-1][1] for r in rs]),
                "original_end": mean_std([r.curve[-1][2] for r in rs]),
                "original_change": mean_std([r.curve[-1][2] - r.curve[0][2] for r in rs]),
                "original_at_equal_new": mean_std([original_at(r.curve, level_equal) for r in rs]),
                "original_at_full_ft_new": None
                if level_ft is None
                else mean_std([original_at(r.curve, level_ft) for r in rs]),
            }
        setter = max(selected, key=lambda m: max(r.curve[-1][1] for r in selected[m]))
        summary[domain] = {
            "level_equal": level_equal,
            "level_equal_set_by": setter,
            "level_full_ft": level_ft,
            "methods": rows,
        }
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Report


def fmt(stat: tuple[float, float | None] | None, signed: bool = False) -> str:
    if stat is None:
        return "not reached"
    mean, std = stat
    return (f"{mean:+.3f}" if signed else f"{mean:.3f}") + ("" if std is None else f" ± {std:.3f}")


def table_rows(domain: Domain, summary: dict, base_params: int) -> tuple[list[str], list[list[str]]]:
    level_ft = summary["level_full_ft"]
    header = [
        "method",
        "lr",
        "trainable (share)",
        "new domain, end",
        "original, end",
        "original change",
        f"original at new = {summary['level_equal']:.3f}",
        "original at new = " + (f"{level_ft:.3f} (full FT)" if level_ft is not None else "full FT (not run)"),
    ]
    rows = []
    for method, row in summary["methods"].items():
        rows.append(
            [
                METHODS[method].label,
                f"{row['lr']:.0e}" + ("*" if row["lr_at_grid_edge"] else ""),
                f"{row['trainable']:,} ({row['trainable'] / base_params:.0%})",
                fmt(row["new_end"]),
                fmt(row["original_end"]),
                fmt(row["original_change"], signed=True),
                fmt(row["original_at_equal_new"]),
                fmt(row["original_at_full_ft_new"]) if level_ft is not None else "",
            ]
        )
    return header, rows


def domain_caption(domain: Domain, summary: dict, original: torch.Tensor, settings: Settings) -> str:
    first = next(iter(summary["methods"].values()))
    return (
        f"{domain.title}: train {len(domain.train):,} tokens, held out {domain.heldout.shape[0]} x "
        f"{domain.heldout.shape[1]} tokens ({domain.source}); original domain {original.shape[0]} x "
        f"{original.shape[1]} tokens. Base model: new {first['new_start']:.3f}, "
        f"original {first['original_start']:.3f}. "
        f"{settings.steps} steps x {settings.batch} x {settings.seq_len} tokens, seeds {settings.seeds}. Equal-loss "
        f"level {summary['level_equal']:.3f} = the worst final new-domain loss "
        f"({METHODS[summary['level_equal_set_by']].label})."
    )


# ---------------------------------------------------------------------------------------------------------------
# Figures


def selected_curves(runs: list[Run], chosen: dict, domain: str, method: str) -> torch.Tensor:
    """[seeds, evals, 3] curves of the selected rate."""
    return torch.tensor(
        [r.curve for r in runs if r.domain == domain and r.method == method and r.lr == chosen[domain, method]]
    )


ORIGINAL, NEW = "original-domain loss (nats)", "held-out new-domain loss (nats)"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, runs: list[Run], chosen: dict, titles: dict[str, str], methods: list[str]) -> None:
    """Per domain: original-domain loss vs step (the paper's top row), new-domain loss vs step (its bottom row) and
    original against new (the trade-off, from the first evaluation on: the jump from the base model dwarfs the rest),
    mean over seeds with a band of one standard deviation."""
    plt = pyplot()
    fig, axes = plt.subplots(3, len(titles), figsize=(4.6 * len(titles), 11), squeeze=False)
    colors = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    for col, (domain, title) in enumerate(titles.items()):
        for method in methods:
            curves = selected_curves(runs, chosen, domain, method)
            mean, std = curves.mean(0), curves.std(0) if len(curves) > 1 else torch.zeros_like(curves[0])
            label = f"{METHODS[method].label} ({chosen[domain, method]:.0e})"
            for row, index in ((0, 2), (1, 1)):
                low, high = mean[:, index] - std[:, index], mean[:, index] + std[:, index]
                axes[row, col].plot(mean[:, 0], mean[:, index], color=colors[method], label=label, lw=1.4)
                axes[row, col].fill_between(mean[:, 0], low, high, color=colors[method], alpha=0.15, lw=0)
            axes[2, col].plot(mean[1:, 1], mean[1:, 2], color=colors[method], marker=".", ms=3, lw=1.2)
        axes[0, col].axhline(runs[0].curve[0][2], color="grey", ls=":", lw=1, label="base model")
        axes[0, col].set_title(title)
        for row, (ylabel, xlabel) in enumerate([(ORIGINAL, "step"), (NEW, "step"), (ORIGINAL, NEW)]):
            axes[row, col].set(xlabel=xlabel, ylabel=ylabel)
        axes[2, col].invert_xaxis()  # training moves right: lower new-domain loss
        axes[1, col].legend(fontsize=7)
    fig.suptitle("stories260K: forgetting (top) and learning (middle) over training; the trade-off (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def front_runs(runs: list[Run], domain: str) -> list[Run]:
    """The runs of `domain` whose final point lies on the Pareto front, by new-domain loss."""
    own = [r for r in runs if r.domain == domain]
    front = pareto_front([(r.curve[-1][1], r.curve[-1][2]) for r in own])
    return sorted((r for r in own if (r.curve[-1][1], r.curve[-1][2]) in front), key=lambda r: r.curve[-1][1])


def describe_front(runs: list[Run], titles: dict[str, str]) -> str:
    return "\n".join(
        f"Pareto front, {title}: "
        + "; ".join(
            f"{METHODS[r.method].label} lr {r.lr:.0e} seed {r.seed} ({r.curve[-1][1]:.3f}, {r.curve[-1][2]:.3f})"
            for r in front_runs(runs, domain)
        )
        for domain, title in titles.items()
    )


def plot_pareto(path: Path, runs: list[Run], titles: dict[str, str], methods: list[str]) -> None:
    """Final (new-domain, original-domain) loss of every run: all methods, rates and seeds; the front in black, its
    points labelled with their learning rate."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(titles), figsize=(4.8 * len(titles), 4.6), squeeze=False)
    colors = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    markers = dict(zip(methods, "osD^v<>Ph", strict=False))
    for ax, (domain, title) in zip(axes[0], titles.items(), strict=True):
        own = [r for r in runs if r.domain == domain]
        for method in methods:
            points = [(r.curve[-1][1], r.curve[-1][2]) for r in own if r.method == method]
            label = METHODS[method].label
            ax.scatter(*zip(*points, strict=True), color=colors[method], marker=markers[method], s=22, label=label)
        front = front_runs(runs, domain)
        ax.plot(*zip(*(r.curve[-1][1:] for r in front), strict=True), color="black", lw=1, drawstyle="steps-post")
        for run in front:
            ax.annotate(f"{run.lr:.0e}", run.curve[-1][1:], fontsize=7, xytext=(4, -9), textcoords="offset points")
        new0, original0 = own[0].curve[0][1:]
        ax.set_title(f"{title}\n(base model: new {new0:.2f}, original {original0:.2f})", fontsize=10)
        ax.set_xlabel("held-out new-domain loss, end (nats)")
        ax.set_ylabel("original-domain loss, end (nats)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Every run (all rates and seeds): lower left is better; black: the Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Main

MODES = {
    # mode: steps, batch, seq_len, eval_every, eval_windows, pilot_steps, seeds, sweep
    "tiny": Settings(2, 2, 32, 1, 4, 2, [0], False),
    "quick": Settings(50, 16, 128, 10, 32, 10, [0], False),
    "full": Settings(150, 16, 128, 15, 48, 30, [0, 1, 2], True),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one seed, one rate per method, 50 steps")
    size.add_argument("--tiny", action="store_true", help="a seconds-long smoke run on in-repository material only")
    parser.add_argument("--steps", type=int, help="training steps per run (full: 150)")
    parser.add_argument("--batch", type=int, help="sequences per step (full: 16)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (full: 128)")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (full: 15)")
    parser.add_argument("--eval-windows", type=int, help="held-out windows per domain (full: 48)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds; the rate is selected at the first (full: 0 1 2)")
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--top-n", type=int, default=2, help="layers G-Freeze top-N grows (of 5; default 2)")
    parser.add_argument("--workers", type=int, default=1, help="runs side by side, one thread each (default 1)")
    parser.add_argument(
        "--shared-data",
        type=Path,
        help="the folder of the complete files (text/, tasks/; e.g. ../shared/data); default: in-repository slices",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "forgetting", help="results.json, table.md")
    parser.add_argument("--figures", type=Path, help="where the PNGs go (default: docs/ in the full mode, else --out)")
    parser.add_argument(
        "--replot", type=Path, metavar="RESULTS_JSON", help="only redraw the figures from a results.json"
    )
    args = parser.parse_args(argv)
    args.mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    settings = copy.deepcopy(MODES[args.mode])
    for name in ("steps", "batch", "seq_len", "eval_every", "eval_windows", "seeds"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    args.settings = settings
    args.figures = args.figures or (ROOT / "docs" if args.mode == "full" else args.out)
    if "g-freeze" not in args.methods and "lora" in args.methods:
        parser.error("the matched LoRA rank is taken from G-Freeze: keep g-freeze among --methods")
    return args


def plan_jobs(args, domains: list[str]) -> list[Job]:
    """The first seed at every rate of each method's grid (or only its middle rate without the sweep)."""
    first = args.settings.seeds[0]
    return [
        Job(d, m, lr, first)
        for d in domains
        for m in args.methods
        for lr in (METHODS[m].lrs if args.settings.sweep else METHODS[m].lrs[1:2])
    ]


def replot(results_json: Path, figures: Path) -> dict:
    """Redraw the figures from a saved results.json, without training."""
    results = json.loads(results_json.read_text(encoding="utf-8"))
    runs = [Run(**{**r, "curve": [tuple(point) for point in r["curve"]]}) for r in results["runs"]]
    chosen = {tuple(key.split("/")): lr for key, lr in results["selected_lr"].items()}
    titles = {key: domain["title"] for key, domain in results["domains"].items()}
    figures.mkdir(parents=True, exist_ok=True)
    plot_curves(figures / "forgetting_curves.png", runs, chosen, titles, list(results["methods"]))
    plot_pareto(figures / "forgetting_pareto.png", runs, titles, list(results["methods"]))
    print(describe_front(runs, titles))
    print(f"redrew the figures of {results_json} in {figures}")
    return results


def prepare(args) -> tuple[Setup, int]:
    """The domains, the base model and what the methods need of it (pilot layers, matched LoRA rank); the base
    model's parameter count."""
    settings = args.settings
    tokenizer = AutoTokenizer.from_pretrained(stories.MODEL_DIR)
    shared = None if args.tiny else args.shared_data
    domains = load_domains(tokenizer, args.domains, settings.seq_len, settings.eval_windows, shared, not args.tiny)
    original = original_domain(tokenizer, settings.seq_len, settings.eval_windows)
    base = stories.load_base()
    base_params = sum(p.numel() for p in base.parameters())
    rank = matched_lora_rank(base) if "lora" in args.methods else None
    context = {d.key: {"layers": pilot_layers(base, d, settings, args.top_n), "lora_rank": rank} for d in domains}
    print(
        f"mode {args.mode}: matched LoRA rank {rank}; pilot top-{args.top_n} layers "
        + ", ".join(f"{k}: {v['layers']}" for k, v in context.items())
    )
    return Setup(base, {d.key: d for d in domains}, original, context, settings), base_params


def run_seeds(args, domains: list[str]) -> tuple[list[Run], dict]:
    """The first seed over the rate grids, then the other seeds at each method's selected rate."""
    settings = args.settings
    jobs = plan_jobs(args, domains)
    print(f"{len(jobs)} runs at seed {settings.seeds[0]} ({'rate sweep' if settings.sweep else 'one rate each'})...")
    runs = run_all(jobs, args.workers)
    chosen = select_lrs(runs, settings.seeds[0])
    more = [Job(d, m, lr, s) for (d, m), lr in chosen.items() for s in settings.seeds[1:]]
    if more:
        print(f"{len(more)} runs at seeds {settings.seeds[1:]} at the selected rates...")
        runs += run_all(more, args.workers)
    return runs, chosen


def print_tables(setup: Setup, summary: dict, runs: list[Run], base_params: int) -> list[str]:
    """Each domain's table and the Pareto fronts, printed; the Markdown tables for table.md."""
    tables = []
    for domain in setup.domains.values():
        header, rows = table_rows(domain, summary[domain.key], base_params)
        caption = domain_caption(domain, summary[domain.key], setup.original, setup.settings)
        print(f"\n{caption}\n{text_table(header, rows)}")
        tables.append(f"**{caption}**\n\n{markdown_table(header, rows)}")
    titles = {d.key: d.title for d in setup.domains.values()}
    print("\n" + describe_front(runs, titles) + "  [(new-domain loss, original-domain loss) at the end]")
    print("(* the selected rate is at the edge of the method's grid; 'not reached': some seed never got there)")
    return tables


def results_record(args, argv, setup: Setup, base_params: int, runs: list[Run], chosen: dict, summary: dict) -> dict:
    """What results.json holds: the settings, the material, the selections, the summary and every run."""
    domains = setup.domains.values()
    return {
        "mode": args.mode,
        "command": "python -m benchmarks.forgetting " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": asdict(setup.settings),
        "workers": args.workers,
        "seconds": None,  # filled in by main, once everything ran
        "base_params": base_params,
        "domains": {
            d.key: {
                "title": d.title,
                "source": d.source,
                "train_tokens": len(d.train),
                "heldout_windows": list(d.heldout.shape),
            }
            for d in domains
        },
        "original_windows": list(setup.original.shape),
        "methods": {m: {"label": METHODS[m].label, "lrs": METHODS[m].lrs} for m in args.methods},
        "context": setup.context,
        "selected_lr": {f"{d}/{m}": lr for (d, m), lr in chosen.items()},
        "summary": summary,
        "pareto_front": {d.key: [[r.method, r.lr, r.seed] for r in front_runs(runs, d.key)] for d in domains},
        "runs": [asdict(r) for r in runs],
    }


def main(argv: list[str] | None = None) -> dict:
    global SETUP
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot, args.figures)
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    started = time.perf_counter()
    SETUP, base_params = prepare(args)
    runs, chosen = run_seeds(args, list(SETUP.domains))
    summary = summarise(runs, chosen, list(SETUP.domains), args.methods)
    seconds = time.perf_counter() - started
    tables = print_tables(SETUP, summary, runs, base_params)
    print(f"total {seconds / 60:.1f} min ({len(runs)} runs, {args.workers} worker(s))")

    args.out.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    results = results_record(args, argv, SETUP, base_params, runs, chosen, summary) | {"seconds": seconds}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (args.out / "table.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    titles = {d.key: d.title for d in SETUP.domains.values()}
    plot_curves(args.figures / "forgetting_curves.png", runs, chosen, titles, args.methods)
    plot_pareto(args.figures / "forgetting_pareto.png", runs, titles, args.methods)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'table.md'} and the figures in {args.figures}")
    return results


if __name__ == "__main__":
    main()
