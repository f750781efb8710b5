"""Does growing the MLPs keep what plain fine-tuning forgets? A small, offline, CPU-only demo.

The base model is Karpathy's stories260K (a 260K-parameter LLaMA trained on TinyStories), shipped in
examples/data/stories260K. Starting from it, we fine-tune on a new domain, tiny Shakespeare
(examples/data/tinyshakespeare.txt), with the same steps, batch, sequence length, data order and seed:

  * full FT: full fine-tuning, every parameter is trained, at the learning rate --lr;
  * full FT (control): the same at the lower rate --control-lr, a gentler full fine-tuning;
  * G-Freeze: GrowConfig(k=2, mode="freeze") widens every MLP twofold, starting from exactly the original
    function, and trains only the new rows and columns (peft_grow, arXiv 2603.08647), at --lr.

We measure the mean token loss (nats) on held-out Shakespeare (the new domain) and on text sampled from
the base model itself (examples/data/stories260K_samples.txt, made by make_original_domain.py), which
stands in for the original domain: its rise is the forgetting. Both are evaluated every --eval-every steps,
so that the methods are also compared where they reach the same new-domain loss, not only at the end: a
method that forgets less only because it learns less is no better.

How the learning rates were chosen: in a sweep over 1e-4, 2e-4, 3e-4, 1e-3, 3e-3 and 1e-2 at 150 steps
(seed 0, and 1e-4 to 3e-3 again at seed 1), 1e-3 gave full FT its lowest held-out new-domain loss; for
G-Freeze 1e-3 and 3e-3 came within 0.015 of each other (1e-3 lowest at seed 0, 3e-3 at seed 1), so both use
1e-3. The control, 3e-4, is the next lower rate of that grid.

Run from the repository root (about 1.5 minutes on 2 CPU cores; --quick takes about 30 seconds):

    python examples/demo.py
    python examples/demo.py --steps 200 --lr 3e-4 --control-lr 1e-4 --seed 1
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import peft_grow  # noqa: E402, F401  (importing it registers the GROW method with PEFT)
from peft_grow import GrowConfig  # noqa: E402
from peft_grow.sequences import mean_token_loss, token_windows  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
MODEL_DIR = DATA / "stories260K"
NEW_DOMAIN = DATA / "tinyshakespeare.txt"
ORIGINAL_DOMAIN = DATA / "stories260K_samples.txt"
BOS = 1


@dataclass
class Data:
    train: torch.Tensor  # one stream of Shakespeare token ids
    new_heldout: torch.Tensor  # [n, seq_len] windows of held-out Shakespeare
    original: torch.Tensor  # [n, seq_len] windows of the original-domain samples, each sample after a <s>
    samples: int  # how many original-domain samples those windows hold


@dataclass
class Run:
    name: str
    lr: float
    trainable: int = 0
    total: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, new loss, original loss)


def load_data(tokenizer, seq_len: int, heldout_share: float = 0.1) -> Data:
    """Split Shakespeare by position (its last `heldout_share` is held out); the samples are all held out.

    The original-domain samples are packed the way llama2.c trained the model on TinyStories: one stream,
    each sample preceded by <s>.
    """
    ids = torch.tensor([BOS] + tokenizer(NEW_DOMAIN.read_text(encoding="utf-8"))["input_ids"])
    cut = int(len(ids) * (1 - heldout_share))
    samples = ORIGINAL_DOMAIN.read_text(encoding="utf-8").strip().split("\n\n")
    original = torch.tensor([t for s in samples for t in [BOS] + tokenizer(s)["input_ids"]])
    return Data(
        train=ids[:cut],
        new_heldout=token_windows(ids[cut:], seq_len),
        original=token_windows(original, seq_len),
        samples=len(samples),
    )


def load_base():
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)


def evaluate(model, data: Data) -> tuple[float, float]:
    return mean_token_loss(model, data.new_heldout), mean_token_loss(model, data.original)


def train(run: Run, model, data: Data, args) -> Run:
    """AdamW at a constant learning rate on random Shakespeare windows, the same windows for every run."""
    params = [p for p in model.parameters() if p.requires_grad]
    run.trainable = sum(p.numel() for p in params)
    run.total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.0)
    torch.manual_seed(args.seed)
    order = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    run.curve.append((0, *evaluate(model, data)))
    model.train()
    for step in tqdm(range(1, args.steps + 1), desc=f"{run.name:>17}", leave=False, mininterval=1.0):
        starts = torch.randint(0, len(data.train) - args.seq_len, (args.batch,), generator=order).tolist()
        batch = torch.stack([data.train[s : s + args.seq_len] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            run.curve.append((step, *evaluate(model, data)))
    run.seconds = time.perf_counter() - start
    return run


def original_at(run: Run, new_loss: float) -> float | None:
    """The original-domain loss where `run` first reaches `new_loss` on the new domain (linear between evals)."""
    for (_, n0, o0), (_, n1, o1) in pairwise(run.curve):
        if n1 <= new_loss <= n0 and n1 < n0:
            return o0 + (n0 - new_loss) / (n0 - n1) * (o1 - o0)
    return None


def report(runs: list[Run], base_params: int, data: Data, args) -> None:
    print(
        f"\nMean token loss (nats) on held-out text: new domain = tiny Shakespeare ({data.new_heldout.numel():,} "
        f"tokens), original domain = {data.samples} samples of the base model ({data.original.numel():,} tokens)."
    )
    print(f"Each run: {args.steps} steps x {args.batch} sequences x {args.seq_len} tokens, AdamW, seed {args.seed}.\n")
    header = (
        f"{'method':<17} {'lr':>7} {'trainable params':>17}   {'new domain':>14}   "
        f"{'original domain':>15} {'change':>7} {'time':>6}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        (_, new0, orig0), (_, new, orig) = run.curve[0], run.curve[-1]
        share = f"{run.trainable:,} ({run.trainable / base_params:.0%})"
        print(
            f"{run.name:<17} {run.lr:>7.0e} {share:>17}   {new0:5.3f} -> {new:5.3f}   "
            f"{orig0:6.3f} -> {orig:5.3f} {orig - orig0:+7.3f} {run.seconds:5.0f}s"
        )
    added = runs[-1].total - base_params
    print(f"(share of the base model's {base_params:,} parameters; G-Freeze adds {added:,} new ones, all trained)")

    print(f"\nHeld-out loss every {args.eval_every} steps (step: new domain / original domain):")
    for run in runs:
        print(f"  {run.name:<17} " + "  ".join(f"{s}: {n:.2f}/{o:.2f}" for s, n, o in run.curve))

    grow = runs[-1]
    print("\nAt the same new-domain loss (the higher of the two final ones), read off the curves above:")
    for full in runs[:-1]:
        target = max(full.curve[-1][1], grow.curve[-1][1])
        orig_full, orig_grow = original_at(full, target), original_at(grow, target)
        if orig_full is None or orig_grow is None:
            print(f"  {full.name} vs G-Freeze: no common new-domain loss on the curves")
            continue
        print(
            f"  new-domain loss {target:.3f}: {full.name} original-domain loss {orig_full:.3f}, "
            f"G-Freeze {orig_grow:.3f} (G-Freeze {orig_grow - orig_full:+.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of full FT and G-Freeze (1e-3)")
    parser.add_argument(
        "--control-lr", type=float, default=3e-4, help="learning rate of the full FT control (3e-4); 0 skips it"
    )
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layers G-Freeze grows (default: all)")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, evaluation every 10")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every = 20, 10

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(args.seed)

    data = load_data(AutoTokenizer.from_pretrained(MODEL_DIR), args.seq_len)
    base_params = sum(p.numel() for p in load_base().parameters())

    runs = [train(Run("full FT", args.lr), load_base(), data, args)]
    if args.control_lr > 0:
        runs.append(train(Run("full FT (control)", args.control_lr), load_base(), data, args))
    grown = get_peft_model(load_base(), GrowConfig(layers=args.layers, k=2, mode="freeze"))
    runs.append(train(Run("G-Freeze", args.lr), grown, data, args))
    report(runs, base_params, data, args)


if __name__ == "__main__":
    main()
