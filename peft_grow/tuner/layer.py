"""Tuner layers that widen an MLP k times without changing its function at initialisation.

`GrowUpLayer` wraps an up-side projection (h -> c*p, c = 2 for a fused gate/up module): its output gains
k-1 copies of each of its c chunks, laid out `[chunk 0 | its copies | chunk 1 | its copies ...]` so that a
model splitting the output with `chunk(c)` still pairs gate with gate and up with up. `GrowDownLayer`
wraps the down projection (p -> h) and takes the k*p-wide input; block j of its columns is W_down / k.
Both wrap `nn.Linear` or GPT-2's `Conv1D` (weight stored transposed) and compute new parts with the same
arithmetic as the base module, so that k=2 in bfloat16 reproduces the base model bit for bit.

The base layer is never modified while an adapter is active: G-Train trains a zero-initialised delta on
the original rows, and merging widens the base layer in place but keeps the original tensors to restore.

Decoding calls every grown layer once per token on a handful of rows, where the cost is Python and operator
dispatch rather than arithmetic: the forwards read each tensor once and apply the base layer's arithmetic
(`project`) instead of calling its module, unless the module has hooks or a forward of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .tensors import BNB_WEIGHTS, PROJECTIONS, interleave, is_conv1d, linear_layout, linear_shape, set_projection


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
        return self.mode == "train" and self.init == "copy"

    @property
    def share(self) -> float:
        """The weight of the original down block: 1/k for copy init, 1 for zero init (its new columns start at 0)."""
        return 1.0 / self.k if self.init == "copy" else 1.0


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


def autocasting(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device (never for a device autocast does not know, such as meta)."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


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


def zero_sum_noise(block: torch.Tensor, blocks: int, scale: float) -> torch.Tensor:
    """`blocks` random [h, p] blocks side by side ([h, blocks*p]) that sum to zero, std `scale` * std(block)."""
    h, p = block.shape
    noise = torch.randn(blocks, h, p, device=block.device, dtype=torch.float32)
    noise = noise * (scale * block.float().std())
    noise = noise - noise.mean(dim=0, keepdim=True)
    return noise.permute(1, 0, 2).reshape(h, blocks * p).to(block.dtype)


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
        # kept while merged: the original weight and bias, or the quantized module itself
        self._original_base: tuple[nn.Parameter, nn.Parameter | None] | nn.Module | None = None

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

    def _active_parts(
        self, name: str, x: torch.Tensor
    ) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(base layer, its weight, its bias, new weight) for the active adapter `name`, for a forward on `x`;
        meta placeholders among the weights are refused unless `x` is on the meta device too.

        `base_layer` is the nn.Linear / Conv1D itself (checked in __init__), and all are read from the modules' own
        dicts: through nn.Module.__getattr__ and ParameterDict.__getitem__ each lookup costs a sizeable share of
        dispatching a small matmul, and decoding pays them for every grown layer at every token.
        """
        modules = self._modules
        base = modules["base_layer"]
        params = base._parameters
        weight, new_weight = params["weight"], modules["grow_new_weight"]._parameters.get(name)
        if weight.is_meta or (new_weight is not None and new_weight.is_meta):
            self._refuse_placeholders(x, weight)
        return base, weight, params.get("bias"), new_weight

    @staticmethod
    def _is_bare(base: nn.Module) -> bool:
        """Whether the wrapped module's arithmetic may be applied without calling it: a plain nn.Linear / Conv1D
        without hooks. One with hooks (accelerate's offloading) or a subclass with its own forward must be called."""
        return type(base) in PROJECTIONS and not (
            base._forward_hooks or base._forward_pre_hooks or "_hf_hook" in base.__dict__
        )

    @staticmethod
    def _refuse_placeholders(x: torch.Tensor, weight: torch.Tensor) -> None:
        """Called when a weight is on the meta device: raise unless the input is too (a forward on the meta device,
        for shape inference, is fine). Mixed with real inputs, F.linear and out= matmuls return uninitialised
        memory rather than fail; accelerate's offloading leaves such placeholders."""
        if not x.is_meta:
            raise RuntimeError(
                f"A grown layer over a weight of shape {tuple(weight.shape)} holds meta placeholders instead of "
                "weights, as accelerate's offloading leaves them. " + OFFLOADING_UNSUPPORTED
            )

    # -- adapters --
    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(
                f"Grown adapters change the width of the MLP, so only one can be active at a time; got {names}. "
                "Activate one with set_adapter(name)."
            )
        super().set_adapter(names, inference_mode=inference_mode)

    def _base_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
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

    def _perturb(self, adapter_name: str, scale: torch.Tensor) -> None:
        """init_weights=False: move every trained tensor off its function-preserving start."""
        with torch.no_grad():
            for store_name in self.adapter_layer_names:
                store = getattr(self, store_name)
                if adapter_name in store:
                    store[adapter_name].add_(torch.randn_like(store[adapter_name]) * scale)

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
        if not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
            base = self.get_base_layer()
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter {name} seems to be broken: merging it would write "
                f"NaN or inf into the layer wrapping {type(base).__name__} {tuple(base.weight.shape)}. Nothing was "
                "merged."  # PEFT's own wording first, which its tools and tests match
            )

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

    def __repr__(self) -> str:
        return "grow." + super().__repr__()


