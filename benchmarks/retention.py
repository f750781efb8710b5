"""Retention of stories260K: base model, a freshly grown adapter, and G-Freeze after a short fine-tune.

Runs the packaged lm-eval tasks (peft_grow/evaluation/tasks: grow_winogrande, grow_arc_easy, grow_boolq, grow_copa,
grow_openbook_qa, grow_commonsense_qa; zero-shot accuracy) on local data in the original formats, for:

  * base:    examples/data/stories260K as it is;
  * fresh:   the same model grown in every layer, k=2, before any training. Growth preserves the function,
             so every score must equal the base's: the script exits with status 1 if one does not;
  * trained: the fresh adapter after --train-steps of G-Freeze on tiny Shakespeare, exactly the G-Freeze run
             of examples/demo.py (same data, seed, steps and learning rate), adapter on.

It also prints the mean token loss (nats) on the demo's original-domain text (samples of the base model)
and on held-out Shakespeare, with the adapter on and off (loss_with_and_without_adapter).

The task data folder is --data-dir, else $PEFT_GROW_DATA (the layout of docs/evaluation.md); there is no default.

    python -m benchmarks.retention --data-dir ../shared/data/tasks --limit 20   # about 3 minutes on 2 CPU cores
    python -m benchmarks.retention --data-dir ../shared/data/tasks   # all 8,734 local questions (about 40 min)
    python -m benchmarks.retention --data-dir /path/to/tasks --tasks winogrande --train-steps 0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from peft_grow import GrowConfig  # noqa: E402
from peft_grow import evaluation as ev  # noqa: E402

from . import stories  # noqa: E402  (the demo's data and training loop)
from .real_models_setup import require_data  # noqa: E402
from .stories import MODEL_DIR  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help=f"task data folder (default ${ev.DATA_ENV}; one of the two is needed)")
    parser.add_argument("--tasks", nargs="+", default=list(ev.RETENTION_TASKS), help="retention tasks (all six)")
    parser.add_argument("--limit", type=int, default=None, help="questions per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size (default 32)")
    parser.add_argument("--train-steps", type=int, default=150, help="G-Freeze steps as in the demo; 0 skips")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (the demo's, 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or os.environ.get(ev.DATA_ENV)
    require_data(parser, args.data_dir, "--data-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # one truncation warning per long BoolQ passage

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, add_bos_token=True)  # the model was trained after <s>
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    columns, seconds = {}, {}

    def measure(name: str, evaluated) -> None:
        start = time.perf_counter()
        results = ev.evaluate_tasks(
            evaluated, tokenizer, args.tasks, data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size
        )
        seconds[name] = time.perf_counter() - start
        columns[name] = {
            task.removeprefix(ev.TASK_PREFIX): (scores["acc,none"], results["n-samples"][task]["effective"])
            for task, scores in results["results"].items()
        }

    measure("base", model)
    grown = get_peft_model(model, GrowConfig(k=2, mode="freeze"))
    measure("fresh", grown)
    # the demo's windows: its load_data puts <s> before each text itself, so its tokenizer must not add one
    data = stories.load_data(AutoTokenizer.from_pretrained(MODEL_DIR), seq_len=128)
    losses = {"fresh": _losses(grown, tokenizer, data)}
    if args.train_steps:
        train(grown, data, args)
        measure("trained", grown)
        losses["trained"] = _losses(grown, tokenizer, data)

    names = list(columns)
    print(f"\nZero-shot accuracy (lm-eval, packaged tasks, data {args.data_dir}, limit {args.limit}):\n")
    header = f"{'task':<16}{'questions':>10}" + "".join(f"{n:>10}" for n in names)
    print(header + "\n" + "-" * len(header))
    for task, (_, count) in columns["base"].items():
        print(f"{task:<16}{count:>10,}" + "".join(f"{columns[n][task][0]:>10.4f}" for n in names))
    print("seconds" + " " * 19 + "".join(f"{seconds[n]:>10.0f}" for n in names))

    print("\nMean token loss (nats), adapter on / off (off is the base model):")
    for name, ((orig_on, orig_off), (new_on, new_off)) in losses.items():
        print(
            f"  {name:<8} original domain {orig_on:.3f} / {orig_off:.3f}   "
            f"tiny Shakespeare (held out) {new_on:.3f} / {new_off:.3f}"
        )

    identical = columns["fresh"] == columns["base"]
    print(f"\nfresh adapter scores identical to the base model's: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


def train(grown, data: stories.Data, args) -> None:
    """The demo's G-Freeze run: its seed, batch of 16 windows of 128 tokens, and evaluations at the ends."""
    torch.manual_seed(args.seed)
    stories.train(
        grown,
        data.train,
        lambda trained: stories.evaluate(trained, data),
        lr=args.lr,
        steps=args.train_steps,
        batch=16,
        seq_len=128,
        eval_every=args.train_steps,
        seed=args.seed,
        progress=f"{'G-Freeze':>17}",
    )


def _losses(grown, tokenizer, data) -> tuple[tuple[float, float], tuple[float, float]]:
    """(on, off) on the original-domain windows and on held-out Shakespeare windows of the demo."""
    return tuple(
        ev.loss_with_and_without_adapter(grown, tokenizer, windows.flatten(), seq_len=windows.shape[1], batch_size=64)
        for windows in (data.original, data.new_heldout)
    )


if __name__ == "__main__":
    sys.exit(main())
