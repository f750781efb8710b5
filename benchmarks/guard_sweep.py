"""The retention guard's weight and text, swept on a real pretrained model in minutes: stories260K fine-tuned on
tiny Shakespeare (the demo's setting), the guard at several weights, for G-Freeze and for full fine-tuning with a
frozen reference copy (docs/results.md, "The retention guard").

New domain: held-out Shakespeare loss. Original domain: loss on examples/data/stories260K_samples.txt, the model's
own text sampled with seed 0 (TinyStories itself is not shipped). The guard's text is never that file:

  self      the model's own text sampled anew with seed 1234 (peft_grow.training.self_generated_windows)
  wikitext  the head of WikiText-2's validation split in benchmarks/data (a dataset of another domain)

Every run: AdamW at a constant rate, 150 steps of 16 x 128 tokens, the demo's data order and seed, the guard
reading 4 windows (a quarter of the batch) of 128 tokens per step at temperature 1. Read "original at equal new"
as the demo does: the original-domain loss where the run's new-domain loss first reaches the level every run
reaches, linear between evaluations.

    python -m benchmarks.guard_sweep                  # about 10 minutes on 2 CPU cores
    python -m benchmarks.guard_sweep --quick          # a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from peft_grow import GrowConfig
from peft_grow.training import RetentionGuard, self_generated_windows

from . import stories
from .guarded import wikitext_windows

WEIGHTS = (0.0, 0.3, 1.0, 3.0, 10.0)


@dataclass
class Result:
    method: str
    source: str
    weight: float
    lr: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, new loss, original loss)
    seconds: float = 0.0


def guard_text(source: str, base, tokenizer, length: int) -> torch.Tensor:
    if source == "self":
        return self_generated_windows(base, tokenizer, count=256, length=length, seed=1234)
    return wikitext_windows(tokenizer, length)


def train(result: Result, model, guard: RetentionGuard, data: stories.Data, args) -> Result:
    """The demo's training loop and data order (seed 0), the guard's term added to every step."""
    start = time.perf_counter()
    result.curve = stories.train(
        model,
        data.train,
        lambda trained: stories.evaluate(trained, data),
        lr=result.lr,
        steps=args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        eval_every=args.eval_every,
        seed=0,
        penalty=lambda trained, index: guard.penalty(trained, index)[0],
    )
    result.seconds = time.perf_counter() - start
    return result


def original_at(result: Result, level: float) -> float:
    """The original-domain loss where the new-domain loss first reaches `level`, linear between evaluations."""
    for (_, n0, o0), (_, n1, o1) in zip(result.curve, result.curve[1:], strict=False):
        if n1 <= level:
            w = 0.0 if n0 == n1 else (n0 - level) / (n0 - n1)
            return o0 + w * (o1 - o0)
    return float("nan")


def report(results: list[Result]) -> str:
    level = max(r.curve[-1][1] for r in results)  # the new-domain loss every run reaches
    base = results[0].curve[0]
    lines = [
        f"Base: new domain {base[1]:.3f}, original domain {base[2]:.3f} (loss, nats/token). "
        f"'original at equal new' is read where each run's new-domain loss first reaches {level:.3f}.",
        "",
        "| method | lr | guard text | weight | new, end | original, end | original rise, end | original at equal new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        _, new, orig = r.curve[-1]
        lines.append(
            f"| {r.method} | {r.lr:.0e} | {r.source} | {r.weight:g} | {new:.3f} | {orig:.3f} | {orig - base[2]:+.3f} "
            f"| {original_at(r, level):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3, help="the demo's rate for both methods (default 1e-3)")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--sources", nargs="+", choices=["self", "wikitext"], default=["self", "wikitext"])
    parser.add_argument("--methods", nargs="+", choices=["g-freeze", "full"], default=["g-freeze", "full"])
    parser.add_argument("--json", type=Path, help="also write every curve here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, weights 0 and 1, self text")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.weights, args.sources = 4, 2, [0.0, 1.0], ["self"]
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    tokenizer = AutoTokenizer.from_pretrained(stories.MODEL_DIR)
    base = stories.load_base()
    data = stories.load_data(tokenizer, args.seq_len)
    texts = {source: guard_text(source, base, tokenizer, args.seq_len) for source in args.sources}
    results = []
    for method in args.methods:
        for source in args.sources:
            for weight in args.weights:
                if weight == 0 and source != args.sources[0]:
                    continue  # weight 0 trains as without a guard, whatever the text
                torch.manual_seed(0)
                model = copy.deepcopy(base)
                model = get_peft_model(model, GrowConfig(k=2)) if method == "g-freeze" else model
                reference = copy.deepcopy(base) if method == "full" else None
                guard = RetentionGuard(texts[source], weight, batch_size=args.batch // 4, reference=reference)
                guard.check(model)
                result = Result(method, source if weight else "none", weight, args.lr)
                results.append(train(result, model, guard, data, args))
                print(f"{method} {result.source} w={weight:g}: {result.curve[-1]} ({result.seconds:.0f} s)", flush=True)
    text = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