class GrowUpLayer(nn.Module, GrowLayer):
    """An up-side projection h -> c*p that outputs c*k*p: the original rows, then k-1 copies, per chunk."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, chunks: int = 1, **kwargs) -> None:
        nn.Module.__init__(self)
        GrowLayer.__init__(self, base_layer)
        self.update_layer(adapter_name, config, chunks)

    def update_layer(self, adapter_name: str, config, chunks: int = 1) -> None:
        settings = GrowSettings(config.k, config.mode, config.init, chunks)
        base = self.get_base_layer()
        weight = self._linear_weight()  # [c*p, h]
        out_features, h = weight.shape
        p, copies = out_features // chunks, config.k - 1
        with torch.no_grad():
            if config.init == "copy":
                new_weight = weight.reshape(chunks, 1, p, h).expand(chunks, copies, p, h).reshape(-1, h)
                new_bias = None if base.bias is None else base.bias.reshape(chunks, 1, p).expand(-1, copies, -1)
            else:  # fresh units at the scale of the pretrained rows
                new_weight = torch.randn(chunks * copies * p, h, device=weight.device, dtype=torch.float32)
                new_weight = (new_weight * weight.float().std()).to(weight.dtype)
                new_bias = None if base.bias is None else torch.zeros_like(base.bias).repeat(copies)
            self._add_parameter(self.grow_new_weight, adapter_name, self._native(new_weight))
            self._add_parameter(self.grow_new_bias, adapter_name, None if new_bias is None else new_bias.reshape(-1))
            if config.mode == "train":  # a delta on the original rows keeps the base weight untouched
                self._add_parameter(self.grow_delta_weight, adapter_name, self._native(torch.zeros_like(weight)))
                self._add_parameter(
                    self.grow_delta_bias, adapter_name, None if base.bias is None else torch.zeros_like(base.bias)
                )
        self.grow_settings[adapter_name] = settings
        if not config.init_weights:
            self._perturb(adapter_name, 0.1 * weight.float().std())
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._active_grown()
        if name is None:
            return self._base_forward(x, *args, **kwargs)
        settings = self.grow_settings[name]
        base, weight, bias, new_weight = self._active_parts(name, x)
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

    def _writes_in_place(
        self, x: torch.Tensor, name: str, settings: GrowSettings, weight: torch.Tensor, new_weight: torch.Tensor
    ) -> bool:
        """Whether to write the output blocks in place (called with autograd off: out= matmuls cannot record it):
        on enough rows for the saved copy to outweigh the extra operator calls (IN_PLACE_MIN_ROWS), and in one
        dtype, since autocast does not cast out= calls."""
        if x.numel() < IN_PLACE_MIN_ROWS * x.shape[-1] or autocasting(x):
            return False
        dtype = x.dtype
        delta = self.grow_delta_weight[name] if settings.mode == "train" else None
        return weight.dtype == dtype and new_weight.dtype == dtype and (delta is None or delta.dtype == dtype)

    def _forward_in_place(
        self,
        x: torch.Tensor,
        name: str,
        settings: GrowSettings,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_weight: torch.Tensor,
    ) -> torch.Tensor:
        """The grown output without concatenating: each matmul writes its block of one preallocated output.

        Computing the original and the new rows separately and concatenating them costs a copy of the whole
        wide activation; a block of columns of the output is a strided matrix that the matmul writes in place
        instead (see IN_PLACE_MIN_ROWS for when that pays).
        """
        chunks, conv1d = settings.chunks, self.conv1d
        new_bias = None if bias is None else self.grow_new_bias[name]
        if settings.mode == "train":  # the trained original rows are W + delta
            weight = weight + self.grow_delta_weight[name]
            delta_bias = self.grow_delta_bias.get(name)
            if bias is not None and delta_bias is not None:
                bias = bias + delta_bias
        flat = x.reshape(-1, x.shape[-1])
        original_width = weight.shape[-1 if conv1d else 0]
        wide = original_width + new_weight.shape[-1 if conv1d else 0]
        out = flat.new_empty(flat.shape[0], wide)
        if chunks == 1:  # [original | new]
            _project_into(out.narrow(1, 0, original_width), flat, weight, bias, conv1d)
            _project_into(out.narrow(1, original_width, wide - original_width), flat, new_weight, new_bias, conv1d)
        else:  # per chunk: [original | new]
            p = original_width // chunks
            blocks = out.view(flat.shape[0], chunks, -1)
            parts = (_chunks(t, chunks, conv1d) for t in (weight, bias, new_weight, new_bias))
            for i, (w, b, nw, nb) in enumerate(zip(*parts, strict=True)):
                _project_into(blocks[:, i, :p], flat, w, b, conv1d)
                _project_into(blocks[:, i, p:], flat, nw, nb, conv1d)
        return out.view(*x.shape[:-1], wide)

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
        settings, base = self.grow_settings[adapter_name], self.get_base_layer()
        weight = self._linear_weight()
        dtype = weight.dtype
        if adapter_name in self.grow_delta_weight:
            weight = weight + linear_layout(self.grow_delta_weight[adapter_name], self.conv1d).to(dtype)
        new_weight = linear_layout(self.grow_new_weight[adapter_name], self.conv1d).to(dtype)
        merged = self._native(interleave(weight, new_weight, settings.chunks, dim=0))
        if base.bias is None:
            return merged, None
        bias = base.bias
        if adapter_name in self.grow_delta_bias:
            bias = bias + self.grow_delta_bias[adapter_name].to(dtype)
        return merged, interleave(bias, self.grow_new_bias[adapter_name].to(dtype), settings.chunks, dim=0)


class GrowDownLayer(nn.Module, GrowLayer):
    """The down projection p -> h, fed k*p: x = [x_0 | x_1 ... x_{k-1}], block j weighted W_down / k."""

    widens_input = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs) -> None:
        nn.Module.__init__(self)
        GrowLayer.__init__(self, base_layer)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config, **kwargs) -> None:
        settings = GrowSettings(config.k, config.mode, config.init)
        weight = self._linear_weight()  # [h, p]
        k = config.k
        with torch.no_grad():
            block = weight / k
            if config.init == "zero":  # Appendix C.2: new columns start at zero and train in either mode
                self._add_parameter(
                    self.grow_new_weight, adapter_name, self._native(torch.zeros_like(weight).repeat(1, k - 1))
                )
            elif config.mode == "freeze":
                new_weight = block.repeat(1, k - 1)
                if config.symmetry_noise > 0 and k >= 3:  # the k-1 trained copies start equal
                    new_weight = new_weight + zero_sum_noise(block, k - 1, config.symmetry_noise)
                self._add_parameter(self.grow_new_weight, adapter_name, self._native(new_weight))
            elif config.symmetry_noise > 0:  # G-Train: all k frozen blocks are equal
                self.grow_noise[adapter_name] = self._native(zero_sum_noise(block, k, config.symmetry_noise))
        self.grow_settings[adapter_name] = settings
        if not config.init_weights:
            self._perturb(adapter_name, 0.1 * block.float().std())
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._active_grown()
        if name is None:
            return self._base_forward(x, *args, **kwargs)
        settings = self.grow_settings[name]
        base, weight, bias, new_weight = self._active_parts(name, x)
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
        settings, base = self.grow_settings[adapter_name], self.get_base_layer()
        weight, k = self._linear_weight(), settings.k
        dtype = weight.dtype
        if settings.mean_down:
            merged = (weight / k).repeat(1, k)
        else:
            first = weight / k if settings.init == "copy" else weight
            merged = torch.cat([first, linear_layout(self.grow_new_weight[adapter_name], self.conv1d).to(dtype)], dim=1)
        if adapter_name in self.grow_noise:
            merged = merged + linear_layout(self.grow_noise[adapter_name], self.conv1d).to(dtype)
        return self._native(merged), None if base.bias is None else base.bias


IN_PLACE_MIN_ROWS = 128
"""Fewest rows (tokens in one forward) for which unmerged inference writes the up-side blocks in place. Below it,
as in decoding, two matmuls and a concatenation are faster: the copy is small, and writing into strided blocks
costs more than it saves. Measured by benchmarks/in_place_rows.py on 2 CPU cores: decoding 1 or 8 sequences, 1.12-
1.14x of the merged model concatenating against 1.19-1.20x in place; 32 to 128 rows, within 1% either way; 256 to
2,048 tokens, in place 1-5% faster."""

OFFLOADING_UNSUPPORTED = (
    "Grown layers compute with the base weights and the new weights directly, so accelerate's offloading, which "
    "keeps weights elsewhere and puts them in place only around a module's own forward (meta placeholders "
    "otherwise), cannot serve them. "
    "Load the model without offloading (device_map=None, or a device_map with no 'cpu' or 'disk' entries), grow it, "
    "and do not offload the grown model (cpu_offload, disk_offload, dispatch_model with an offloading device_map)."
)


def refuse_offloaded(module: nn.Module) -> None:
    """Growth copies pretrained rows: refuse a module whose weight accelerate has offloaded (a meta placeholder)."""
    if module.weight.is_meta and "_hf_hook" in module.__dict__:
        raise RuntimeError(
            f"Cannot grow a {type(module).__name__} {tuple(module.weight.shape)} whose weights are offloaded by "
            "accelerate: the module holds a meta placeholder, and growth copies the pretrained rows. "
            + OFFLOADING_UNSUPPORTED
        )


def is_bnb_quantized(module: nn.Module) -> bool:
    return type(getattr(module, "weight", None)).__name__ in BNB_WEIGHTS


def bnb_dequantized(module: nn.Module) -> torch.Tensor:
    """The float weight [out, in] of a bitsandbytes 4-bit or 8-bit layer, without changing the layer.

    (PEFT's dequantize_module_weight resets an 8-bit layer's scales on CPU, after which it no longer runs.)
    """
    import bitsandbytes as bnb

    weight = module.weight
    if type(weight).__name__ == "Params4bit":
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights for its CPU kernel at the first forward and cannot unpack them
            # exactly; the kernel applied to the identity gives the weight it computes with, bias aside
            with torch.no_grad():
                eye = torch.eye(module.in_features, dtype=quantized_compute_dtype(module), device=weight.device)
                transposed = module(eye)
                return (transposed if module.bias is None else transposed - module.bias).T.contiguous()
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    scales = getattr(weight, "SCB", None)
    scales = scales if scales is not None else module.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def quantized_compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a bitsandbytes layer computes in (its float copies are made in it)."""
    dtype = getattr(module, "compute_dtype", None)
    return dtype if dtype is not None else (module.bias.dtype if module.bias is not None else torch.float32)


