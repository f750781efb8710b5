"""The fine-tuning methods the benchmarks compare, and how their results are set side by side.

One table (METHODS) says how each method turns a copy of the base model into the model to train; a benchmark
picks its line-up from it, with its own names, labels and learning-rate grids where it has them
(benchmarks/forgetting.py, benchmarks/real_models_training.py, benchmarks/real_models_report.py). Beside it:
LoRA's configuration, trainable-parameter counts, the LoRA rank matched to G-Freeze, Pareto fronts and tables.

A method's `build(base, context)` reads what the benchmark computed first from `context`: `layers` (the pilot
ranking's top layers), `lora_rank` (matched_lora_rank) and `rankings` (every layer, best first, per ranking).
Beyond the table, `method("g-freeze-<ranking>-<N>")` is G-Freeze on the top N layers of the pilot, proxy or random
ranking: the layer counts of the paper's Figure 4.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from peft_grow import GrowConfig

Build = Callable[[torch.nn.Module, dict], torch.nn.Module]


@dataclass(frozen=True)
class Method:
    label: str
    build: Build
    lrs: tuple[float, ...] = ()  # the learning-rate grid, where a benchmark sweeps one


def lora(rank: int) -> LoraConfig:
    # alpha = 2r, a common default; the learning-rate sweep absorbs the rest of the scale
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")


def lora_at(rank: int) -> Build:
    """LoRA on every linear layer at a fixed rank."""
    return lambda base, ctx: get_peft_model(base, lora(rank))


METHODS = {
    "full": Method("full FT", lambda base, ctx: base),
    "lora-r16": Method("LoRA r=16", lora_at(16)),
    "lora-matched": Method("LoRA (matched)", lambda base, ctx: get_peft_model(base, lora(ctx["lora_rank"]))),
    "g-freeze": Method("G-Freeze all", lambda base, ctx: get_peft_model(base, GrowConfig(k=2))),
    "g-freeze-top": Method(
        "G-Freeze top third", lambda base, ctx: get_peft_model(base, GrowConfig(layers=ctx["layers"], k=2))
    ),
    "g-train": Method("G-Train all", lambda base, ctx: get_peft_model(base, GrowConfig(k=2, mode="train"))),
    "g-train-noise": Method(
        "G-Train + noise",
        lambda base, ctx: get_peft_model(base, GrowConfig(k=2, mode="train", symmetry_noise=0.5)),
    ),
    "zero-init": Method(
        "zero-init growth", lambda base, ctx: get_peft_model(base, GrowConfig(k=2, mode="freeze", init="zero"))
    ),
}
# G-Freeze on every layer, trained by TRL's SDFTTrainer instead of a benchmark's own loop (real_models_sdft.py)
METHODS["sdft"] = Method("SDFT (G-Freeze all)", METHODS["g-freeze"].build)


LAYER_RANKINGS = ("pilot", "proxy", "random")  # the paper's pilot run, the gradient proxy, a fixed random order
_LAYER_COUNT = re.compile(rf"g-freeze-({'|'.join(LAYER_RANKINGS)})-([1-9][0-9]*)")


def layer_count(name: str) -> tuple[str, int] | None:
    """(ranking, N) of a layer-count method's name (`g-freeze-proxy-3`), None for any other name."""
    found = _LAYER_COUNT.fullmatch(name)
    return (found[1], int(found[2])) if found else None


def method(name: str) -> Method:
    """METHODS[name], or for `g-freeze-<ranking>-<N>` G-Freeze on the top N layers of that ranking."""
    if name in METHODS:
        return METHODS[name]
    if (count := layer_count(name)) is None:
        raise KeyError(
            f"unknown method {name!r}: expected one of {', '.join(METHODS)} or g-freeze-<ranking>-<N> with ranking "
            f"one of {', '.join(LAYER_RANKINGS)} (e.g. g-freeze-pilot-3)"
        )
    ranking, n = count

    def build(base: torch.nn.Module, ctx: dict) -> torch.nn.Module:
        order = ctx["rankings"][ranking]
        if n > len(order):
            raise ValueError(f"{name} grows {n} layers, but the model has {len(order)}; use N of at most {len(order)}.")
        return get_peft_model(base, GrowConfig(layers=sorted(order[:n]), k=2))

    return Method(f"G-Freeze {n} layers ({ranking})", build)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_lora_rank(base: torch.nn.Module) -> int:
    """The LoRA rank whose trainable-parameter count is closest to G-Freeze on every layer (LoRA's count is linear
    in the rank)."""
    target = trainable(METHODS["g-freeze"].build(copy.deepcopy(base), {}))
    per_rank = trainable(get_peft_model(copy.deepcopy(base), lora(1)))
    return max(1, round(target / per_rank))


def pareto_front(items: Sequence, key: Callable = lambda item: item) -> list:
    """The items no other item beats on both of `key`'s two values (lower is better on both), sorted by the
    first; of items with equal values, the first."""
    front, best = [], float("inf")
    for item in sorted(items, key=key):
        if key(item)[1] < best:
            front.append(item)
            best = key(item)[1]
    return front


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns for a terminal: the first left, the others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])
