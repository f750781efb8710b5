"""Sample the "original domain" text of the demo from the base model itself.

stories260K was trained on TinyStories, which is not shipped with this repository. Text sampled from the
model at temperature 1 (no top-k, no top-p) follows the model's own distribution and stands in for its
original domain when the demo measures forgetting. The output is committed as data
(examples/data/stories260K_samples.txt); this script documents how it was made and regenerates it.

Each sample starts from <s> (id 1) and runs until the model emits <s> or </s> or reaches --max-new-tokens.
Samples are written one after another, separated by a blank line (blank lines inside a sample are
collapsed, so a blank line always ends a sample).

Run from the repository root (offline, CPU, about 15 seconds on 2 cores):

    python examples/make_original_domain.py                # the committed file: 300 samples, seed 0
    python examples/make_original_domain.py --samples 50 --out /tmp/samples.txt
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "data" / "stories260K"
BOS, EOS = 1, 2


@torch.no_grad()
def sample(model, n: int, max_new_tokens: int, temperature: float, generator: torch.Generator) -> list[list[int]]:
    """Draw n sequences from <s> at the given temperature with a KV cache; return their token ids (no <s>)."""
    ids = torch.full((n, 1), BOS, dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    tokens, done = [], torch.zeros(n, dtype=torch.bool)
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        done |= (nxt == BOS) | (nxt == EOS)
        tokens.append(torch.where(done, torch.full_like(nxt, EOS), nxt))
        if done.all():
            break
        out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    rows = torch.stack(tokens, dim=1).tolist()
    return [row[: row.index(EOS)] if EOS in row else row for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="number of samples (default 300)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per sample at most (default 256)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=HERE / "data" / "stories260K_samples.txt", help="output file")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)

    rows = sample(model, args.samples, args.max_new_tokens, args.temperature, generator)
    texts = [re.sub(r"\n\s*\n+", "\n", tokenizer.decode(row)).strip() for row in rows]
    args.out.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    ended = sum(len(row) < args.max_new_tokens for row in rows)
    print(
        f"wrote {len(texts)} samples ({ended} ended before {args.max_new_tokens} tokens), "
        f"{args.out.stat().st_size:,} bytes, to {args.out}"
    )


if __name__ == "__main__":
    main()
