"""The decode fast paths of the grown projections.

Decoding calls every grown layer once per token on a handful of rows, where the cost is Python and operator
dispatch rather than arithmetic. The grown layers' forwards therefore read each tensor once, straight from the
modules' dicts, apply the base layer's arithmetic instead of calling the module where nothing else must run, and,
on enough rows, write the up side's blocks into one output instead of concatenating them. Each path is checked
against the plain computation, operator by operator, in tests/test_fast_paths.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .quantization import refuse_placeholders
from .tensors import PROJECTIONS

if TYPE_CHECKING:
    from .layer import GrowLayer, GrowSettings, GrowUpLayer

IN_PLACE_MIN_ROWS = 128
"""Fewest rows (tokens in one forward) for which unmerged inference writes the up-side blocks in place. Below it,
as in decoding, two matmuls and a concatenation are faster: the copy is small, and writing into strided blocks
costs more than it saves. Measured by benchmarks/in_place_rows.py on 2 CPU cores: decoding 1 or 8 sequences, 1.12-
1.14x of the merged model concatenating against 1.19-1.20x in place; 32 to 128 rows, within 1% either way; 256 to
2,048 tokens, in place 1-5% faster."""


def autocasting(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device (never for a device autocast does not know, such as meta).

    Autocast casts the inputs of matmuls but not of out= calls, so both the in-place path and the casts around
    the new weights depend on it.
    """
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def active_parts(
    layer: GrowLayer, name: str, x: torch.Tensor
) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(base layer, its weight, its bias, new weight) for the active adapter `name`, for a forward on `x`;
    meta placeholders among the weights are refused unless `x` is on the meta device too.

    Read from the modules' own dicts because each lookup through nn.Module.__getattr__ and
    ParameterDict.__getitem__ costs a sizeable share of dispatching a small matmul, and decoding pays them for
    every grown layer at every token (`base_layer` is the nn.Linear / Conv1D itself, checked in GrowLayer).
    """
    modules = layer._modules
    base = modules["base_layer"]
    params = base._parameters
    weight, new_weight = params["weight"], modules["grow_new_weight"]._parameters.get(name)
    if weight.is_meta or (new_weight is not None and new_weight.is_meta):
        refuse_placeholders(x, weight)
    return base, weight, params.get("bias"), new_weight


def is_bare(base: nn.Module) -> bool:
    """Whether the wrapped module's arithmetic (`project`) may be applied without calling the module: a plain
    nn.Linear / Conv1D without hooks. Skipping nn.Module.__call__ saves its dispatch per projection per token; a
    module with hooks (accelerate's offloading) or a subclass with its own forward must still be called."""
    return type(base) in PROJECTIONS and not (
        base._forward_hooks or base._forward_pre_hooks or "_hf_hook" in base.__dict__
    )


def writes_in_place(
    layer: GrowUpLayer,
    x: torch.Tensor,
    name: str,
    settings: GrowSettings,
    weight: torch.Tensor,
    new_weight: torch.Tensor,
) -> bool:
    """Whether the up side writes its output blocks in place (called with autograd off: out= matmuls cannot
    record it): on at least IN_PLACE_MIN_ROWS rows, where the copy saved outweighs the extra operator calls, and
    in one dtype, since autocast does not cast out= calls."""
    if x.numel() < IN_PLACE_MIN_ROWS * x.shape[-1] or autocasting(x):
        return False
    dtype = x.dtype
    delta = layer.grow_delta_weight[name] if settings.mode == "train" else None
    return weight.dtype == dtype and new_weight.dtype == dtype and (delta is None or delta.dtype == dtype)


def forward_in_place(
    layer: GrowUpLayer,
    x: torch.Tensor,
    name: str,
    settings: GrowSettings,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
) -> torch.Tensor:
    """The up side's grown output with each matmul writing its block of one preallocated output: concatenating
    the original and the new rows would copy the whole wide activation, while a block of columns of the output
    is a strided matrix that the matmul writes as it is."""
    chunks, conv1d = settings.chunks, layer.conv1d
    new_bias = None if bias is None else layer.grow_new_bias[name]
    if settings.mode == "train":  # the trained original rows are W + delta
        weight = weight + layer.grow_delta_weight[name]
        delta_bias = layer.grow_delta_bias.get(name)
        if bias is not None and delta_bias is not None:
            bias = bias + delta_bias
    flat = x.reshape(-1, x.shape[-1])
    original_width = weight.shape[-1 if conv1d else 0]
    wide = original_width + new_weight.shape[-1 if conv1d else 0]
    out = flat.new_empty(flat.shape[0], wide)
    if chunks == 1:  # [original | new]
        project_into(out.narrow(1, 0, original_width), flat, weight, bias, conv1d)
        project_into(out.narrow(1, original_width, wide - original_width), flat, new_weight, new_bias, conv1d)
    else:  # per chunk: [original | new]
        p = original_width // chunks
        blocks = out.view(flat.shape[0], chunks, -1)
        parts = (_chunks(t, chunks, conv1d) for t in (weight, bias, new_weight, new_bias))
        for i, (w, b, nw, nb) in enumerate(zip(*parts, strict=True)):
            project_into(blocks[:, i, :p], flat, w, b, conv1d)
            project_into(blocks[:, i, p:], flat, nw, nb, conv1d)
    return out.view(*x.shape[:-1], wide)


def project_into(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv1d: bool
) -> None:
    """out = x @ W^T + b with `project`'s arithmetic, written into `out` (a block of columns of a larger matrix)
    so that forward_in_place needs no intermediate output to copy."""
    weight = weight if conv1d else weight.t()
    if bias is None:
        torch.mm(x, weight, out=out)
    else:
        torch.addmm(bias, x, weight, out=out)


def _chunks(tensor: torch.Tensor | None, chunks: int, conv1d: bool) -> tuple:
    """The `chunks` equal output blocks of a weight (in its module's layout) or bias; Nones for a missing bias."""
    if tensor is None:
        return (None,) * chunks
    return tensor.chunk(chunks, dim=-1 if conv1d and tensor.dim() == 2 else 0)