def dequantized_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain nn.Linear holding `weight` and `bias` (merged, dequantized), on the quantized module's device."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone().to(weight.dtype), requires_grad=False)
    return linear


def refuse_unsupported_quantization(module: nn.Module) -> None:
    """Quantized weights other than bitsandbytes' cannot be copied row by row: refuse them with the way out."""
    message = unsupported_quantization(module)
    if message is not None:
        raise TypeError(message)


def unsupported_quantization(module: nn.Module, name: str | None = None) -> str | None:
    """Why growth cannot serve this quantized layer (GPTQ, AWQ, HQQ, torchao, ...) and what to do, else None."""
    kind = quantization_kind(module)
    if kind is None:
        return None
    layer = type(module).__name__ if name is None else f"{name} ({type(module).__name__})"
    return (
        f"{layer} holds {kind} weights, which peft-grow cannot copy row by row. Growth supports "
        "float weights and bitsandbytes 4-bit / 8-bit bases (BitsAndBytesConfig): load the base that way, or "
        "dequantize it first."
    )


def quantization_kind(module: nn.Module) -> str | None:
    """The quantization scheme of a layer that growth cannot serve (GPTQ, AWQ, HQQ, torchao, ...), else None."""
    if hasattr(module, "qweight"):  # GPTQ / AWQ / EETQ-style packed layers
        return f"packed quantized ({type(module).__module__.split('.')[0]})"
    if hasattr(module, "W_q"):
        return "HQQ-quantized"
    weight_type = type(getattr(module, "weight", None))
    if weight_type.__module__.startswith("torchao."):
        return f"torchao-quantized ({weight_type.__name__})"
    return None


