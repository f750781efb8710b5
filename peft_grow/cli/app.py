"""The `peft-grow` command line: plan what growing a model costs, inspect a saved adapter, merge it.

    peft-grow plan MODEL [--layers 0,1,2 | --layers all] [--k 2] [--mode freeze|train] [--dtype bfloat16]
    peft-grow inspect ADAPTER_DIR
    peft-grow merge BASE ADAPTER OUT [--layout pad|per-layer] [--dtype ...] [--overwrite]
    peft-grow rank-layers MODEL TEXT [--top 10] [--method pilot|gradient] [--steps 30] [--lr 1e-4]
    peft-grow function-vectors BASE [ADAPTER_OR_MODEL ...] [--task capitalize] [--prompts 32] [--top 10]

Structure: every command is a function registered on `app` with `@app.command()`: it parses its options, calls
the package and hands the result to a `print_*` function of `render.py` (the tables and formatting). Its work runs
inside `user_errors()`: a user error (a missing or unreadable file, a bad value, an architecture that cannot be
grown) ends the command with one line `error: ...` on stderr and exit code 2, never a traceback. `main()` is the
console-script entry point; it runs `app` and reports click's own usage errors (bad options or values) the same
way. Another command is one more decorated function following the same pattern.

Exit codes: 0 success; 1 `inspect` found an inconsistent adapter; 2 bad input (usage, unreadable files).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import torch
import transformers
import typer
from peft import PeftModel
from transformers.utils import logging as hf_logging

from ..analysis import function_vectors as fv
from ..analysis.planning import plan_costs
from ..analysis.selection import TextTooShortError, gradient_ranking, pilot_ranking, text_batches, top_layers
from ..io.checkpoint import GrowCheckpointError
from ..io.export import save_merged
from ..io.inspection import inspect_adapter
from ..io.loading import load_base_model
from ..tuner.architectures import UnsupportedArchitectureError
from ..tuner.config import INITS, MODES, GrowConfig
from .render import (
    make_console,
    print_function_vectors,
    print_merged,
    print_plan,
    print_ranking,
    print_report,
    step_progress,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ..analysis.selection import Batch

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


Mode = StrEnum("Mode", {mode: mode for mode in MODES})  # GrowConfig's, as choices of the options
Init = StrEnum("Init", {init: init for init in INITS})


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


def quiet_libraries() -> None:
    """Silence library chatter that says nothing about the user's input (deprecations inside transformers)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the commands show their own progress


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


# ---------------------------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------------------------


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
    quiet_libraries()
    console = make_console()
    with user_errors():
        batches = _text_batches(model, text, seq_len=seq_len, batch=batch, steps=steps, seed=seed)
        network = load_base_model(model)
        if method == Ranking.pilot:
            scores = pilot_ranking(network, batches, steps=steps, lr=lr)
        else:
            scores = gradient_ranking(network, batches)
    print_ranking(scores, top_layers(scores, top), console)


def _text_batches(model: str, text: str, seq_len: int, batch: int, steps: int, seed: int) -> list[Batch]:
    """The file TEXT in `steps` random batches of `batch` windows of `seq_len` tokens of MODEL's tokenizer."""
    if not os.path.isfile(text):
        raise FileNotFoundError(f"{text}: no such file (expected a UTF-8 text file of the new task).")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    with open(text, encoding="utf-8") as handle:
        content = handle.read()
    try:
        return text_batches(tokenizer, content, seq_len=seq_len, batch=batch, steps=steps, seed=seed)
    except TextTooShortError as error:
        raise ValueError(
            f"{text} holds {error.tokens:,} tokens, fewer than one batch of {batch} x {seq_len}; use a longer text "
            "or lower --batch / --seq-len."
        ) from None


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
    quiet_libraries()
    console = make_console()
    with user_errors():
        _check_merge_inputs(adapter, out, overwrite)
        merged, architecture = _merge_and_write(
            base,
            adapter,
            out,
            layout=layout.value,
            dtype=dtype and dtype.value,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
        )
    print_merged(out, layout.value, merged, architecture, _safetensors_bytes(out), console)


def _check_merge_inputs(adapter: str, out: str, overwrite: bool) -> None:
    """Refuse an existing OUT without --overwrite, and a missing or damaged adapter, before any loading."""
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another path or pass --overwrite to replace it.")
    GrowConfig.from_pretrained(adapter)


def _merge_and_write(base: str, adapter: str, out: str, **save_options: Any) -> tuple[nn.Module, str]:
    """Load BASE, put ADAPTER on it, merge and write OUT (`save_merged` with `save_options`), showing the steps;
    (the merged model, the architecture BASE was loaded as)."""
    with step_progress() as steps:
        step = steps.add_task(f"loading the base model {base}", total=3)
        model = load_base_model(base)
        architecture = model.config.architectures[0]  # read before saving, which records the class it saves
        steps.update(step, advance=1, description=f"loading the adapter {adapter}")
        model = PeftModel.from_pretrained(model, adapter)
        steps.update(step, advance=1, description=f"merging and writing {out}")
        merged = save_merged(model, out, **save_options)
        steps.update(step, advance=1)
    return merged, architecture


def _safetensors_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


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
    quiet_libraries()
    console = make_console()
    results = []  # (path, result, heads shared with BASE, cosine to BASE's vector)
    with user_errors(), torch.no_grad():
        for path in [base, *(others or [])]:
            model, tokenizer = _load_for_analysis(base, path)
            result = fv.analyze(model, tokenizer, task.value, n_prompts=prompts, shots=shots, k=top, seed=seed)
            shared, cosine = fv.compare(results[0][1], result) if results else (top, 1.0)
            results.append((path, result, shared, cosine))
    print_function_vectors(results, task.value, prompts, shots, top, console)


def _load_for_analysis(base: str, path: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A model and `base`'s tokenizer: `path` itself, or an adapter folder loaded onto `base`."""
    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.count("/") != 1):
        raise FileNotFoundError(f"{path}: no such folder (expected a model folder, an adapter folder or a Hub id).")
    adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
    model = load_base_model(base if adapter else path)
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
