"""What growth's self-check (GrowConfig.check_function, peft_grow/checking.py) costs at injection.

Builds a randomly initialised model of Gemma3-1B's published shape (hidden 1152, MLP 6912, 26 layers, vocabulary
262,144) in bfloat16 (or --dtype float32) on the CPU and times get_peft_model(GrowConfig(k=2)) with the check on
and off, side by side (--repeats rounds, each on a fresh copy of the base), and prints the ratio.

    python benchmarks/check_cost.py                 # a few minutes on 2 CPU cores, 6 GB of memory
    python benchmarks/check_cost.py --layers 4      # a smaller stack
"""

import argparse
import copy
import statistics
import time
import warnings

import torch
from peft import get_peft_model
from speed import SETTINGS  # benchmarks/speed.py, beside this script
from transformers import AutoConfig, AutoModelForCausalLM

from peft_grow import GrowConfig

GEMMA3_1B = SETTINGS["gemma3-1b"][1]  # the speed benchmark's Gemma3-1B shape


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=26, help="decoder layers (default 26, as Gemma3-1B)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both timings (default 3)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="(default bfloat16)")
    args = parser.parse_args()
    config = AutoConfig.for_model("gemma3_text", **(GEMMA3_1B | {"num_hidden_layers": args.layers}))
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
    print(
        f"Gemma3-1B shape, {args.layers} layers, {params / 1e9:.2f}B parameters, {args.dtype}, CPU "
        f"({torch.get_num_threads()} threads); medians of {args.repeats} rounds:"
    )
    print(
        f"get_peft_model with the check {on:.2f} s, without {off:.2f} s: the check adds {on - off:.2f} s "
        f"({on / off:.2f}x)"
    )


if __name__ == "__main__":
    main()
