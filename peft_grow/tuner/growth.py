"""The arithmetic of growth, once: pure functions on tensors, read by the dense layers, the experts layer, the
self-check and merging.

Tensors are in a canonical layout with any leading dimensions (one per expert in an experts module):

    up-side weight [..., c*p, h]   rows are units; c = 2 chunks (gate, up) in a fused module, else 1
    up-side bias   [..., c*p]
    down weight    [..., h, p]     columns are units

Growth by k adds k-1 new units per original one: on the up side after each chunk's original rows
([chunk 0 | its new rows | chunk 1 | its new rows], so that `chunk(c)` still pairs gate with gate), on the down
side after the original columns. The down side's original block is weighted `share`, its new columns start as
the init mode says; merged, the layer holds both side by side.

An init mode is one subclass of `Init`, registered in `INITS`: everything that differs between modes is a
method of it, and the layers, the experts layer, the self-check, merging and GrowConfig's validation all read it.
Adding one is one edit here (and its name in the `Literal` of `GrowConfig.init`, for type checkers), e.g. new
rows that copy the originals with new down columns that start at zero:

    class CopyRowsZeroColumns(ZeroInit):
        def new_rows(self, up, chunks, k, generator=None):
            return chunk_copies(up, chunks, k, dim=-2)

        def new_bias(self, bias, chunks, k):
            return chunk_copies(bias, chunks, k, dim=-1)

        def new_outputs(self, x, out, up, chunks, k, generator):
            return chunk_copies(out, chunks, k, dim=-1)

    INITS["copy-rows"] = CopyRowsZeroColumns()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .tensors import interleave


def chunk_copies(tensor: torch.Tensor, chunks: int, k: int, dim: int) -> torch.Tensor:
    """k-1 copies of each of the `chunks` equal parts of `tensor` along `dim`, grouped per part:
    [part 0 x (k-1) | part 1 x (k-1) ...]; what `interleave` puts after each original part."""
    dim = dim % tensor.ndim
    width = tensor.shape[dim] // chunks
    parts = tensor.unflatten(dim, (chunks, 1, width))
    copies = parts.expand(*parts.shape[: dim + 1], k - 1, *parts.shape[dim + 2 :])
    return copies.flatten(dim, dim + 2)


def zero_sum_noise(block: torch.Tensor, blocks: int, scale: float) -> torch.Tensor:
    """`blocks` random [h, p] blocks side by side ([h, blocks*p]) that sum to zero, std `scale` * std(block);
    for a stack of blocks ([E, h, p], one per expert), the same per expert."""
    if block.ndim == 3:
        return torch.stack([zero_sum_noise(expert, blocks, scale) for expert in block])
    h, p = block.shape
    noise = torch.randn(blocks, h, p, device=block.device, dtype=torch.float32)
    noise = noise * (scale * block.float().std())
    noise = noise - noise.mean(dim=0, keepdim=True)
    return noise.permute(1, 0, 2).reshape(h, blocks * p).to(block.dtype)


class Init:
    """How the new units start, so that the grown MLP computes the original function."""

    # G-Train (original rows trained, down side frozen): whether the new down columns must train anyway
    trains_new_columns: bool
    # whether down blocks start equal (and would stay equal where they train alike: docs/method.md)
    equal_down_blocks: bool

    def new_rows(self, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The new up-side rows [..., c*(k-1)*p, h] from the original ones [..., c*p, h]."""
        raise NotImplementedError

    def new_bias(self, bias: torch.Tensor, chunks: int, k: int) -> torch.Tensor:
        """The new up-side biases [..., c*(k-1)*p] from the original ones."""
        raise NotImplementedError

    def new_columns(self, down: torch.Tensor, k: int, symmetry_noise: float = 0.0) -> torch.Tensor:
        """The trained new down columns [..., h, (k-1)*p] from the original down weight [..., h, p]."""
        raise NotImplementedError

    def first_block(self, down: torch.Tensor, k: int) -> torch.Tensor:
        """The original down block as the grown layer holds it (merged)."""
        raise NotImplementedError

    def share(self, k: int) -> float:
        """The weight of the original down block, as the unmerged forward applies it."""
        raise NotImplementedError

    def new_outputs(
        self, x: torch.Tensor, out: torch.Tensor, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator
    ) -> torch.Tensor:
        """What the new rows output at their start for input `x`, given the original rows' output `out` and weight
        `up` [c*p, h] (the self-check computes it through hooks, without building the new rows where it can)."""
        raise NotImplementedError

    def collapse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The input of width p on which the original down weight computes what the grown down layer computes, at
        its start, on the k*p-wide `x`."""
        raise NotImplementedError


class CopyInit(Init):
    """New units copy the originals; the down side splits into k equal blocks W_down / k (the paper's growth)."""

    trains_new_columns = False  # G-Train keeps all k blocks W_down / k, frozen: down(x) = W_down @ mean of blocks
    equal_down_blocks = True

    def new_rows(self, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return chunk_copies(up, chunks, k, dim=-2)

    def new_bias(self, bias: torch.Tensor, chunks: int, k: int) -> torch.Tensor:
        return chunk_copies(bias, chunks, k, dim=-1)

    def new_columns(self, down: torch.Tensor, k: int, symmetry_noise: float = 0.0) -> torch.Tensor:
        block = down / k
        columns = block.repeat(*(1,) * (down.ndim - 1), k - 1)
        if symmetry_noise > 0 and k >= 3:  # the k-1 trained copies start equal
            columns = columns + zero_sum_noise(block, k - 1, symmetry_noise)
        return columns

    def first_block(self, down: torch.Tensor, k: int) -> torch.Tensor:
        return down / k

    def share(self, k: int) -> float:
        return 1.0 / k

    def new_outputs(
        self, x: torch.Tensor, out: torch.Tensor, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator
    ) -> torch.Tensor:
        return chunk_copies(out, chunks, k, dim=-1)

    def collapse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return x.unflatten(-1, (k, -1)).mean(dim=-2)


class ZeroInit(Init):
    """Fresh up rows at the scale of the pretrained ones; new down columns start at zero, so they train in either
    mode, and the original block keeps W_down unscaled (the paper's Appendix C.2 ablation)."""

    trains_new_columns = True
    equal_down_blocks = False

    def new_rows(self, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        rows = chunks * (k - 1) * (up.shape[-2] // chunks)
        device = "cpu" if generator is not None else up.device  # a seeded generator draws on the CPU
        fresh = torch.randn(*up.shape[:-2], rows, up.shape[-1], generator=generator, dtype=torch.float32, device=device)
        return (fresh * up.float().std()).to(device=up.device, dtype=up.dtype)

    def new_bias(self, bias: torch.Tensor, chunks: int, k: int) -> torch.Tensor:
        return bias.new_zeros(*bias.shape[:-1], (k - 1) * bias.shape[-1])

    def new_columns(self, down: torch.Tensor, k: int, symmetry_noise: float = 0.0) -> torch.Tensor:
        return down.new_zeros(*down.shape[:-1], (k - 1) * down.shape[-1])

    def first_block(self, down: torch.Tensor, k: int) -> torch.Tensor:
        return down

    def share(self, k: int) -> float:
        return 1.0

    def new_outputs(
        self, x: torch.Tensor, out: torch.Tensor, up: torch.Tensor, chunks: int, k: int, generator: torch.Generator
    ) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.new_rows(up, chunks, k, generator).to(x.device, x.dtype))

    def collapse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return x.unflatten(-1, (k, -1))[..., 0, :]


INITS: dict[str, Init] = {"copy": CopyInit(), "zero": ZeroInit()}


def frozen_noise(down: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """G-Train's symmetry noise [..., h, k*p]: the k frozen blocks W_down / k start equal, so they get a
    perturbation that sums to zero over the blocks."""
    return zero_sum_noise(down / k, k, scale)


def merged_up(up: torch.Tensor, new_rows: torch.Tensor, chunks: int, delta: torch.Tensor | None = None) -> torch.Tensor:
    """The wide up-side weight: the original rows (plus G-Train's delta), then the new rows, per chunk."""
    if delta is not None:
        up = up + delta.to(up.dtype)
    return interleave(up, new_rows.to(up.dtype), chunks, dim=-2)


def merged_up_bias(
    bias: torch.Tensor, new_bias: torch.Tensor, chunks: int, delta: torch.Tensor | None = None
) -> torch.Tensor:
    """The wide up-side bias, as `merged_up`."""
    if delta is not None:
        bias = bias + delta.to(bias.dtype)
    return interleave(bias, new_bias.to(bias.dtype), chunks, dim=-1)


def merged_down(
    down: torch.Tensor,
    k: int,
    init: str,
    new_columns: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The wide down weight [..., h, k*p]: the original block as `init` holds it, then the new columns; without new
    columns (G-Train from copies) k frozen blocks W_down / k; plus G-Train's frozen noise."""
    if new_columns is None:
        wide = (down / k).repeat(*(1,) * (down.ndim - 1), k)
    else:
        wide = torch.cat([INITS[init].first_block(down, k), new_columns.to(down.dtype)], dim=-1)
    if noise is not None:
        wide = wide + noise.to(wide.dtype)
    return wide


def zero_padded_up(up: torch.Tensor, chunks: int, extra: int) -> torch.Tensor:
    """The up-side weight widened by `extra` units per chunk of zero rows (they contribute exactly zero)."""
    return interleave(up, up.new_zeros(*up.shape[:-2], chunks * extra, up.shape[-1]), chunks, dim=-2)


def zero_padded_bias(bias: torch.Tensor, chunks: int, extra: int) -> torch.Tensor:
    return interleave(bias, bias.new_zeros(*bias.shape[:-1], chunks * extra), chunks, dim=-1)


def zero_padded_down(down: torch.Tensor, extra: int) -> torch.Tensor:
    """The down weight widened by `extra` zero columns."""
    return torch.cat([down, down.new_zeros(*down.shape[:-1], extra)], dim=-1)


def refuse_non_finite(adapter: str, tensors: Mapping[str, torch.Tensor | None], where: Callable[[str], str]) -> None:
    """Raise ValueError, in PEFT's wording (which its tools and tests match), if merging adapter `adapter` would
    write NaN or inf; `where(key)` names the place of the first broken tensor."""
    for key, tensor in tensors.items():
        if tensor is not None and not torch.isfinite(tensor).all():
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken: merging it would "
                f"write NaN or inf into {where(key)}. Nothing was merged."
            )
