"""The `peft-grow` command line: plan what growing a model costs, inspect a saved adapter, merge it.

    peft-grow plan MODEL [--layers 0,1,2 | --layers all] [--k 2] [--mode freeze|train] [--dtype bfloat16]
    peft-grow inspect ADAPTER_DIR
    peft-grow merge BASE ADAPTER OUT [--layout pad|per-layer] [--dtype ...] [--overwrite]
    peft-grow rank-layers MODEL TEXT [--top 10] [--method pilot|gradient] [--steps 30] [--lr 1e-4]
    peft-grow function-vectors BASE [ADAPTER_OR_MODEL ...] [--task capitalize] [--prompts 32] [--top 10]

Structure: every command is a function registered on `app` with `@app.command()`, whose body runs inside
`user_errors()`: a user error (a missing or unreadable file, a bad value, an architecture that cannot be grown)
ends the command with one line `error: ...` on stderr and exit code 2, never a traceback. `main()` is the
console-script entry point; it runs `app` and reports click's own usage errors (bad options or values) the same
way. Another command is one more decorated function following the same pattern.

Exit codes: 0 success; 1 `inspect` found an inconsistent adapter; 2 bad input (usage, unreadable files).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text
from transformers.utils import logging as hf_logging

from ..analysis.planning import PlanCosts, plan_costs
from ..io.checkpoint import GrowCheckpointError
from ..io.inspection import AdapterReport, format_indices, inspect_adapter
from ..tuner.architectures import UnsupportedArchitectureError, split_module_name

EXIT_OK, EXIT_INCONSISTENT, EXIT_USAGE = 0, 1, 2
#: errors that mean "bad input", reported in one line with exit code 2 (the others are bugs: traceback)
USER_ERRORS = (ValueError, UnsupportedArchitectureError, GrowCheckpointError, OSError)

app = typer.Typer(
    name="peft-grow",
    help="Grow, Don't Overwrite (arXiv 2603.08647): plan, inspect and merge grown PEFT adapters, and rank the "
    "layers to grow.\n\n"
    "Exit codes: 0 success, 1 inconsistent adapter (inspect), 2 bad input or unreadable files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Mode(StrEnum):
    freeze = "freeze"
    train = "train"


class Init(StrEnum):
    copy = "copy"
    zero = "zero"


class DType(StrEnum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


# ---------------------------------------------------------------------------------------------------------------
# shared plumbing
# ---------------------------------------------------------------------------------------------------------------


def one_line(message: object) -> str:
    """`message` on a single line (package errors may span several)."""
    return " ".join(str(message).split())


def print_error(message: object) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the package's user errors into `error: ...` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as exc:
        print_error(exc)
        raise typer.Exit(EXIT_USAGE) from None


def make_console() -> Console:
    """A console on stdout: the terminal's width, or 120 columns when piped, so that tables stay on one line."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120)
    return console


