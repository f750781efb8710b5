"""What growth's self-check (GrowConfig.check_function, peft_grow/tuner/checking.py) costs at injection.

Builds a randomly initialised model of Gemma3-1B's published shape (hidden 1152, MLP 6912, 26 layers, vocabulary
262,144), or with --shape olmoe of OLMoE-1B-7B's (hidden 2048, 64 experts of width 1024 in each of 16 layers,
vocabulary 50,304), in bfloat16 (or --dtype float32) on the CPU and times get_peft_model(GrowConfig(k=2)) with
the check on and off, side by side (--repeats rounds, each on a fresh copy of the base), and prints the ratio and
the time of the check's whole-model part (a forward of the model on a few tokens) alone.

    python -m benchmarks.check_cost                         # a few minutes on 2 CPU cores, 6 GB of memory
    python -m benchmarks.check_cost --layers 4              # a smaller stack
    python -m benchmarks.check_cost --shape olmoe --layers 2  # experts: 0.8 GB of bfloat16 weights per layer
"""

import argparse
import copy
import statistics
import time
import warnings

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from peft_grow import GrowConfig, find_mlps
from peft_grow.testing import GEMMA3_1B
from peft_grow.tuner.checking import check_in_the_model

OLMOE_1B_7B = dict(
    hidden_size=2048,
    intermediate_size=1024,
    num_experts=64,
    num_experts_per_tok=8,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=50304,
)
SHAPES = {"gemma3-1b": ("gemma3_text", GEMMA3_1B, "Gemma3-1B"), "olmoe": ("olmoe", OLMOE_1B_7B, "OLMoE-1B-7B")}


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gemma3-1b", choices=sorted(SHAPES), help="(default gemma3-1b)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the model's, 26 or 16)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both timings (default 3)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="(default bfloat16)")
    args = parser.parse_args()
    model_type, shape, label = SHAPES[args.shape]
    layers = args.layers or shape["num_hidden_layers"]
    config = AutoConfig.for_model(model_type, **(shape | {"num_hidden_layers": layers}))
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).eval()
    params = sum(p.numel() for p in base.parameters())
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for check in (True, False):
            model = copy.deepcopy(base)
            start = time.perf_counter()
            get_peft_model(model, GrowConfig(k=2, check_function=check))
            times[check].append(time.perf_counter() - start)
            del model
    on, off = statistics.median(times[True]), statistics.median(times[False])
    whole = statistics.median(_whole_model_check(base) for _ in range(args.repeats))
    print(
        f"{label} shape, {layers} layers, {params / 1e9:.2f}B parameters, {args.dtype}, CPU "
        f"({torch.get_num_threads()} threads); medians of {args.repeats} rounds:"
    )
    print(
        f"get_peft_model with the check {on:.2f} s, without {off:.2f} s: the check adds {on - off:.2f} s "
        f"({on / off:.2f}x), of which {whole:.2f} s the whole-model check (one forward of a few tokens)"
    )


def _whole_model_check(base: torch.nn.Module) -> float:
    """Seconds of the check's whole-model part alone: one forward that records which grown modules a text input
    reaches (peft_grow.tuner.checking.check_in_the_model; a second, grown, forward runs only for MLPs the per-MLP
    check cannot run on a bare tensor, none here)."""
    config = GrowConfig(k=2)
    mlps = find_mlps(base)
    start = time.perf_counter()
    check_in_the_model(base, mlps, config, unchecked=[])  # the per-MLP check runs every MLP of these models
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
