"""The layouts of the tensors growth widens, in one place for the layers, the self-check and export.

nn.Linear stores its weight as [out, in]; GPT-2's Conv1D stores it transposed, [in, out]. Growth works in
nn.Linear's layout and converts at the edges with `linear_layout`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

BNB_WEIGHTS = ("Params4bit", "Int8Params")  # bitsandbytes' 4-bit and 8-bit weights, which growth supports


PROJECTIONS = (nn.Linear, Conv1D)  # the modules growth widens (experts modules have a layer of their own)


def is_conv1d(module: nn.Module) -> bool:
    """Whether `module` stores its weight transposed, as GPT-2's Conv1D does ([in, out])."""
    return isinstance(module, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D, read from the weight itself (from the
    module's counts for bitsandbytes layers, whose packed weights have other shapes)."""
    if type(module.weight).__name__ in BNB_WEIGHTS:
        return module.in_features, module.out_features
    rows, cols = module.weight.shape
    return (rows, cols) if is_conv1d(module) else (cols, rows)


def linear_layout(tensor: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A weight in nn.Linear's [out, in] layout from a Conv1D's [in, out] one, or back (a transposed view)."""
    return tensor.t() if conv1d else tensor


def set_projection(module: nn.Module, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
    """Give an nn.Linear or Conv1D new (possibly wider) parameters and keep its feature counts in step."""
    module.weight = weight
    if bias is not None:
        module.bias = bias
    in_features, out_features = linear_shape(module)
    if is_conv1d(module):
        module.nx, module.nf = in_features, out_features
    else:
        module.in_features, module.out_features = in_features, out_features


def interleave(original: torch.Tensor, new: torch.Tensor, chunks: int, dim: int) -> torch.Tensor:
    """[o_0 | n_0 | o_1 | n_1 ...] from `original` and `new`, each split into `chunks` equal parts along `dim`."""
    if chunks == 1:
        return torch.cat([original, new], dim=dim)
    pairs = zip(original.chunk(chunks, dim=dim), new.chunk(chunks, dim=dim), strict=True)
    return torch.cat([part for pair in pairs for part in pair], dim=dim)