def refuse_partitioned(module: nn.Module) -> None:
    """Growth copies pretrained rows, so it needs whole weights: refuse a DeepSpeed ZeRO-3 partitioned one."""
    weight = module.weight
    if getattr(weight, "ds_id", None) is None:  # the attribute DeepSpeed gives every ZeRO-3 parameter
        return
    raise RuntimeError(
        f"Cannot grow a {type(module).__name__} whose weight (full shape {tuple(getattr(weight, 'ds_shape', ()))}) "
        f"is partitioned by DeepSpeed ZeRO-3: this process holds {weight.numel()} of its values, and growth copies "
        "whole rows. Grow the model before DeepSpeed partitions it: load it and call get_peft_model before creating "
        "the TrainingArguments / SFTConfig that name the ZeRO-3 config (transformers then loads without zero.Init), "
        "and pass the grown model to the trainer; DeepSpeed partitions the new weights with the rest. Or use FSDP2."
    )


def _chunks(tensor: torch.Tensor | None, chunks: int, conv1d: bool) -> tuple:
    """The `chunks` equal output blocks of a weight (in its module's layout) or bias; Nones for a missing bias."""
    if tensor is None:
        return (None,) * chunks
    return tensor.chunk(chunks, dim=-1 if conv1d and tensor.dim() == 2 else 0)


def _project_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias, conv1d: bool) -> None:
    """out = x @ W^T + b, written into `out` (a block of columns of a larger matrix), with project()'s arithmetic."""
    weight = weight if conv1d else weight.t()
    if bias is None:
        torch.mm(x, weight, out=out)
    else:
        torch.addmm(bias, x, weight, out=out)