def quiet_libraries() -> None:
    """Silence library chatter that says nothing about the user's input (deprecations inside transformers)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the commands show their own progress


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


def parse_layers(value: str) -> list[int] | None:
    """`--layers`: 'all' or comma-separated integers (negative ones count from the end)."""
    text = value.strip()
    if text.lower() == "all":
        return None
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected 'all' or comma-separated layer indices such as 0,1,2 (or -1 for the last), got {value!r}."
        ) from None
    return layers


def check_layers_option(value: str) -> str:
    parse_layers(value)  # raises BadParameter, which names the option
    return value


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


@app.command()
def plan(
    model: Annotated[
        str,
        typer.Argument(
            help="A local model folder, its config.json, or a Hub id (needs network). Only the config is read.",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    layers: Annotated[
        str,
        typer.Option(
            callback=check_layers_option,
            metavar="all|I,J,...",
            help="Layers to grow: 'all', or comma-separated indices (negative ones count from the end).",
        ),
    ] = "all",
    k: Annotated[int, typer.Option(min=2, help="Growth factor: the MLP width becomes k*p.")] = 2,
    mode: Annotated[Mode, typer.Option(help="freeze (G-Freeze) or train (G-Train).")] = Mode.freeze,
    init: Annotated[Init, typer.Option(help="copy (the paper's) or zero (Appendix C.2 baseline).")] = Init.copy,
    dtype: Annotated[DType, typer.Option(help="The dtype the base model is trained in.")] = DType.bfloat16,
    autocast_adapter_dtype: Annotated[
        bool,
        typer.Option(
            "--autocast-adapter-dtype/--no-autocast-adapter-dtype",
            help="Keep new weights in float32 (PEFT's default) or in --dtype.",
        ),
    ] = True,
) -> None:
    """Parameter counts and training memory of growing MODEL, next to LoRA and full fine-tuning.

    The model is built on the meta device from its config: no weights are downloaded or read.
    """
    quiet_libraries()
    with user_errors():
        costs = plan_costs(
            model,
            layers=parse_layers(layers),
            k=k,
            mode=mode.value,
            dtype=dtype.value,
            init=init.value,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
    print_plan(costs, make_console())


def print_plan(costs: PlanCosts, console: Console) -> None:
    grown = "; ".join(
        f"{len(indices)} of {costs.stack_sizes[stack]} layers of {stack} ({format_indices(indices)})"
        for stack, indices in costs.grown_layers.items()
    )
    shapes = "; ".join(
        (f"{e:,} experts, each " if e else "")
        + f"hidden {h:,}, width {p:,} -> {costs.k * p:,}"
        + (f" (fused up side of {c} projections)" if c > 1 else "")
        for h, p, c, e in costs.mlp_shapes
    )
    console.print(
        Text(
            f"peft-grow plan: {costs.source} ({costs.model_type}, {costs.model_class}), built on the meta device; "
            "no weights read."
        )
    )
    console.print()
    console.print(
        key_values(
            [
                ("base model", f"{costs.base_params:,} parameters ({format_count(costs.base_params)})"),
                ("grown", f"{costs.grown_mlps} MLP{'s' if costs.grown_mlps != 1 else ''}: {grown}"),
                ("MLP", shapes),
                ("method", f"{costs.grow.name}: {_METHOD_TEXT[(costs.mode, costs.init)]}"),
                (
                    "added",
                    f"{costs.added_params:,} parameters"
                    + (" (the delta on the original up rows included)" if costs.mode == "train" else ""),
                ),
                (
                    "trainable",
                    f"{costs.trainable_params:,} parameters = {format_share(costs.trainable_share)} of the base "
                    "model (as the paper counts)",
                ),
            ]
        )
    )
    console.print()
    console.print(
        Text(
            f"Training memory, base in {costs.dtype}, AdamW (weights, gradients and optimizer state only; "
            "activations not included):"
        )
    )
    table = Table(box=None, pad_edge=False, padding=(0, 2), header_style="bold")
    table.add_column("method")
    for column in ("trainable", "of base", "weights", "gradients", "AdamW state", "total"):
        table.add_column(column, justify="right")
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
    console.print(table)
    console.print()
    lora = costs.lora_shape
    console.print(
        bullets(
            [
                f"LoRA rows: rank r on the {lora.modules} Linear layers of the transformer blocks, "
                f"r x {lora.in_plus_out:,} parameters; r={costs.lora_rank} is the rank whose count is closest to "
                f"{costs.grow.name}'s, r={costs.lora_reference_rank} is shown for reference.",
                *costs.notes,
            ],
            bullet="*",
        )
    )
    console.print(Text("Assumptions:"))
    console.print(bullets(costs.assumptions))


# ---------------------------------------------------------------------------------------------------------------
# rank-layers
# ---------------------------------------------------------------------------------------------------------------


class Ranking(StrEnum):
    pilot = "pilot"
    gradient = "gradient"


@app.command("rank-layers")
def rank_layers(
    model: Annotated[str, typer.Argument(help="A local model folder, or a Hub id (needs network).", metavar="MODEL")],
    text: Annotated[str, typer.Argument(help="A UTF-8 text file of the new task, to fine-tune the pilot on.")],
    top: Annotated[int, typer.Option(min=1, help="How many layers to select.")] = 10,
    method: Annotated[
        Ranking, typer.Option(help="pilot: the paper's short plain fine-tune; gradient: gradient statistics only.")
    ] = Ranking.pilot,
    steps: Annotated[int, typer.Option(min=1, help="Pilot steps (or gradient batches).")] = 30,
    lr: Annotated[float, typer.Option(help="Pilot learning rate (AdamW).")] = 1e-4,
    batch: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per sequence.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed of the batch order.")] = 0,
) -> None:
    """Rank MODEL's layers by how much fine-tuning on TEXT changes their MLPs; print the top ones as
    GrowConfig(layers=...) takes them (paper section 4.2)."""
    import torch
    import transformers

    from ..analysis.selection import gradient_ranking, pilot_ranking, top_layers

    quiet_libraries()
    console = make_console()
    with user_errors():
        if not os.path.isfile(text):
            raise FileNotFoundError(f"{text}: no such file (expected a UTF-8 text file of the new task).")
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
        with open(text, encoding="utf-8") as handle:
            ids = torch.tensor(tokenizer(handle.read())["input_ids"])
        windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
        if len(windows) < batch:
            raise ValueError(
                f"{text} holds {len(ids):,} tokens, fewer than one batch of {batch} x {seq_len}; use a longer text "
                "or lower --batch / --seq-len."
            )
        architecture = transformers.AutoConfig.from_pretrained(model).architectures[0]
        network = getattr(transformers, architecture).from_pretrained(model, dtype="auto")
        generator = torch.Generator().manual_seed(seed)
        batches = []
        for _ in range(steps):
            rows = windows[torch.randint(len(windows), (batch,), generator=generator)]
            batches.append({"input_ids": rows, "labels": rows})
        if method == Ranking.pilot:
            scores = pilot_ranking(network, batches, steps=steps, lr=lr)
        else:
            scores = gradient_ranking(network, batches)
    table = Table(box=None, pad_edge=False, padding=(0, 2), header_style="bold")
    for column, justify in (("rank", "right"), ("layer", "right"), ("stack", "left"), ("score", "right")):
        table.add_column(column, justify=justify)
    for rank, (stack, index) in enumerate(scores.ranked(), start=1):
        table.add_row(str(rank), str(index), stack, f"{scores.scores[(stack, index)]:.4g}")
    console.print(table)
    console.print()
    console.print(Text(f"GrowConfig(layers={top_layers(scores, top)})"))


# ---------------------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------------------


class Layout(StrEnum):
    pad = "pad"
    per_layer = "per-layer"


@app.command()
def merge(
    base: Annotated[
        str, typer.Argument(help="The base model: a local folder, or a Hub id (needs network).", metavar="BASE")
    ],
    adapter: Annotated[str, typer.Argument(help="The grown adapter folder written by save_pretrained.")],
    out: Annotated[str, typer.Argument(help="The folder to write; refused if it exists, unless --overwrite.")],
    layout: Annotated[
        Layout,
        typer.Option(
            help="pad: a standard checkpoint, MLPs that were not grown padded with zero units; per-layer: each MLP "
            "at its own width, loaded with peft_grow.load_merged."
        ),
    ] = Layout.pad,
    dtype: Annotated[DType | None, typer.Option(help="Cast the checkpoint (default: the base model's dtype).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists (atomically).")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 5GB.")] = "5GB",
) -> None:
    """Merge a grown adapter into its base model and write one checkpoint, atomically.

    A failure or Ctrl-C never leaves a half-written OUT. With --layout pad (the default) the checkpoint is a
    standard one that plain transformers loads.
    """
    import transformers
    from peft import PeftModel

    from ..io.export import SHAPES_KEY, save_merged
    from ..tuner.config import GrowConfig

    quiet_libraries()
    console = make_console()
    stderr = Console(stderr=True)
    steps = Progress(  # shown on a terminal only, so that piped stderr holds just the errors
        TextColumn("[{task.completed}/{task.total}]"),
        BarColumn(),
        TextColumn("{task.description}"),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with user_errors():
        if os.path.exists(out) and not overwrite:
            raise FileExistsError(f"{out} already exists; choose another path or pass --overwrite to replace it.")
        GrowConfig.from_pretrained(adapter)  # a clear error for a missing or damaged adapter, before any loading
    with user_errors(), steps:
        step = steps.add_task(f"loading the base model {base}", total=3)
        architecture = transformers.AutoConfig.from_pretrained(base).architectures[0]
        model = getattr(transformers, architecture).from_pretrained(base, dtype="auto")
        steps.update(step, advance=1, description=f"loading the adapter {adapter}")
        model = PeftModel.from_pretrained(model, adapter)
        steps.update(step, advance=1, description=f"merging and writing {out}")
        merged = save_merged(
            model,
            out,
            layout=layout.value,
            dtype=dtype and dtype.value,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
        )
        steps.update(step, advance=1)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    per_layer = hasattr(merged.config, SHAPES_KEY)
    load = f"peft_grow.load_merged({out!r})" if per_layer else f"{architecture}.from_pretrained({out!r})"
    console.print(
        key_values(
            [
                ("written", out),
                ("layout", layout.value),
                ("parameters", f"{sum(p.numel() for p in merged.parameters()):,}"),
                ("dtype", str(merged.dtype).removeprefix("torch.")),
                ("on disk", format_bytes(size)),
                ("load with", load),
            ]
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------------------------


@app.command("inspect")
def inspect_command(
    adapter_dir: Annotated[
        str,
        typer.Argument(
            help="A folder written by save_pretrained (adapter_config.json + adapter_model.safetensors).",
            metavar="ADAPTER_DIR",
            show_default=False,
        ),
    ],
) -> None:
    """Describe a saved grown adapter and check it against its config, reading only the safetensors header.

    Exit code 0 if the adapter is consistent, 1 if not (the reasons are printed), 2 if it cannot be read.
    """
    with user_errors():
        report = inspect_adapter(adapter_dir)
    print_report(report, make_console())
    if not report.consistent:
        raise typer.Exit(EXIT_INCONSISTENT)


def print_report(report: AdapterReport, console: Console) -> None:
    config = report.config
    total_params = sum(t.numel for t in report.tensors)
    total_bytes = sum(t.nbytes for t in report.tensors)
    modules = defaultdict(list)  # (stack, inner path, role) -> layer indices
    for target, role in sorted(report.roles.items()):
        split = split_module_name(target)
        if split is None:
            modules[(target, "", role)].append(None)
        else:
            modules[(split[0], split[2], role)].append(split[1])
    module_lines = [
        f"{stack}.[{format_indices(indices)}].{inner} ({role})" if inner else f"{stack} ({role})"
        for (stack, inner, role), indices in sorted(modules.items(), key=lambda item: (item[0][2] != "up", item[0]))
    ]
    mlps = len({split[:2] for split in map(split_module_name, report.roles) if split is not None})
    console.print(Text(f"peft-grow inspect: {report.folder}"))
    console.print()
    console.print(
        key_values(
            [
                ("base model", str(config.get("base_model_name_or_path") or "(not recorded)")),
                ("peft type", str(config.get("peft_type"))),
                ("k", str(config.get("k"))),
                ("mode", str(config.get("mode"))),
                ("init", str(config.get("init"))),
                ("layers", "all" if config.get("layers") is None else str(config.get("layers"))),
                ("symmetry noise", str(config.get("symmetry_noise"))),
                (
                    "grown modules",
                    f"{len(report.roles)} in {mlps} MLP{'s' if mlps != 1 else ''}" + (":" if module_lines else ""),
                ),
                *[("", line) for line in module_lines],
                (
                    "tensors",
                    f"{len(report.tensors)}, {total_params:,} parameters, {total_bytes:,} bytes "
                    f"({format_bytes(total_bytes)}); file {report.file_bytes:,} bytes",
                ),
            ]
        )
    )
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for info in report.tensors:
        counts = by_dtype[info.dtype]
        counts[0] += 1
        counts[1] += info.numel
        counts[2] += info.nbytes
    table = Table(box=None, pad_edge=False, padding=(0, 2), header_style="bold")
    for column, justify in (("dtype", "left"), ("tensors", "right"), ("parameters", "right"), ("bytes", "right")):
        table.add_column(column, justify=justify)
    for dtype, (count, params, nbytes) in sorted(by_dtype.items()):
        table.add_row(dtype, str(count), f"{params:,}", f"{nbytes:,}")
    console.print()
    console.print(table)
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


# ---------------------------------------------------------------------------------------------------------------
# function-vectors
# ---------------------------------------------------------------------------------------------------------------


class FVTask(StrEnum):
    capitalize = "capitalize"
    uppercase = "uppercase"
    first_letter = "first_letter"
    last_letter = "last_letter"
    copy = "copy"


@app.command("function-vectors")
def function_vectors_command(
    base: Annotated[str, typer.Argument(help="The base model: a local folder, or a Hub id (needs network).")],
    others: Annotated[
        list[str] | None,
        typer.Argument(help="Fine-tuned models to compare with BASE: adapter folders (loaded onto BASE) or models."),
    ] = None,
    task: Annotated[FVTask, typer.Option(help="The in-context task.")] = FVTask.capitalize,
    prompts: Annotated[int, typer.Option(min=2, help="Prompts per set (clean, corrupted, zero-shot).")] = 32,
    shots: Annotated[int, typer.Option(min=2, help="Demonstrations per prompt.")] = 5,
    top: Annotated[int, typer.Option(min=1, help="Causal heads in the function vector.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed of the prompts.")] = 0,
) -> None:
    """Function vectors (Todd et al. 2024; paper section 4.5) of BASE and of each fine-tuned model: in-context
    and zero-shot accuracy, the vector's zero-shot effect, the top heads, and how many heads and how much of the
    vector each model shares with BASE."""
    import torch

    from ..analysis import function_vectors as fv

    quiet_libraries()
    console = make_console()
    table = Table(box=None, pad_edge=False, padding=(0, 2), header_style="bold")
    for column in ("model", "ICL acc", "zero-shot", "+ vector", f"top-{top} heads (layer.head)", "shared", "cosine"):
        table.add_column(column, justify="left" if column in ("model", f"top-{top} heads (layer.head)") else "right")
    with user_errors(), torch.no_grad():
        reference = None
        for path in [base, *(others or [])]:
            model, tokenizer = _load_for_analysis(base, path)
            result = fv.analyze(model, tokenizer, task.value, n_prompts=prompts, shots=shots, k=top, seed=seed)
            shared, cosine = fv.compare(reference, result) if reference else (top, 1.0)
            reference = reference or result
            heads = " ".join(f"{layer}.{head}" for layer, head in result.heads)
            table.add_row(
                path,
                f"{result.icl_accuracy:.2f}",
                f"{result.zero_shot:.2f}",
                f"{result.zero_shot_with_vector:.2f}",
                heads,
                f"{shared}/{top}",
                f"{cosine:.3f}",
            )
    console.print(table)
    console.print(
        Text(f"task {task.value}, {prompts} prompts of {shots} shots; vector added after layer {reference.layer}.")
    )


def _load_for_analysis(base: str, path: str):
    """A model and `base`'s tokenizer: `path` itself, or an adapter folder loaded onto `base`."""
    import transformers
    from peft import PeftModel

    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.count("/") != 1):
        raise FileNotFoundError(f"{path}: no such folder (expected a model folder, an adapter folder or a Hub id).")
    adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
    source = base if adapter else path
    architecture = transformers.AutoConfig.from_pretrained(source).architectures[0]
    model = getattr(transformers, architecture).from_pretrained(source, dtype="auto")
    if adapter:
        model = PeftModel.from_pretrained(model, path)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(base)  # fine-tuned folders may hold none


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _click_error(exc: BaseException) -> str | None:
    """The kind of a click-style error ("NoArgsIsHelpError", "UsageError", "ClickException"), else None.

    Matched by class name because typer raises click's own classes in some versions and those of its vendored
    copy of click in others (typer >= 0.25 does not depend on click).
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((kind for kind in ("NoArgsIsHelpError", "UsageError", "ClickException") if kind in names), None)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run `app`; report usage errors in one line (exit 2); exit with the code."""
    try:
        code = app(args=argv, prog_name="peft-grow", standalone_mode=False)
    except typer.Abort:
        print_error("aborted.")
        sys.exit(1)
    except Exception as exc:
        kind = _click_error(exc)
        if kind is None:
            raise
        if kind == "NoArgsIsHelpError":  # `peft-grow` alone: the help (typer's rich help is already printed)
            if exc.format_message().strip():
                print(exc.format_message(), file=sys.stderr)
            sys.exit(EXIT_USAGE)
        message = one_line(exc.format_message()).rstrip(".") + "."
        ctx = getattr(exc, "ctx", None)
        if kind == "UsageError" and ctx is not None:
            message += f" See '{ctx.command_path} --help'."
        print_error(message)
        sys.exit(EXIT_USAGE if kind == "UsageError" else getattr(exc, "exit_code", 1))
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
