"""The paper's Figure 5 on our material: effective rank of the up-projection update per layer over a plain
fine-tune of the real stories260K model on tiny Shakespeare (the demo's data). Writes docs/update_ranks.png.

    python -m benchmarks.update_ranks        # about 20 s on 2 CPU cores
"""

import argparse
import warnings
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import logging

from peft_grow.analysis import UpdateRankRecorder
from peft_grow.sequences import token_windows

from . import stories  # the demo's data loading: same model, same split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "update_ranks.png")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    torch.manual_seed(0)
    data = stories.load_data(AutoTokenizer.from_pretrained(stories.MODEL_DIR), seq_len=128)
    train = token_windows(data.train, 128)
    model = stories.load_base().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    recorder = UpdateRankRecorder()
    recorder.record(model, 0)
    for step in range(1, args.steps + 1):
        batch = train[torch.randint(len(train), (16,))]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.every == 0:
            recorder.record(model, step)
    recorder.plot(args.out, title="stories260K -> Shakespeare: effective rank of the up update")
    print(f"wrote {args.out}\n\n| step | " + " | ".join(f"layer {label}" for label in recorder.labels()) + " |")
    print("|---|" + "---|" * len(recorder.layers))
    for step, row in zip(recorder.steps, recorder.ranks, strict=True):
        print(f"| {step} | " + " | ".join(f"{rank:.1f}" for rank in row) + " |")


if __name__ == "__main__":
    main()
