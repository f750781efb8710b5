"""Growth that checks itself: each MLP, grown at its function-preserving start, must compute what it computed.

Names and shapes cannot tell whether the work between an MLP's up and down projections is elementwise (an
activation, a gating product, dropout) or mixes units across the width (a normalisation across the MLP's width,
top-k activation sparsity); only the second breaks growth. So before an adapter is injected, every MLP to grow
runs on a small random input once as it is and once as grown at its function-preserving start (computed through
hooks on its projections: no weight is copied, so the check costs two forward passes of a few tokens per MLP);
a mismatch beyond the dtype's rounding refuses the adapter, naming the module and the measured difference.

The MLP module is the closest common parent of its projections (`mlp`, `DenseReluDense`, or the whole decoder
layer for models without an MLP module). Where it cannot be run on a bare tensor (its forward needs other
inputs), or holds no real weights (the meta device), the check is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .architectures import GrownMLP, UnsupportedArchitectureError
from .experts import experts_layout, preserves_function
from .growth import INITS
from .paths import TextRun, evaluating, recording, run_text, run_watching
from .tensors import PROJECTIONS, interleave, is_conv1d, linear_layout

if TYPE_CHECKING:
    from .config import GrowConfig

logger = logging.getLogger(__name__)

# largest |difference| allowed, relative to the largest |output|: float32 rounding, or a few 16-bit steps
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
LOW_PRECISION_TOLERANCE = 3e-2


def check_growth_preserves(model: nn.Module, mlps: list[GrownMLP], config: GrowConfig) -> None:
    """Raise UnsupportedArchitectureError if growing any of `mlps` as `config` says changes that MLP's output, if
    one of them does not run on a text input, or if the whole model grown at its start fails or computes otherwise
    (a module outside an MLP that reads or adds to its width)."""
    unchecked = [mlp for mlp in mlps if not _check_one(model, mlp, config)]
    check_in_the_model(model, mlps, config, unchecked)


def check_in_the_model(model: nn.Module, mlps: list[GrownMLP], config: GrowConfig, unchecked: list[GrownMLP]) -> None:
    """One forward of the whole model on a few tokens, hooked to see which of `mlps`' modules run; then, for the
    dense MLPs of `unchecked` (those the per-MLP check could not run on a bare tensor), one with them grown at
    their start, through the same hooks; where that fails, each is tried alone to name the one at fault. Skipped
    where the model cannot be run on token ids (meta weights, a forward that needs other inputs)."""
    names = sorted({name for mlp in mlps for name in (*mlp.up, mlp.down)})
    run = run_watching(model, names)
    if run is None:  # as for _check_one: a model that cannot be run this way is not checked this way
        return
    _refuse_off_path([name for name in names if name not in run.reached], config)
    dense = [mlp for mlp in unchecked if not mlp.experts and _plain(model, mlp)]
    if dense and _grown_forward(model, dense, config, run) is not None:
        for mlp in dense:  # only when the model fails: find the MLP at fault
            if (measured := _grown_forward(model, [mlp], config, run)) is not None:
                raise UnsupportedArchitectureError(
                    f"Growing the MLP of {mlp.down.rpartition('.')[0] or mlp.down} ({', '.join((*mlp.up, mlp.down))}) "
                    f"at its function-preserving start, the model's forward on a text input {measured}: a module "
                    "outside the MLP's projections reads or adds to its width (Zamba2's gate_up_proj_adapter_list "
                    "adds a p-wide output to gate_up_proj's, say), and peft-grow does not widen it with them. Leave "
                    "this MLP out (exclude_modules or layers), or fine-tune the model with another PEFT method."
                )


def _refuse_off_path(missing: list[str], config: GrowConfig) -> None:
    """Grown modules that a text input does not reach: refused on the default path (growth chose them); a warning
    where the user named them (GrowConfig.up_modules), who may grow another tower on purpose."""
    if not missing:
        return
    message = (
        f"{len(missing)} of the modules to grow do not run when the model reads a text input (token ids): "
        f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}. They belong to a tower the model does not "
        "use for text (vision, audio) or to a branch its forward skips, so training them cannot change the model's "
        "output on text."
    )
    if config.mlp_layout is not None:
        warnings.warn(message + " Growing them anyway, as up_modules/down_modules name them.", stacklevel=2)
        return
    raise UnsupportedArchitectureError(
        message + " Name the language model's MLPs with GrowConfig(up_modules=[...], down_modules=[...]) (and "
        "exclude_modules for other stacks), or pass check_function=False if other inputs reach them on purpose."
    )


def _grown_forward(model: nn.Module, mlps: list[GrownMLP], config: GrowConfig, run: TextRun) -> str | None:
    """None if the model with `mlps` grown at their start computes `run`'s logits on its ids (judged in float32 or
    float64; in 16 bits only that it runs with the same shape), else the words for what it does instead."""
    expected = run.logits
    generator = torch.Generator().manual_seed(0)
    try:
        with contextlib.ExitStack() as stack:
            for mlp in mlps:
                stack.enter_context(_grown(model, mlp, config, generator))
            found = run_text(model, run.ids)
    except Exception as error:  # noqa: BLE001  (the grown width reaches work sized for the old one)
        return f"fails ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if found.shape != expected.shape:
        return f"changes the logits' shape from {tuple(expected.shape)} to {tuple(found.shape)}"
    if expected.dtype not in TOLERANCE:
        return None
    difference = (found.float() - expected.float()).abs().max().item()
    return _beyond_rounding(difference, expected.abs().max().item(), expected.dtype)


def _plain(model: nn.Module, mlp: GrownMLP) -> bool:
    """The MLP's projections are still plain layers (not wrapped by a first adapter or another tuner)."""
    return all(type(model.get_submodule(name)) in PROJECTIONS for name in (*mlp.up, mlp.down))


