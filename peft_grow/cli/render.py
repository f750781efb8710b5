"""What the `peft-grow` commands print: rich tables and the formatting of counts, sizes and shares.

Every `print_*` function takes what a command computed and a console (`make_console()`), and only prints; the
commands and their error handling are in `app.py`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from ..io.inspection import format_indices
from ..tuner.architectures import split_module_name
from ..tuner.merged import SHAPES_KEY

if TYPE_CHECKING:
    from torch import nn

    from ..analysis.function_vectors import FunctionVectorResult
    from ..analysis.planning import PlanCosts
    from ..analysis.selection import LayerScores
    from ..io.inspection import AdapterReport

# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------


def make_console() -> Console:
    """A console on stdout: the terminal's width, or 120 columns when piped, so that tables stay on one line."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120)
    return console


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int) -> str:
    """A parameter count in short form: 621.1 M, 1.00 B, 30.7 K."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.2f} {unit}" if unit == "B" else f"{count / size:.1f} {unit}"
    return str(count)


def format_share(share: float) -> str:
    return f"{share:.1%}" if share >= 0.001 else f"{share:.3%}"


def bullets(lines: list[str] | tuple[str, ...], bullet: str = "-") -> Table:
    """A bulleted list whose wrapped lines stay indented under their text."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=len(bullet) + 1, justify="right")
    grid.add_column()
    for line in lines:
        grid.add_row(bullet, Text(line))
    return grid


