"""Tuner layers that widen an MLP k times without changing its function at initialisation.

Growth by k, in nn.Linear's layout ([out, in]; GPT-2's Conv1D stores the transpose), with c = 2 chunks (gate, up)
for a fused up-side module that the model splits with `chunk(2)` and c = 1 otherwise:

    GrowUpLayer, h -> c*k*p                     GrowDownLayer, k*p -> h: column block j reads x_j
                                                          x_0          x_1                x_{k-1}
             +-----+                                +------------+------------+-----+------------+
    chunk 0  | W_0 |  original rows (base layer)    |  W_down/k  |  W_down/k  | ... |  W_down/k  |  + b, once
             | W_0 |  copy 1                        +------------+------------+-----+------------+
             | ... |                                   base layer    new columns: k-1 blocks
             | W_0 |  copy k-1
    chunk 1  | W_1 |  original rows
             | ... |  copy 1 ... copy k-1
             +-----+
    output [chunk 0 | its copies | chunk 1 | its copies], so that `chunk(c)` still pairs gate with gate

                 W_up: original rows    copies (+ bias)      W_down: block 0     blocks 1..k-1
    G-Freeze     frozen                 trained              frozen              trained
    G-Train      trained, as W + delta  trained              frozen              frozen: W_down applied to mean_j x_j
    init="zero"  (as the mode)          fresh, bias 0        W_down, not / k     zeros, trained in either mode

With copied rows the k activation blocks are equal and the k column blocks add up to W_down; with init="zero" the
new columns start at 0: either way the grown MLP starts out computing the original function. `GrowSettings.share`
is block 0's weight (1/k, or 1 for init="zero"), `mean_down` the G-Train shortcut. With symmetry_noise, the down
blocks that start equal get a perturbation whose blocks sum to zero: G-Freeze's k-1 trained blocks (k >= 3), or
G-Train's k frozen ones (a saved buffer, `grow_noise`).

The new parts are computed with the same arithmetic as the base module (`project`), so that k=2 in bfloat16
reproduces the base model bit for bit. The base layer is never modified while an adapter is active: G-Train
trains a zero-initialised delta on the original rows, and merging widens the base layer in place but keeps the
original tensors to restore. The forwards' decode fast paths are in `_fast_paths`, the quantized and refused
weights in `quantization`, and mixture-of-experts modules in `experts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from . import _fast_paths
from ._fast_paths import autocasting
from .growth import INITS, frozen_noise, merged_down, merged_up, merged_up_bias, refuse_non_finite
from .quantization import (
    bnb_dequantized,
    dequantized_linear,
    is_bnb_quantized,
    quantized_compute_dtype,
    refuse_offloaded,
    refuse_partitioned,
    refuse_unsupported_quantization,
)
from .stores import DOWN, UP, filled_stores
from .tensors import PROJECTIONS, interleave, is_conv1d, linear_layout, linear_shape, set_projection

if TYPE_CHECKING:
    from .config import GrowConfig


# what a merged layer keeps to unmerge exactly: the original weight and bias; a quantized layer's module itself; an
# experts layer's original tensors by name
OriginalBase = tuple[nn.Parameter, nn.Parameter | None] | nn.Module | dict[str, nn.Parameter]


@dataclass(frozen=True)
class GrowSettings:
    """What one adapter does to one layer."""

    k: int
    mode: str  # "freeze" | "train"
    init: str  # "copy" | "zero"
    chunks: int = 1  # projections stacked in a fused up-side module

    @property
    def mean_down(self) -> bool:
        """G-Train from copies: every down block is the frozen W_down / k, so down(x) = W_down @ mean of blocks."""
        return self.mode == "train" and not INITS[self.init].trains_new_columns

    @property
    def share(self) -> float:
        """The weight of the original down block: 1/k for copy init, 1 for zero init (its new columns start at 0)."""
        return INITS[self.init].share(self.k)


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv1d: bool) -> torch.Tensor:
    """x @ W^T + b with `weight` in the layout of the base module (Conv1D: [in, out]) and its arithmetic.

    A block of columns of a wide activation (`x[..., :p]`) is a strided view that the matmul reads in place:
    F.linear and the flattening below fold the leading dimensions into a view, not a copy.
    """
    if not conv1d:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight
    return out.view(*x.shape[:-1], out.shape[-1])


def matmul_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` for a matmul with weights of `dtype`: cast, except under autocast, which casts matmul inputs itself.

    With PEFT's float32 new weights on a bfloat16 model under autocast, casting first would copy every
    activation to float32 only for autocast to cast it back (bit-identical, but two wasted passes).
    """
    if x.dtype == dtype or autocasting(x):
        return x
    return x.to(dtype)


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), without the call when it would return x itself (decode pays for every call)."""
    return x if x.dtype == dtype else x.to(dtype)


class GrowLayer(BaseTunerLayer):
    """State and adapter bookkeeping shared by the up-side and down layers.

    Trainable tensors live in ParameterDicts keyed by adapter name (PEFT's convention, so saving, deleting and
    device moves work as for LoRA); frozen ones that an adapter needs to be exact (the symmetry-breaking
    perturbation of G-Train) live in a persistent BufferDict and are saved with it.
    """

    adapter_layer_names = ("grow_new_weight", "grow_new_bias", "grow_delta_weight", "grow_delta_bias")
    other_param_names = ("grow_noise", "grow_settings")

    def __init__(self, base_layer: nn.Module) -> None:
        if not isinstance(base_layer, PROJECTIONS):
            raise TypeError(f"peft-grow wraps nn.Linear or Conv1D modules, got {type(base_layer).__name__}.")
        refuse_partitioned(base_layer)
        refuse_offloaded(base_layer)
        refuse_unsupported_quantization(base_layer)
        self._init_adapter_state(base_layer)
        self.conv1d = is_conv1d(base_layer)
        self.quantized = is_bnb_quantized(base_layer)  # original rows: the quantized layer; new ones: float copies

    def _init_adapter_state(self, base_layer: nn.Module) -> None:
        """The wrapped module and the per-adapter stores, empty."""
        self.base_layer = base_layer
        self.grow_new_weight = nn.ParameterDict()
        self.grow_new_bias = nn.ParameterDict()
        self.grow_delta_weight = nn.ParameterDict()
        self.grow_delta_bias = nn.ParameterDict()
        self.grow_noise = BufferDict({}, persistent=True)
        self.grow_settings: dict[str, GrowSettings] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._original_base: OriginalBase | None = None

    # -- feature counts as PEFT's layers expose them: the widths the layer computes with now --
    @property
    def in_features(self) -> int:
        return linear_shape(self.get_base_layer())[0] * (self._active_k() if self.widens_input else 1)

    @property
    def out_features(self) -> int:
        return linear_shape(self.get_base_layer())[1] * (1 if self.widens_input else self._active_k())

    widens_input = False  # the down projection takes the wider input; up-side projections give the wider output

    def _active_k(self) -> int:
        """The growth factor applied around the base layer now: 1 when disabled or merged (a merged base layer is
        already wide), else the active adapter's k. Unlike the forward, this never unmerges."""
        if self.disable_adapters or self.merged:
            return 1
        active = self.active_adapter
        name = active if isinstance(active, str) else next(iter(active), None)
        settings = self.grow_settings.get(name)
        return settings.k if settings is not None else 1

    # -- layouts: new tensors are built in Linear layout [out, in] and stored in the base module's layout --
    def _linear_weight(self) -> torch.Tensor:
        """The base weight in Linear layout [out, in], dequantized (in the layer's compute dtype) if quantized."""
        base = self.get_base_layer()
        if self.quantized:
            return bnb_dequantized(base).to(quantized_compute_dtype(base))
        return linear_layout(base.weight, self.conv1d)

    def _native(self, tensor: torch.Tensor) -> torch.Tensor:
        return linear_layout(tensor, self.conv1d).contiguous()

    def _add_parameter(self, store: nn.ParameterDict, adapter_name: str, value: torch.Tensor | None) -> None:
        if value is not None:
            store[adapter_name] = nn.Parameter(value.detach().clone())

    # -- adapters --
    def _finish_update(
        self, adapter_name: str, settings: GrowSettings, config: GrowConfig, perturbation: Callable[[], torch.Tensor]
    ) -> None:
        """The tail of every update_layer, once the new tensors are stored: record `settings`; for init_weights=False
        add noise of std `perturbation()` (computed only then) to the trained tensors; move the new tensors to the
        base layer's device; keep the active adapter active."""
        self.grow_settings[adapter_name] = settings
        if not config.init_weights:
            self._perturb(adapter_name, perturbation())
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _perturb(self, adapter_name: str, scale: torch.Tensor) -> None:
        """init_weights=False: move every trained tensor off its function-preserving start."""
        with torch.no_grad():
            for store_name in self.adapter_layer_names:
                store = getattr(self, store_name)
                if adapter_name in store:
                    store[adapter_name].add_(torch.randn_like(store[adapter_name]) * scale)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(
                f"Grown adapters change the width of the MLP, so only one can be active at a time; got {names}. "
                "Activate one with set_adapter(name)."
            )
        super().set_adapter(names, inference_mode=inference_mode)

    # -- forward: the head shared by the up-side and down layers, which compute the rest in _grown_forward --
    _active_parts = _fast_paths.active_parts  # decode fast paths: see _fast_paths
    _is_bare = staticmethod(_fast_paths.is_bare)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._active_grown()
        if name is None:
            return self._base_forward(x, *args, **kwargs)
        base, weight, bias, new_weight = self._active_parts(name, x)
        # the extra arguments pass as a tuple and a dict: unpacking them again would cost decode more than this call
        return self._grown_forward(x, name, self.grow_settings[name], base, weight, bias, new_weight, args, kwargs)

    def _grown_forward(
        self,
        x: torch.Tensor,
        name: str,
        settings: GrowSettings,
        base: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_weight: torch.Tensor | None,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """The output with adapter `name` applied unmerged, from the tensors `_active_parts` read."""
        raise NotImplementedError

    def _base_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The wrapped layer alone. A quantized layer merged into a plain one computes in the quantized layer's
        compute dtype, and casts as bitsandbytes does (inputs in, outputs back)."""
        if self.quantized and self.merged:
            weight = self.base_layer.weight
            return self.base_layer(cast(x, weight.dtype), *args, **kwargs).to(x.dtype)
        return self.base_layer(x, *args, **kwargs)

    def _active_grown(self) -> str | None:
        """The active adapter if it grows this layer and is applied unmerged, else None (plain base layer).

        With adapters disabled, a merged layer is unmerged first, as PEFT's own layers do in their forward.
        """
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return None
        if self.merged:
            return None
        active = self.active_adapter  # a name, or a list of at most one (set_adapter refuses more)
        name = active if isinstance(active, str) else next(iter(active), None)
        return name if name in self.grow_settings else None

    # -- merging: widen the base layer in place, keep the original tensors for an exact unmerge --
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        name = self._adapter_to_merge(adapter_names)
        if name is None:
            return
        with torch.no_grad():
            weight, bias = self._merged_tensors(name)
        if safe_merge:
            self._check_finite(name, weight, bias)
        base = self.get_base_layer()
        if self.quantized:  # merged into a plain, dequantized, wider layer; the quantized one is kept to unmerge
            self._original_base = base
            self.base_layer = dequantized_linear(base, weight, bias)
        else:
            self._original_base = (base.weight, base.bias)
            self._set_base(weight, bias)
        self.merged_adapters.append(name)

    def check_merge(self, adapter_names: list[str] | None = None) -> None:
        """Raise if merging would write NaN or inf; changes nothing (GrowModel runs it on every layer first)."""
        name = self._adapter_to_merge(adapter_names)
        if name is not None:
            with torch.no_grad():
                self._check_finite(name, *self._merged_tensors(name))

    def _adapter_to_merge(self, adapter_names: list[str] | None) -> str | None:
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.grow_settings]
        if not adapter_names:
            return None
        if len(adapter_names) > 1 or self.merged:
            raise ValueError(
                f"Only one grown adapter can be merged into a layer at a time; asked to merge {adapter_names} "
                f"with {self.merged_adapters} already merged. Unmerge first, or merge one adapter."
            )
        return adapter_names[0]

    def _check_finite(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        base = self.get_base_layer()
        place = f"the layer wrapping {type(base).__name__} {tuple(base.weight.shape)}"
        refuse_non_finite(name, {"weight": weight, "bias": bias}, lambda key: place)

    def unmerge(self) -> None:
        if not self.merged:  # e.g. a layer that the merged adapter does not grow
            return
        if isinstance(self._original_base, nn.Module):  # a quantized layer merged into a plain one
            self.base_layer = self._original_base
        else:
            set_projection(self.get_base_layer(), *self._original_base)
        self._original_base = None
        self.merged_adapters.clear()

    def _set_base(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        base = self.get_base_layer()
        weight = nn.Parameter(weight.to(base.weight.dtype), requires_grad=base.weight.requires_grad)
        if bias is not None:
            bias = nn.Parameter(bias.to(base.bias.dtype), requires_grad=base.bias.requires_grad)
        set_projection(base, weight, bias)

    def _merged_tensors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class GrowUpLayer(nn.Module, GrowLayer):
    """An up-side projection h -> c*p that outputs c*k*p: the original rows, then k-1 copies, per chunk."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: GrowConfig, chunks: int = 1, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        GrowLayer.__init__(self, base_layer)
        self.update_layer(adapter_name, config, chunks)

    def update_layer(self, adapter_name: str, config: GrowConfig, chunks: int = 1) -> None:
        settings = GrowSettings(config.k, config.mode, config.init, chunks)
        base = self.get_base_layer()
        weight = self._linear_weight()  # [c*p, h]
        init = INITS[config.init]
        stores = filled_stores(UP, config.mode, config.init, bias=base.bias is not None)
        with torch.no_grad():
            new_weight = init.new_rows(weight, chunks, config.k)
            self._add_parameter(self.grow_new_weight, adapter_name, self._native(new_weight))
            if "grow_new_bias" in stores:
                self._add_parameter(self.grow_new_bias, adapter_name, init.new_bias(base.bias, chunks, config.k))
            if "grow_delta_weight" in stores:  # G-Train: a delta on the original rows keeps the base weight untouched
                self._add_parameter(self.grow_delta_weight, adapter_name, self._native(torch.zeros_like(weight)))
            if "grow_delta_bias" in stores:
                self._add_parameter(self.grow_delta_bias, adapter_name, torch.zeros_like(base.bias))
        self._finish_update(adapter_name, settings, config, lambda: 0.1 * weight.float().std())

    forward = GrowLayer.forward  # nn.Module's comes first in the bases

    # decode fast paths, with autograd off (_fast_paths)
    _writes_in_place = _fast_paths.writes_in_place
    _forward_in_place = _fast_paths.forward_in_place

    def _grown_forward(
        self,
        x: torch.Tensor,
        name: str,
        settings: GrowSettings,
        base: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_weight: torch.Tensor,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """The original rows through the base layer's arithmetic (G-Train: W + delta), the new rows through the new
        weight, interleaved per chunk; written in place on many rows at inference (_fast_paths)."""
        bare = self._is_bare(base)
        if bare and not torch.is_grad_enabled() and self._writes_in_place(x, name, settings, weight, new_weight):
            return self._forward_in_place(x, name, settings, weight, bias, new_weight)
        if settings.mode == "train":
            original = self._trained_original_rows(x, name)
        elif bare:
            original = project(x, weight, bias, self.conv1d)
        else:  # hooks on the wrapped module must run
            original = base(x, *args, **kwargs)
        new_bias = None if bias is None else self.grow_new_bias[name]
        new = project(matmul_input(x, new_weight.dtype), new_weight, new_bias, self.conv1d)
        return interleave(original, cast(new, original.dtype), settings.chunks, dim=-1)

    def _trained_original_rows(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """G-Train's original rows, W + delta, in one matmul on the sum (the base weight itself is not modified).

        Adding the delta to the weight (p*h additions) saves the separate x @ delta matmul (2*T*p*h) and its
        input-gradient matmul; the output has the dtype the base layer would give.
        """
        base = self.get_base_layer()
        delta = self.grow_delta_weight[name]
        if self.quantized:  # the quantized layer computes W x + b; the delta goes through its own matmul
            delta_bias = self.grow_delta_bias.get(name)
            extra = project(matmul_input(x, delta.dtype), delta, delta_bias, self.conv1d)
            out = base(x)
            return out + cast(extra, out.dtype)
        bias = base.bias
        if bias is not None and name in self.grow_delta_bias:
            bias = bias.to(delta.dtype) + self.grow_delta_bias[name]
        out = project(matmul_input(x, delta.dtype), base.weight.to(delta.dtype) + delta, bias, self.conv1d)
        dtype = torch.get_autocast_dtype(x.device.type) if autocasting(x) else base.weight.dtype
        return out.to(dtype)

    def _merged_tensors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunks, base = self.grow_settings[adapter_name].chunks, self.get_base_layer()
        delta = self.grow_delta_weight.get(adapter_name)
        weight = merged_up(
            self._linear_weight(),
            linear_layout(self.grow_new_weight[adapter_name], self.conv1d),
            chunks,
            None if delta is None else linear_layout(delta, self.conv1d),
        )
        if base.bias is None:
            return self._native(weight), None
        bias = merged_up_bias(
            base.bias, self.grow_new_bias[adapter_name], chunks, self.grow_delta_bias.get(adapter_name)
        )
        return self._native(weight), bias


class GrowDownLayer(nn.Module, GrowLayer):
    """The down projection p -> h, fed k*p: x = [x_0 | x_1 ... x_{k-1}], block j weighted W_down / k."""

    widens_input = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GrowConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        GrowLayer.__init__(self, base_layer)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: GrowConfig, **kwargs: Any) -> None:
        settings = GrowSettings(config.k, config.mode, config.init)
        weight = self._linear_weight()  # [h, p]
        k, noise = config.k, config.symmetry_noise
        stores = filled_stores(DOWN, config.mode, config.init, noise=noise > 0)
        with torch.no_grad():
            if "grow_new_weight" in stores:
                new_weight = INITS[config.init].new_columns(weight, k, noise)
                self._add_parameter(self.grow_new_weight, adapter_name, self._native(new_weight))
            if "grow_noise" in stores:  # G-Train: all k frozen blocks are equal
                self.grow_noise[adapter_name] = self._native(frozen_noise(weight, k, noise))
        self._finish_update(adapter_name, settings, config, lambda: 0.1 * (weight / k).float().std())

    forward = GrowLayer.forward  # nn.Module's comes first in the bases

    def _grown_forward(
        self,
        x: torch.Tensor,
        name: str,
        settings: GrowSettings,
        base: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_weight: torch.Tensor | None,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """Block 0 through the base layer, the others through the new columns (G-Train from copies: the base
        layer on the mean of the blocks), plus G-Train's frozen noise."""
        if settings.mean_down:  # G-Train: no new weight
            out = base(x.unflatten(-1, (settings.k, -1)).mean(dim=-2))
        else:
            out = self._blockwise(x, base, weight, bias, new_weight, settings)
        noise = self._modules["grow_noise"]._buffers.get(name)  # self.grow_noise.get(name), as in _active_parts
        if noise is not None:
            out = out + cast(project(matmul_input(x, noise.dtype), noise, None, self.conv1d), out.dtype)
        return out

    def _blockwise(
        self,
        x: torch.Tensor,
        base: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_weight: torch.Tensor,
        settings: GrowSettings,
    ) -> torch.Tensor:
        """Block 0 through the base layer weighted `share`, the other blocks through the new columns.

        copy init: block 0 is W/k, applied as (x0 @ W + b) / k, and the new blocks add b(k-1)/k: with k a power of
        two both halves round exactly like the base layer's own fused x0 @ W + b, and the sum, one `add` with
        alpha, rounds once. zero init: block 0 is W itself (share 1). Blocks are column views of the activation.
        """
        share, conv1d = settings.share, self.conv1d
        p = x.shape[-1] // settings.k
        first = project(x[..., :p], weight, bias, conv1d) if self._is_bare(base) else base(x[..., :p])
        rest_bias = None if bias is None or share == 1.0 else cast(bias * (1.0 - share), new_weight.dtype)
        rest = project(matmul_input(x[..., p:], new_weight.dtype), new_weight, rest_bias, conv1d)
        return torch.add(cast(rest, first.dtype), first, alpha=share)

    def _merged_tensors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        settings = self.grow_settings[adapter_name]
        new_weight = self.grow_new_weight.get(adapter_name)
        noise = self.grow_noise[adapter_name] if adapter_name in self.grow_noise else None  # noqa: SIM401  (BufferDict has no get)
        merged = merged_down(
            self._linear_weight(),
            settings.k,
            settings.init,
            None if new_weight is None else linear_layout(new_weight, self.conv1d),
            None if noise is None else linear_layout(noise, self.conv1d),
        )
        return self._native(merged), self.get_base_layer().bias