def _check_one(model: nn.Module, mlp: GrownMLP, config: GrowConfig) -> bool:
    """Whether the MLP could be checked (its module runs on a bare tensor and calls its projections); raises if it
    was and growth changes its output."""
    if mlp.experts:
        _check_experts(model, mlp, config)
        return True
    names = (*mlp.up, mlp.down)
    if not _plain(model, mlp):
        return True  # already wrapped (a second adapter, another tuner): checked when first grown, or not a plain layer
    parent_name = _common_parent(names)
    parent = model.get_submodule(parent_name) if parent_name else model
    weight = model.get_submodule(mlp.down).weight
    if weight.is_meta or not weight.dtype.is_floating_point:
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, mlp.hidden, generator=generator).to(device=weight.device, dtype=weight.dtype)
    with evaluating(parent), torch.no_grad():
        try:
            expected = _first_tensor(parent(x))
        except Exception as error:  # a forward that needs more than a tensor: cannot check this way
            logger.debug("Not checking %s: its forward does not take a bare tensor (%s).", parent_name, error)
            return False
        called: set[str] = set()
        with _grown(model, mlp, config, generator), recording(model, list(names), called.add):
            try:
                found, failure = _first_tensor(parent(x)), None
            except Exception as error:  # the grown width reaches work sized for the old one
                found, failure = None, f"{type(error).__name__}: {error}"
    if failure is not None:
        measured = f"fails ({failure.splitlines()[0]})"
    elif found.shape != expected.shape:
        measured = f"changes its output's shape from {tuple(expected.shape)} to {tuple(found.shape)}"
    else:
        difference = (found.float() - expected.float()).abs().max().item()
        measured = _beyond_rounding(difference, expected.detach().abs().max().item(), expected.dtype)
        if measured is None:
            return called == set(names)  # else the projections are called from outside this module
    raise UnsupportedArchitectureError(
        f"Growing {parent_name or type(model).__name__} ({', '.join(names)}) at its function-preserving start "
        f"{measured}: the work between its up and down projections is not elementwise (a normalisation or a "
        "selection across the MLP's width, say), so growth would change the model's function. Leave this MLP out "
        "(exclude_modules or layers), or pass check_function=False only if you know the difference is harmless."
    )


def _check_experts(model: nn.Module, mlp: GrownMLP, config: GrowConfig) -> None:
    """The same check for a fused experts module, run directly on tokens routed to every expert."""
    module = model.get_submodule(mlp.down)
    layout = experts_layout(module)
    if layout is None or module.down_proj.is_meta:
        return  # already wrapped (a second adapter): checked when first grown; or no real weights
    with evaluating(module):
        result = preserves_function(module, layout, config)
    if isinstance(result, str):
        measured = f"fails ({result})"
    else:
        measured = _beyond_rounding(*result, module.down_proj.dtype)
        if measured is None:
            return
    raise UnsupportedArchitectureError(
        f"Growing the experts of {mlp.down} ({type(module).__name__}) at their function-preserving start {measured}: "
        "its experts' work between the up and down projections is not elementwise, so growth would change the "
        "model's function. Leave this layer out (exclude_modules or layers), or pass check_function=False only if "
        "you know the difference is harmless."
    )


def _beyond_rounding(difference: float, scale: float, dtype: torch.dtype) -> str | None:
    """None if `difference` is within the dtype's rounding of an output of largest magnitude `scale`, else the
    words for the refusal."""
    tolerance = TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE) * scale + torch.finfo(dtype).tiny
    if difference <= tolerance:
        return None
    return f"changes its output by up to {difference:.3g} (largest |output| {scale:.3g}, tolerance {tolerance:.2g})"


@contextmanager
def _grown(model: nn.Module, mlp: GrownMLP, config: GrowConfig, generator: torch.Generator) -> Iterator[None]:
    """The MLP computes as grown k times at its start, through hooks, without a copy of any weight.

    Up side: each chunk's output gains what the init's new rows output at their start (`Init.new_outputs`).
    Down side: its k*p-wide input becomes what its k column blocks make of it (`Init.collapse`). The symmetry
    noise sums to zero over equal blocks and is left out.
    """
    init, k, chunks = INITS[config.init], config.k, mlp.chunks

    def widen(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        up = linear_layout(module.weight, is_conv1d(module))
        return interleave(out, init.new_outputs(args[0], out, up, chunks, k, generator), chunks, dim=-1)

    def narrow(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (init.collapse(args[0], k), *args[1:])

    handles = [model.get_submodule(name).register_forward_hook(widen) for name in mlp.up]
    handles.append(model.get_submodule(mlp.down).register_forward_pre_hook(narrow))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _common_parent(names: tuple[str, ...]) -> str:
    parts = [name.split(".")[:-1] for name in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(output).__name__}")