def key_values(rows: list[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(Text(key), Text(value))
    return grid


def columns_table(columns: Iterable[tuple[str, str]]) -> Table:
    """A borderless table with a bold header; `columns` are (header, justify) pairs."""
    table = Table(box=None, pad_edge=False, padding=(0, 2), header_style="bold")
    for column, justify in columns:
        table.add_column(column, justify=justify)
    return table


def plural(count: int) -> str:
    return "s" if count != 1 else ""


def step_progress() -> Progress:
    """'[1/3] ━━━━ what is being done' on stderr, shown on a terminal only (so that piped stderr holds just the
    errors) and cleared when done."""
    stderr = Console(stderr=True)
    return Progress(
        TextColumn("[{task.completed}/{task.total}]"),
        BarColumn(),
        TextColumn("{task.description}"),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


# ---------------------------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------------------------

_METHOD_TEXT = {
    ("freeze", "copy"): "trains only the new rows and columns; every original weight is frozen",
    ("freeze", "zero"): "the Appendix C.2 baseline; trains only the new rows and columns",
    ("train", "copy"): "trains the whole up side (a delta on the original rows plus the copies); the down "
    "projection is frozen",
    ("train", "zero"): "the Appendix C.2 baseline; trains the whole up side and the new down columns",
}


def print_plan(costs: PlanCosts, console: Console) -> None:
    console.print(
        Text(
            f"peft-grow plan: {costs.source} ({costs.model_type}, {costs.model_class}), built on the meta device; "
            "no weights read."
        )
    )
    console.print()
    console.print(key_values(_plan_summary(costs)))
    console.print()
    console.print(
        Text(
            f"Training memory, base in {costs.dtype}, AdamW (weights, gradients and optimizer state only; "
            "activations not included):"
        )
    )
    console.print(_memory_table(costs))
    console.print()
    console.print(bullets([_lora_note(costs), *costs.notes], bullet="*"))
    console.print(Text("Assumptions:"))
    console.print(bullets(costs.assumptions))


def _plan_summary(costs: PlanCosts) -> list[tuple[str, str]]:
    """The rows above the memory table: the base model, what is grown, and how many parameters that adds."""
    train_note = " (the delta on the original up rows included)" if costs.mode == "train" else ""
    return [
        ("base model", f"{costs.base_params:,} parameters ({format_count(costs.base_params)})"),
        ("grown", f"{costs.grown_mlps} MLP{plural(costs.grown_mlps)}: {_grown_layers(costs)}"),
        ("MLP", _mlp_shapes(costs)),
        ("method", f"{costs.grow.name}: {_METHOD_TEXT[(costs.mode, costs.init)]}"),
        ("added", f"{costs.added_params:,} parameters{train_note}"),
        (
            "trainable",
            f"{costs.trainable_params:,} parameters = {format_share(costs.trainable_share)} of the base "
            "model (as the paper counts)",
        ),
    ]


def _grown_layers(costs: PlanCosts) -> str:
    """'3 of 30 layers of model.layers (0-2)', per layer stack."""
    return "; ".join(
        f"{len(indices)} of {costs.stack_sizes[stack]} layers of {stack} ({format_indices(indices)})"
        for stack, indices in costs.grown_layers.items()
    )


def _mlp_shapes(costs: PlanCosts) -> str:
    """'hidden 576, width 1,536 -> 3,072', per distinct MLP shape (experts and fused up sides said so)."""
    return "; ".join(
        (f"{e:,} experts, each " if e else "")
        + f"hidden {h:,}, width {p:,} -> {costs.k * p:,}"
        + (f" (fused up side of {c} projections)" if c > 1 else "")
        for h, p, c, e in costs.mlp_shapes
    )


def _memory_table(costs: PlanCosts) -> Table:
    """One row per method: trainable parameters and the bytes of weights, gradients and AdamW state."""
    headers = ("trainable", "of base", "weights", "gradients", "AdamW state", "total")
    table = columns_table([("method", "left"), *((header, "right") for header in headers)])
    for method in costs.methods:
        table.add_row(
            Text(method.name),
            format_count(method.trainable_params),
            format_share(method.trainable_share),
            format_bytes(method.weight_bytes),
            format_bytes(method.gradient_bytes),
            format_bytes(method.optimizer_bytes),
            format_bytes(method.total_bytes),
        )
    return table


def _lora_note(costs: PlanCosts) -> str:
    """How the LoRA rows of the memory table are counted and why their ranks were chosen."""
    lora = costs.lora_shape
    return (
        f"LoRA rows: rank r on the {lora.modules} Linear layers of the transformer blocks, "
        f"r x {lora.in_plus_out:,} parameters; r={costs.lora_rank} is the rank whose count is closest to "
        f"{costs.grow.name}'s, r={costs.lora_reference_rank} is shown for reference."
    )


# ---------------------------------------------------------------------------------------------------------------
# rank-layers
# ---------------------------------------------------------------------------------------------------------------


def print_ranking(scores: LayerScores, layers: list[int], console: Console) -> None:
    """Every layer by rank, then the `layers` chosen, as GrowConfig takes them."""
    table = columns_table((("rank", "right"), ("layer", "right"), ("stack", "left"), ("score", "right")))
    for rank, (stack, index) in enumerate(scores.ranked(), start=1):
        table.add_row(str(rank), str(index), stack, f"{scores.scores[(stack, index)]:.4g}")
    console.print(table)
    console.print()
    console.print(Text(f"GrowConfig(layers={layers})"))


# ---------------------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------------------


def print_merged(out: str, layout: str, merged: nn.Module, architecture: str, size: int, console: Console) -> None:
    """What was written to `out` (`size` bytes of safetensors) and the line that loads it back."""
    if hasattr(merged.config, SHAPES_KEY):  # per-layer widths: only peft_grow reads them
        load = f"peft_grow.load_merged({out!r})"
    else:
        load = f"{architecture}.from_pretrained({out!r})"
    rows = [
        ("written", out),
        ("layout", layout),
        ("parameters", f"{sum(p.numel() for p in merged.parameters()):,}"),
        ("dtype", str(merged.dtype).removeprefix("torch.")),
        ("on disk", format_bytes(size)),
        ("load with", load),
    ]
    console.print(key_values(rows))


# ---------------------------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------------------------


def print_report(report: AdapterReport, console: Console) -> None:
    console.print(Text(f"peft-grow inspect: {report.folder}"))
    console.print()
    console.print(key_values(_report_summary(report)))
    console.print()
    console.print(_dtype_table(report))
    if report.extra_tensors:
        console.print(Text(f"other tensors (modules_to_save / trainable tokens): {len(report.extra_tensors)}"))
    for note in report.notes:
        console.print(Text(f"note: {note}"))
    console.print()
    if report.consistent:
        console.print(Text("verdict: consistent"))
        return
    console.print(Text(f"verdict: INCONSISTENT ({len(report.problems)} problem(s))"))
    console.print(bullets(report.problems))


def _report_summary(report: AdapterReport) -> list[tuple[str, str]]:
    """The adapter's config, the modules it grows (one line per stack, inner path and role) and its tensors."""
    config = report.config
    total_params = sum(t.numel for t in report.tensors)
    total_bytes = sum(t.nbytes for t in report.tensors)
    module_lines = _grown_modules(report.roles)
    mlps = len({split[:2] for split in map(split_module_name, report.roles) if split is not None})
    return [
        ("base model", str(config.get("base_model_name_or_path") or "(not recorded)")),
        ("peft type", str(config.get("peft_type"))),
        ("k", str(config.get("k"))),
        ("mode", str(config.get("mode"))),
        ("init", str(config.get("init"))),
        ("layers", "all" if config.get("layers") is None else str(config.get("layers"))),
        ("symmetry noise", str(config.get("symmetry_noise"))),
        ("grown modules", f"{len(report.roles)} in {mlps} MLP{plural(mlps)}" + (":" if module_lines else "")),
        *[("", line) for line in module_lines],
        (
            "tensors",
            f"{len(report.tensors)}, {total_params:,} parameters, {total_bytes:,} bytes "
            f"({format_bytes(total_bytes)}); file {report.file_bytes:,} bytes",
        ),
    ]


def _grown_modules(roles: dict[str, str]) -> list[str]:
    """Grown modules folded over their layers: 'model.layers.[0-4].mlp.up_proj (up)', up sides first."""
    modules = defaultdict(list)  # (stack, inner path, role) -> layer indices
    for target, role in sorted(roles.items()):
        split = split_module_name(target)
        if split is None:
            modules[(target, "", role)].append(None)
        else:
            modules[(split[0], split[2], role)].append(split[1])
    return [
        f"{stack}.[{format_indices(indices)}].{inner} ({role})" if inner else f"{stack} ({role})"
        for (stack, inner, role), indices in sorted(modules.items(), key=lambda item: (item[0][2] != "up", item[0]))
    ]


def _dtype_table(report: AdapterReport) -> Table:
    """Tensors, parameters and bytes per dtype."""
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for info in report.tensors:
        counts = by_dtype[info.dtype]
        counts[0] += 1
        counts[1] += info.numel
        counts[2] += info.nbytes
    table = columns_table((("dtype", "left"), ("tensors", "right"), ("parameters", "right"), ("bytes", "right")))
    for dtype, (count, params, nbytes) in sorted(by_dtype.items()):
        table.add_row(dtype, str(count), f"{params:,}", f"{nbytes:,}")
    return table


# ---------------------------------------------------------------------------------------------------------------
# function-vectors
# ---------------------------------------------------------------------------------------------------------------


def print_function_vectors(
    results: Sequence[tuple[str, FunctionVectorResult, int, float]],
    task: str,
    prompts: int,
    shots: int,
    top: int,
    console: Console,
) -> None:
    """One row per model, the base first: (path, result, how many of the base's `top` heads it shares, cosine to
    the base's vector); then the task, the prompts and the layer the vectors are added after."""
    heads_column = f"top-{top} heads (layer.head)"
    headers = ("model", "ICL acc", "zero-shot", "+ vector", heads_column, "shared", "cosine")
    table = columns_table((header, "left" if header in ("model", heads_column) else "right") for header in headers)
    for path, result, shared, cosine in results:
        table.add_row(
            path,
            f"{result.icl_accuracy:.2f}",
            f"{result.zero_shot:.2f}",
            f"{result.zero_shot_with_vector:.2f}",
            " ".join(f"{layer}.{head}" for layer, head in result.heads),
            f"{shared}/{top}",
            f"{cosine:.3f}",
        )
    console.print(table)
    layer = results[0][1].layer
    console.print(Text(f"task {task}, {prompts} prompts of {shots} shots; vector added after layer {layer}."))
