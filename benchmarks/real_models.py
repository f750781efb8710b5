"""The paper's claim on real pretrained models: new-task score and retention of what the model knew, per method.

Models (fetched once with benchmarks/fetch_models.py, outside the repository): SmolLM2-135M-Instruct (Apache-2.0)
and Gemma-3-270M base (Gemma Terms of Use), both dequantized from 4-5-bit GGUF files, which makes them close to,
not equal to, the published weights.

New tasks, as prompt/answer SFT with the loss on the answer only (peft_grow.evaluation builds the prompts):

  qasc    QASC closed-book, trained on train.json (8,134), scored on dev.json: exact match of the option letter
  mathqa  MathQA, trained on dev.json (4,475; the training split is not available offline), scored on test.json:
          exact match of the option letter (the paper uses G-Train here)
  mtnt    MTNT English to French, one-shot (a hand-written pair first), trained on valid (852), scored on test:
          SacreBLEU of the first line (for multilingual Gemma)

Retention: zero-shot accuracy on the packaged lm-eval tasks (peft_grow/evaluation/tasks: WinoGrande, ARC-Easy,
BoolQ, COPA, OpenBookQA, CommonsenseQA), read from the original files in the task data folder (--data, else
$PEFT_GROW_DATA; no default: the commands below pass ../shared/data/tasks). `baseline`
measures the base model on every task with its standard error; runs track the tasks where the base model is clearly
above chance (`--retention`, by default read from the model's baseline.json), on the first `--retention-limit`
questions.

Methods (METHODS in benchmarks/methods.py): full fine-tuning; LoRA r=16 and LoRA at the rank matched to G-Freeze on
every layer; G-Freeze (k=2) on every layer and on the top third of layers by the paper's pilot ranking; G-Train with
and without symmetry_noise; the zero-init growth baseline; for the paper's Figure 4, G-Freeze on the top N layers of
the pilot ranking, of the gradient proxy's or of a fixed random order (`g-freeze-pilot-3`, `g-freeze-proxy-3`,
`g-freeze-random-3`); and `sdft`, TRL's SDFTTrainer (on-policy self-distillation from the base model) on G-Freeze
(real_models_sdft.py). Every run: AdamW without weight decay (Adam), constant rate, clipped gradients, the same data
order for every method at a seed (SDFT draws its own), evaluated every `--eval-every` steps. Each (model, task,
method, rate, seed) run writes its own JSON to docs/results/real_models/<model>/<task>/ with its curve, wall times
and where it ran; a rerun skips finished runs, and a lock file per run lets several workers (processes, machines
sharing the folder) take jobs side by side. A run saves its state at every evaluation (`--checkpoints`, outside the
repository) and a stopped run resumes from there, exactly as if unbroken (SDFT's: reseeded, see its module).

    python -m benchmarks.fetch_models smollm2-135m
    python -m benchmarks.real_models baseline --model smollm2-135m --data ../shared/data/tasks
    python -m benchmarks.real_models run --model smollm2-135m --task qasc --methods full g-freeze --lrs 1e-3 1e-4 \
        --data ../shared/data/tasks
    python -m benchmarks.real_models run ... --tiny         # a seconds-long smoke run (tests use it)
    python -m benchmarks.real_models_report                 # tables and figures from the JSON files

Step 0 of every run is the base model (growth and LoRA start at the base function, full fine-tuning at the base),
so its scores are measured once per model and task (`<task>/base.json`) and shared by every run.

This module is the command line; the benchmark's other parts are real_models_tasks.py (task data and batches),
real_models_scores.py, real_models_training.py (the training loop), real_models_sdft.py, real_models_checkpoints.py,
real_models_runner.py (the commands, resumable, with lock files) and real_models_setup.py (see docs/layout.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # sdft's trainer is in trl.experimental, knowingly
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars, one per evaluation

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from peft_grow import evaluation as ev  # noqa: E402

from . import guarded  # noqa: E402
from .methods import METHODS  # noqa: E402
from .methods import method as method_named  # noqa: E402
from .real_models_runner import cmd_baseline, cmd_run  # noqa: E402
from .real_models_setup import MODELS, RESULTS, default_cache, default_data, pick_device, require_data  # noqa: E402
from .real_models_tasks import TASKS  # noqa: E402


def parse_run(text: str, parser: argparse.ArgumentParser) -> tuple[str, float]:
    method, _, rate = text.partition("@")
    try:
        lr = float(rate)
        method_named(method)  # the one place that knows the method names
    except ValueError:
        parser.error(f"--runs takes METHOD@LR, e.g. full@1e-4; got {text!r}, whose rate {rate!r} is not a number")
    except KeyError as error:
        parser.error(f"--runs takes METHOD@LR, e.g. full@1e-4; got {text!r}: {error.args[0]}")
    return method, lr


def common_options() -> argparse.ArgumentParser:
    """The options of both commands."""
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
    return common


def add_run_options(run: argparse.ArgumentParser) -> None:
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
        "--proxy-batches", type=int, default=4, help="batches of the gradient proxy's ranking (g-freeze-proxy-N)"
    )
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


def add_guard_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--guard-weight",
        type=float,
        help="train with the retention guard at this weight (peft_grow.training; the run is named METHOD+kl-...)",
    )
    run.add_argument("--guard-source", choices=guarded.SOURCES, default="self", help="the guard's retention text")
    run.add_argument("--guard-batch", type=int, default=2, help="retention windows per step (default 2)")
    run.add_argument("--guard-length", type=int, default=128, help="tokens per retention window (default 128)")
    run.add_argument("--guard-temperature", type=float, default=1.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()

    baseline = commands.add_parser("baseline", parents=[common], help="the base model on every retention task")
    baseline.add_argument("--tasks", nargs="+", default=list(ev.RETENTION_TASKS), choices=ev.RETENTION_TASKS)
    baseline.add_argument("--limit", type=int, help="questions per task (default: all)")

    run = commands.add_parser("run", parents=[common], help="train and evaluate runs; finished ones are skipped")
    add_run_options(run)
    add_guard_options(run)
    run.add_argument("--tiny", action="store_true", help="smoke run: 2 steps, 4 questions, tiny retention")
    return checked(parser, parser.parse_args(argv))


def checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The parsed options completed (the runs, the guard, --tiny's sizes, the dtype) or refused."""
    if args.command == "run":
        if (args.runs is None) == (args.methods is None or args.lrs is None):
            parser.error("give --methods and --lrs, or --runs")
        args.runs = (
            [parse_run(r, parser) for r in args.runs]
            if args.runs
            else [(m, lr) for lr in args.lrs for m in args.methods]
        )
    require_data(parser, args.data)
    if args.command == "run":
        args.guard = None
        if args.guard_weight is not None:
            args.guard = guarded.GuardSpec(
                args.guard_weight, args.guard_source, args.guard_batch, args.guard_length, args.guard_temperature
            )
            if any(method == "sdft" for method, _ in args.runs):
                parser.error("sdft distils from the base model already: run it without --guard-weight")
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
