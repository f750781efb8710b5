"""Where a grown model's time goes on a GPU: wall time against GPU kernel time, side by side (docs/performance.md).

Wall times on a shared GPU machine move by 10-20% between rounds (benchmarks/speed.py reports the spread); the
time the GPU spends in kernels, read from torch.profiler, does not. This script prints both, per training step
(G-Freeze against the merged, equally wide reference, trained as in speed.py) and per decoded token (the grown
adapter unmerged, after merge_adapter(), and merged for good; new weights in the model's dtype), with the number
of kernels launched. Where wall time exceeds kernel time, the host (Python, kernel launches) is the bottleneck,
not the GPU. Wall times are medians over rounds that run every variant once, in turn, as in speed.py.

    python -m benchmarks.gpu_profile                    # Gemma3-1B shape, bf16, needs CUDA; 2 min on an H200
    python -m benchmarks.gpu_profile --setting tiny     # the same bookkeeping on CPU (CPU kernels)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from peft import get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers.utils import logging

from benchmarks import speed
from peft_grow import GrowConfig
from peft_grow.sequences import cached_forward


def kernel_time(prof, device_type: str) -> tuple[float, int]:
    """(seconds spent in kernels, kernels launched) on `device_type`, from the profiler's kernel events."""
    if device_type == "cpu":  # no separate kernel events: count the operators that run no other operator
        events = [e for e in prof.events() if e.device_type.name == "CPU" and not e.cpu_children]
        return sum(e.cpu_time_total for e in events) / 1e6, len(events)
    events = [e for e in prof.events() if e.device_type.name == device_type.upper() and e.device_time_total > 0]
    return sum(e.device_time_total for e in events) / 1e6, len(events)


def measure(runs: dict, device: torch.device, rounds: int) -> dict[str, tuple[float, float, float]]:
    """{name: (wall, kernel time, kernels)} per call of each function in `runs`: wall times are medians over
    `rounds` rounds that call every function once, in turn; kernel times and counts are means over `rounds` calls
    under the profiler."""
    walls = {name: [] for name in runs}
    for run in runs.values():
        for _ in range(3):
            run()
    for _ in range(rounds):
        for name, run in runs.items():
            speed.synchronize(device)
            start = time.perf_counter()
            run()
            speed.synchronize(device)
            walls[name].append(time.perf_counter() - start)
    results = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, run in runs.items():
        with profile(activities=activities) as prof:
            for _ in range(rounds):
                run()
            speed.synchronize(device)
        busy, kernels = kernel_time(prof, device.type)
        results[name] = (statistics.median(walls[name]), busy / rounds, kernels / rounds)
    return results


def training(base, ids, rounds: int) -> dict[str, tuple[float, float, float]]:
    variants = speed.training_variants(base)
    runs = {}
    for name in ("g-freeze", "wide-ref"):
        model = variants[name].train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        runs[name] = lambda m=model, o=optimizer: speed.train_step(m, o, ids, base.dtype)
    return measure(runs, ids.device, rounds)


@torch.no_grad()
def decoding(base, ids, rounds: int) -> dict[str, tuple[float, float, float]]:
    def grow():
        return get_peft_model(copy.deepcopy(base), GrowConfig(k=2, init_weights=False), autocast_adapter_dtype=False)

    grown, switchable, merged = grow(), grow(), grow()
    switchable.load_state_dict(grown.state_dict())
    switchable.merge_adapter()
    merged.load_state_dict(grown.state_dict())
    models = {"grown (unmerged)": grown, "grown (merge_adapter)": switchable, "merged": merged.merge_and_unload()}
    runs = {}
    for name, model in models.items():
        _, cache = cached_forward(model.eval(), input_ids=ids[:, :-1])
        runs[name] = lambda m=model, c=cache: cached_forward(m, c, input_ids=ids[:, -1:])
    return measure(runs, ids.device, rounds)


def report(title: str, results: dict[str, tuple[float, float, float]], reference: str) -> str:
    wall_ref, busy_ref, _ = results[reference]
    lines = [
        f"| {title} | wall ms | vs {reference} | kernel ms | vs {reference} | kernels |",
        "|---|---|---|---|---|---|",
    ]
    for name, (wall, busy, kernels) in results.items():
        lines.append(
            f"| {name} | {wall * 1e3:.2f} | {wall / wall_ref:.2f}x | {busy * 1e3:.2f} | {busy / busy_ref:.2f}x "
            f"| {kernels:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(speed.SETTINGS), default="gemma3-1b")
    parser.add_argument("--rounds", type=int, default=10, help="rounds timed, then calls profiled (default 10)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    base, ids = speed.build_base(args.setting)
    # Decoding first: it holds three models, training six (speed.training_variants).
    decode = decoding(base, ids, args.rounds)
    train = training(base, ids, args.rounds)
    text = "\n\n".join(
        [
            f"setting {args.setting}, device {ids.device}"
            + (f" ({torch.cuda.get_device_name(ids.device)})" if ids.is_cuda else ""),
            report("training step", train, "wide-ref"),
            report("decode, per token", decode, "merged"),
        ]
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
