"""Pilot ranking (the paper's) against the cheaper gradient ranking, on the real stories260K model fine-tuned on
tiny Shakespeare (the demo's material): both rankings, their Spearman correlation and top-N overlap, over seeds.

    python -m benchmarks.layer_selection      # about half a minute on 2 CPU cores
"""

import argparse
import warnings

import torch
from transformers import AutoTokenizer
from transformers.utils import logging

from peft_grow.analysis.selection import gradient_ranking, pilot_ranking, rank_agreement
from peft_grow.sequences import token_windows

from . import stories  # the demo's data loading: same model, same split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pilot-steps", type=int, default=30)
    parser.add_argument("--gradient-batches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    data = stories.load_data(AutoTokenizer.from_pretrained(stories.MODEL_DIR), seq_len=128)
    train = token_windows(data.train, 128)
    print(
        f"stories260K on tiny Shakespeare: pilot {args.pilot_steps} AdamW steps (lr {args.lr}, batch 16) against "
        f"gradients over {args.gradient_batches} batches; top {args.top} of 5 layers\n"
    )
    print("| seed | pilot ranking | gradient ranking (statistic) | Spearman | top-N overlap |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=generator)
        batches = [
            {"input_ids": train[order[i * 16 : (i + 1) * 16]], "labels": train[order[i * 16 : (i + 1) * 16]]}
            for i in range(max(args.pilot_steps, args.gradient_batches))
        ]
        model = stories.load_base()
        torch.manual_seed(seed)
        pilot = pilot_ranking(model, batches[: args.pilot_steps], steps=args.pilot_steps, lr=args.lr)
        show = lambda scores: ", ".join(str(i) for _, i in scores.ranked())  # noqa: E731
        for statistic in ("adam", "norm"):
            gradient = gradient_ranking(model, batches[: args.gradient_batches], statistic=statistic)
            correlation, overlap = rank_agreement(pilot, gradient, args.top)
            print(f"| {seed} | {show(pilot)} | {statistic}: {show(gradient)} | {correlation:+.2f} | {overlap:.0%} |")


if __name__ == "__main__":
    main()
