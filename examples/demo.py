"""Does growing the MLPs keep what plain fine-tuning forgets? A small, offline, CPU-only demo.

The base model is Karpathy's stories260K (a 260K-parameter LLaMA trained on TinyStories), shipped in
examples/data/stories260K. Starting from it, we fine-tune on a new domain, tiny Shakespeare
(examples/data/tinyshakespeare.txt), twice, with the same steps, batch, sequence length, data order and seed:

  * full fine-tuning: every parameter is trained;
  * G-Freeze: GrowConfig(k=2, mode="freeze") widens every MLP twofold, starting from exactly the original
    function, and trains only the new rows and columns (peft_grow, arXiv 2603.08647).

Before and after, we measure the mean token loss (nats) on held-out Shakespeare (the new domain) and on
text sampled from the base model itself (examples/data/stories260K_samples.txt, made by
make_original_domain.py), which stands in for the original domain; its rise is the forgetting. Both
held-out sets are also evaluated every --eval-every steps, so that the two methods can be compared where
they reach the same new-domain loss, not only at the end.

Run from the repository root (about 1.5 minutes on 2 CPU cores; --quick takes a few seconds):

    python examples/demo.py
    python examples/demo.py --steps 200 --lr 3e-3 --seed 1
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import peft_grow  # noqa: E402, F401  (registers the GROW method with PEFT)
from peft_grow import GrowConfig  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
MODEL_DIR = DATA / "stories260K"
NEW_DOMAIN = DATA / "tinyshakespeare.txt"
ORIGINAL_DOMAIN = DATA / "stories260K_samples.txt"
BOS = 1


@dataclass
class Data:
    train: torch.Tensor  # one long stream of Shakespeare token ids
    new_heldout: torch.Tensor  # [n, seq_len] held-out Shakespeare windows
    original: list[torch.Tensor]  # held-out original-domain samples, each starting with <s>


@dataclass
class Result:
    name: str
    trainable: int
    lr: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, new loss, original loss)
    seconds: float = 0.0


def load_data(tokenizer, seq_len: int, heldout_share: float) -> Data:
    """Split Shakespeare by position (the last `heldout_share` is held out); the samples are all held out."""
    ids = torch.tensor([BOS] + tokenizer(NEW_DOMAIN.read_text(encoding="utf-8"))["input_ids"])
    cut = int(len(ids) * (1 - heldout_share))
    heldout = ids[cut:]
    heldout = heldout[: len(heldout) // seq_len * seq_len].view(-1, seq_len)
    samples = ORIGINAL_DOMAIN.read_text(encoding="utf-8").strip().split("\n\n")
    original = [torch.tensor([BOS] + tokenizer(s)["input_ids"]) for s in samples]
    return Data(train=ids[:cut], new_heldout=heldout, original=original)


def load_base():
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)


@torch.no_grad()
def mean_token_loss(model, sequences, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over all predicted tokens of `sequences` (right-padded)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch_size):
        batch = list(sequences[i : i + batch_size])
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, s in enumerate(batch):
            ids[row, : len(s)], mask[row, : len(s)] = s, 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        total, count = total + loss.item(), count + int((targets != -100).sum())
    model.train()
    return total / count


def evaluate(model, data: Data) -> tuple[float, float]:
    return mean_token_loss(model, data.new_heldout), mean_token_loss(model, data.original)


def train(name: str, model, data: Data, args, lr: float) -> Result:
    """AdamW at a constant learning rate on random Shakespeare windows; the same windows for every method."""
    params = [p for p in model.parameters() if p.requires_grad]
    result = Result(name=name, trainable=sum(p.numel() for p in params), lr=lr)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    windows = torch.Generator().manual_seed(args.seed)  # same data order for every method
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result.curve.append((0, *evaluate(model, data)))
    model.train()
    bar = tqdm(range(1, args.steps + 1), desc=f"{name:>9}", leave=False, mininterval=1.0)
    for step in bar:
        starts = torch.randint(0, len(data.train) - args.seq_len - 1, (args.batch,), generator=windows)
        batch = torch.stack([data.train[s : s + args.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            result.curve.append((step, *evaluate(model, data)))
    result.seconds = time.perf_counter() - start
    return result


def original_at(result: Result, new_loss: float) -> tuple[float, int] | None:
    """The original-domain loss where `result` first reaches `new_loss` on the new domain (linear between evals)."""
    for (s0, n0, o0), (s1, n1, o1) in zip(result.curve, result.curve[1:]):
        if n1 <= new_loss <= n0 and n0 > n1:
            t = (n0 - new_loss) / (n0 - n1)
            return o0 + t * (o1 - o0), round(s0 + t * (s1 - s0))
    return None


def report(results: list[Result], base_params: int, data: Data, args) -> None:
    before_new, before_orig = results[0].curve[0][1:]
    new_tokens = data.new_heldout.numel() - len(data.new_heldout)
    orig_tokens = sum(len(s) - 1 for s in data.original)
    print(f"\nHeld-out mean token loss (nats): new domain = tiny Shakespeare ({new_tokens:,} tokens), "
          f"original domain = samples of the base model ({len(data.original)} samples, {orig_tokens:,} tokens).")
    print(f"{args.steps} steps x batch {args.batch} x {args.seq_len} tokens, AdamW, seed {args.seed}.\n")
    header = (f"{'method':<10} {'lr':>7} {'trainable params':>22}   {'new domain':>15}   "
              f"{'original domain':>15} {'change':>7}   {'time':>5}")
    print(header)
    print("-" * len(header))
    for r in results:
        _, new, orig = r.curve[-1]
        share = f"{r.trainable:,} ({r.trainable / base_params:.0%})"
        print(f"{r.name:<10} {r.lr:>7.0e} {share:>22}   {before_new:6.3f} -> {new:5.3f}   "
              f"{before_orig:6.3f} -> {orig:5.3f} {orig - before_orig:+7.3f}   {r.seconds:4.0f}s")

    print("\nLearning curves (held-out loss every", args.eval_every, "steps: new domain / original domain):")
    for r in results:
        points = "  ".join(f"{s}: {n:.2f}/{o:.2f}" for s, n, o in r.curve)
        print(f"  {r.name:<10} {points}")

    # At equal new-domain loss: the less-trained method's final new-domain loss, read off the other's curve.
    full, grow = results
    target = max(full.curve[-1][1], grow.curve[-1][1])
    print(f"\nAt the same new-domain loss ({target:.3f}, the higher of the two final ones):")
    for r in results:
        hit = original_at(r, target)
        if hit is None:
            print(f"  {r.name:<10} does not reach it")
        else:
            orig, step = hit
            print(f"  {r.name:<10} original-domain loss {orig:.3f} ({orig - before_orig:+.3f}), at about step {step}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per method (default 300)")
    parser.add_argument("--lr", type=float, default=None, help="one learning rate for both methods")
    parser.add_argument("--lr-full", type=float, default=1e-3, help="learning rate of full fine-tuning")
    parser.add_argument("--lr-grow", type=float, default=1e-3, help="learning rate of G-Freeze")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--k", type=int, default=2, help="growth factor of G-Freeze (default 2)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layers to grow (default: all)")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, evaluation every 10")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every = 20, 10
    if args.lr is not None:
        args.lr_full = args.lr_grow = args.lr

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    data = load_data(tokenizer, args.seq_len, heldout_share=0.1)
    base_params = sum(p.numel() for p in load_base().parameters())

    results = [train("full FT", load_base(), data, args, args.lr_full)]
    grown = get_peft_model(load_base(), GrowConfig(layers=args.layers, k=args.k, mode="freeze"))
    results.append(train("G-Freeze", grown, data, args, args.lr_grow))
    report(results, base_params, data, args)


if __name__ == "__main__":
    main()
