"""When unmerged inference should write the up-side blocks in place instead of concatenating them.

IN_PLACE_MIN_ROWS in peft_grow/tuner/_fast_paths.py is the fewest rows (tokens in one forward) for which the grown
up-side projections write their original and new blocks into one preallocated output. Writing in place saves copying the
wide activation but makes more operator calls; which wins depends on the number of rows. This script times both
paths on the same grown model, side by side, against the merged model, on the CPU setting of speed.py: decoding
(one token per sequence after a prefilled prompt, as speed.py decodes) for several batch sizes, and forward passes
over several token counts. In each round every path runs once, in turn; ratios are medians of per-round ratios.

    python -m benchmarks.in_place_rows                       # about 3 minutes on 2 cores
    python -m benchmarks.in_place_rows --setting tiny --rounds 2 --batches 2 --tokens 16   # bookkeeping only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from peft import get_peft_model
from transformers.utils import logging

import peft_grow.tuner._fast_paths as fast_paths
from benchmarks import speed
from peft_grow import GrowConfig
from peft_grow.sequences import cached_forward

PATHS = {"concatenate": 2**62, "in place": 1}  # the IN_PLACE_MIN_ROWS that forces each path


@torch.no_grad()
def decode_step(model, ids: torch.Tensor, tokens: int) -> float:
    """Seconds per decoded token, after prefilling all but the last position of `ids`."""
    _, cache = cached_forward(model, input_ids=ids[:, :-1])
    token = ids[:, -1:]
    start = time.perf_counter()
    for _ in range(tokens):
        out, cache = cached_forward(model, cache, input_ids=token)
        token = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / tokens


@torch.no_grad()
def forward_pass(model, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - start


def compare(grown, merged, run, rounds: int) -> dict[str, float]:
    """{path: median over rounds of its time / the merged model's time}, each round running every path once."""
    times = {name: [] for name in [*PATHS, "merged"]}
    default = fast_paths.IN_PLACE_MIN_ROWS
    try:
        for _ in range(rounds + 1):  # the first round warms up
            for name in times:
                fast_paths.IN_PLACE_MIN_ROWS = PATHS.get(name, default)
                times[name].append(run(merged if name == "merged" else grown))
    finally:
        fast_paths.IN_PLACE_MIN_ROWS = default
    reference = times["merged"][1:]
    return {name: statistics.median(a / b for a, b in zip(times[name][1:], reference, strict=True)) for name in PATHS}


def row(label: str, rows: int, ratios: dict[str, float]) -> str:
    return f"| {label} | {rows} | {ratios['concatenate']:.3f}x | {ratios['in place']:.3f}x |"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(speed.SETTINGS), default="cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64], help="decode batch sizes")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length before decoding (default 128)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 256, 1024, 2048], help="forward sizes")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    base, ids = speed.build_base(args.setting)
    vocab, device = base.config.vocab_size, ids.device
    grown = get_peft_model(copy.deepcopy(base), GrowConfig(k=2, init_weights=False), autocast_adapter_dtype=False)
    merged = copy.deepcopy(grown).merge_and_unload().eval()
    grown.eval()
    lines = [
        f"setting {args.setting}, IN_PLACE_MIN_ROWS = {fast_paths.IN_PLACE_MIN_ROWS}, {args.rounds} rounds",
        "",
        "| run | rows per forward | concatenate vs merged | in place vs merged |",
        "|---|---|---|---|",
    ]
    for batch in args.batches:
        prompt = torch.randint(0, vocab, (batch, args.prompt), device=device)
        ratios = compare(grown, merged, lambda model, ids=prompt: decode_step(model, ids, tokens=16), args.rounds)
        sequences = f"{batch} sequence" + ("s" if batch > 1 else "")
        lines.append(row(f"decode, {sequences} after {args.prompt} tokens", batch, ratios))
    for tokens in args.tokens:
        batch = max(1, tokens // 128)
        prompt = torch.randint(0, vocab, (batch, tokens // batch), device=device)
        ratios = compare(grown, merged, lambda model, ids=prompt: forward_pass(model, ids), args.rounds)
        lines.append(row(f"forward, {batch} x {tokens // batch} tokens", tokens, ratios))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
