"""Mixture-of-experts blocks: every expert of a fused experts module grows the way a dense MLP does.

transformers 5 stores the experts of a block as 3-D parameters of one module, marked by its
`@use_experts_implementation` decorator (attributes `has_gate`, `has_bias`, `is_transposed`, `is_concatenated`):

    gate_up_proj [E, 2p, h]  (or up_proj [E, p, h] without a gate)     down_proj [E, h, p]
    ([E, h, 2p] and [E, p, h] where is_transposed); biases [E, 2p] and [E, h] where has_bias

Growth widens p to k*p in every expert, as for a dense MLP: the up side gains k-1 copies of its rows per gate/up
half ([gate; up] concatenated) or as whole rows (gate/up pairs interleaved, gpt-oss), and the down side splits
into k column blocks of W_down / k. The router and the down bias are left alone; shared experts are plain MLPs
and grow as such (peft_grow.tuner.architectures).

The grown layer calls the experts module's own forward (whichever experts implementation the model runs: eager
loops, batched or grouped matmuls) on wide tensors assembled at each call with `torch.func.functional_call`, so
the original tensors are never modified and the new ones are ordinary trainable parameters. The k down blocks
are summed inside one matmul, so the grown model equals the base up to float rounding, not bit for bit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from .growth import (
    INITS,
    frozen_noise,
    merged_down,
    merged_up,
    merged_up_bias,
    refuse_non_finite,
    zero_padded_bias,
    zero_padded_down,
    zero_padded_up,
)
from .layer import GrowLayer, GrowSettings
from .quantization import refuse_offloaded, refuse_partitioned, refuse_unsupported_quantization
from .stores import EXPERTS, filled_stores

if TYPE_CHECKING:
    from .config import GrowConfig

DECORATOR_ATTRIBUTES = ("has_gate", "has_bias", "is_transposed", "is_concatenated")


@dataclass(frozen=True)
class ExpertsLayout:
    """Where an experts module keeps its tensors and how its up side splits."""

    up: str  # "gate_up_proj" or "up_proj"
    chunks: int  # 2 for [gate; up] concatenated along the width; 1 otherwise (interleaved pairs copy as whole rows)
    transposed: bool  # weights stored [E, in, out]
    bias: bool

    @property
    def up_bias(self) -> str:
        return self.up + "_bias"

    @property
    def tensors(self) -> tuple[str, ...]:
        """The names of the experts module's tensors that growth widens."""
        return (self.up, "down_proj", *((self.up_bias,) if self.bias else ()))


# experts modules without the decorator that store the same tensors: class name -> layout
UNDECORATED = {
    # Llama 4: gate_up_proj [E, h, 2p], down_proj [E, p, h]; tokens arrive sorted by expert, one bmm per side
    "Llama4TextExperts": ExpertsLayout("gate_up_proj", chunks=2, transposed=True, bias=False),
}


def experts_layout(module: nn.Module) -> ExpertsLayout | None:
    """The layout of a transformers experts module with fused 3-D weights, else None."""
    if type(module).__name__ in UNDECORATED:
        layout = UNDECORATED[type(module).__name__]
        params = module._parameters
        return (
            layout if all(params.get(n) is not None and params[n].ndim == 3 for n in (layout.up, "down_proj")) else None
        )
    if not all(hasattr(module, name) for name in DECORATOR_ATTRIBUTES):
        return None
    up = "gate_up_proj" if module.has_gate else "up_proj"
    params = module._parameters
    if any(params.get(name) is None or params[name].ndim != 3 for name in (up, "down_proj")):
        return None
    chunks = 2 if module.has_gate and module.is_concatenated else 1
    layout = ExpertsLayout(up, chunks, bool(module.is_transposed), bool(module.has_bias))
    if layout.bias and params.get(layout.up_bias) is None:
        return None
    return layout


def experts_shape(module: nn.Module, layout: ExpertsLayout) -> tuple[int, int, int]:
    """(number of experts, hidden size h, width p of each expert)."""
    experts, hidden, width = _canonical(module.down_proj, layout.transposed).shape
    return experts, hidden, width


def _canonical(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Up [E, out, in] / down [E, h, p] from the stored layout, or back (a transposed view)."""
    return tensor.transpose(1, 2) if transposed else tensor


def grown_tensors(
    module: nn.Module,
    layout: ExpertsLayout,
    settings: GrowSettings,
    new_up: torch.Tensor,
    new_up_bias: torch.Tensor | None = None,
    delta_up: torch.Tensor | None = None,
    delta_up_bias: torch.Tensor | None = None,
    new_down: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The experts module's tensors widened k times, in its own layout, from the original ones and the new parts
    (all canonical: new up rows [E, c(k-1)p, h], new down columns [E, h, (k-1)p], noise [E, h, kp])."""
    up = _canonical(getattr(module, layout.up), layout.transposed)
    tensors = {layout.up: _canonical(merged_up(up, new_up, settings.chunks, delta_up), layout.transposed)}
    if layout.bias:
        bias = getattr(module, layout.up_bias)
        tensors[layout.up_bias] = merged_up_bias(bias, new_up_bias, settings.chunks, delta_up_bias)
    down = _canonical(module.down_proj, layout.transposed)
    wide = merged_down(down, settings.k, settings.init, new_down, noise)
    tensors["down_proj"] = _canonical(wide, layout.transposed)
    return tensors


def initial_parts(
    module: nn.Module, layout: ExpertsLayout, config: GrowConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The new tensors of one adapter at their function-preserving start, keyed by grown_tensors' arguments."""
    up = _canonical(getattr(module, layout.up), layout.transposed).detach()
    down = _canonical(module.down_proj, layout.transposed).detach()
    init, k, noise = INITS[config.init], config.k, config.symmetry_noise
    stores = filled_stores(EXPERTS, config.mode, config.init, noise=noise > 0, bias=layout.bias)
    fills = {argument for argument, store in STORES.items() if store in stores}
    parts = {"new_up": init.new_rows(up, layout.chunks, k, generator)}
    if "new_up_bias" in fills:
        parts["new_up_bias"] = init.new_bias(getattr(module, layout.up_bias).detach(), layout.chunks, k)
    if "delta_up" in fills:  # G-Train: the original rows train through a zero-initialised delta
        parts["delta_up"] = torch.zeros_like(up)
    if "delta_up_bias" in fills:
        parts["delta_up_bias"] = torch.zeros_like(getattr(module, layout.up_bias))
    if "new_down" in fills:
        parts["new_down"] = init.new_columns(down, k, noise)
    if "noise" in fills:  # G-Train: all k frozen blocks are equal
        parts["noise"] = frozen_noise(down, k, noise)
    return parts


# grown_tensors' argument -> the store of GrowExpertsLayer that holds it
STORES = {
    "new_up": "grow_new_weight",
    "new_up_bias": "grow_new_bias",
    "delta_up": "grow_delta_weight",
    "delta_up_bias": "grow_delta_bias",
    "new_down": "grow_new_down_weight",
    "noise": "grow_noise",
}


class GrowExpertsLayer(nn.Module, GrowLayer):
    """A fused experts module whose every expert is widened k times (G-Freeze or G-Train per expert)."""

    adapter_layer_names = (*GrowLayer.adapter_layer_names, "grow_new_down_weight")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GrowConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        layout = experts_layout(base_layer)
        if layout is None:
            raise TypeError(f"{type(base_layer).__name__} is not an experts module with fused 3-D weights.")
        for name in layout.tensors:  # GrowLayer.__init__'s refusals, for each 3-D tensor (it checks one weight)
            refuse_partitioned(base_layer, base_layer._parameters[name])
            refuse_offloaded(base_layer, base_layer._parameters[name])
        refuse_unsupported_quantization(base_layer)
        self._init_adapter_state(base_layer)
        self.grow_new_down_weight = nn.ParameterDict()
        self.layout = layout
        self.conv1d, self.quantized = False, False
        self.update_layer(adapter_name, config)

    @property
    def in_features(self) -> int:
        return experts_shape(self.get_base_layer(), self.layout)[1]

    out_features = in_features

    def update_layer(self, adapter_name: str, config: GrowConfig, **kwargs: Any) -> None:
        base = self.get_base_layer()
        with torch.no_grad():
            for argument, tensor in initial_parts(base, self.layout, config).items():
                if STORES[argument] == "grow_noise":
                    self.grow_noise[adapter_name] = tensor.contiguous()
                else:
                    getattr(self, STORES[argument])[adapter_name] = nn.Parameter(tensor.contiguous().clone())
        settings = GrowSettings(config.k, config.mode, config.init, self.layout.chunks)
        down = _canonical(base.down_proj, self.layout.transposed)
        self._finish_update(adapter_name, settings, config, lambda: 0.1 * down.detach().float().std() / config.k)

    def _grown_tensors(self, name: str) -> dict[str, torch.Tensor]:
        stores = {argument: getattr(self, store) for argument, store in STORES.items()}
        # BufferDict has no .get()
        parts = {argument: store[name] if name in store else None for argument, store in stores.items()}  # noqa: SIM401
        return grown_tensors(self.get_base_layer(), self.layout, self.grow_settings[name], **parts)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The experts module's own forward on the wide tensors (GrowLayer's head reads one weight and one input;
        an experts module takes several, positionally or by name, and they pass through as they come)."""
        name = self._active_grown()
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self._grown_tensors(name), args, kwargs)

    # -- merging: the experts module takes the wide tensors; the original ones are kept for an exact unmerge --
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        name = self._adapter_to_merge(adapter_names)
        if name is None:
            return
        with torch.no_grad():
            tensors = self._grown_tensors(name)
        if safe_merge:
            self._check_tensors_finite(name, tensors)
        base = self.get_base_layer()
        self._original_base = {key: base._parameters[key] for key in tensors}
        for key, tensor in tensors.items():
            original = base._parameters[key]
            base._parameters[key] = nn.Parameter(tensor.detach().clone(), requires_grad=original.requires_grad)
        self.merged_adapters.append(name)

    def check_merge(self, adapter_names: list[str] | None = None) -> None:
        name = self._adapter_to_merge(adapter_names)
        if name is not None:
            with torch.no_grad():
                self._check_tensors_finite(name, self._grown_tensors(name))

    def _check_tensors_finite(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        refuse_non_finite(name, tensors, lambda key: f"{type(self.get_base_layer()).__name__}.{key}")

    def unmerge(self) -> None:
        if not self.merged:
            return
        self.get_base_layer()._parameters.update(self._original_base)
        self._original_base = None
        self.merged_adapters.clear()


def pad_experts(module: nn.Module, extra: int) -> None:
    """Widen every expert by `extra` units that contribute exactly zero (zero up rows, zero down columns), in place."""
    layout = experts_layout(module)
    up = _canonical(module._parameters[layout.up].detach(), layout.transposed)
    tensors = {layout.up: _canonical(zero_padded_up(up, layout.chunks, extra), layout.transposed)}
    if layout.bias:
        tensors[layout.up_bias] = zero_padded_bias(module._parameters[layout.up_bias].detach(), layout.chunks, extra)
    down = _canonical(module._parameters["down_proj"].detach(), layout.transposed)
    tensors["down_proj"] = _canonical(zero_padded_down(down, extra), layout.transposed)
    for key, tensor in tensors.items():
        original = module._parameters[key]
        module._parameters[key] = nn.Parameter(tensor.contiguous(), requires_grad=original.requires_grad)


def preserves_function(module: nn.Module, layout: ExpertsLayout, config: GrowConfig) -> tuple[float, float] | str:
    """Run the experts module on random tokens routed to every expert, as it is and grown at its start:
    (largest |difference|, largest |output|), or why it could not run grown."""
    experts, hidden, _ = experts_shape(module, layout)
    weight = module.down_proj
    generator = torch.Generator().manual_seed(0)
    tokens = 2 * experts
    x = torch.randn(tokens, hidden, generator=generator).to(device=weight.device, dtype=weight.dtype)
    top_k = min(2, experts)
    index = torch.stack([torch.arange(tokens) % experts, (torch.arange(tokens) + 1) % experts], dim=1)[:, :top_k]
    routing = torch.full((tokens, top_k), 1.0 / top_k).to(device=weight.device, dtype=weight.dtype)
    index = index.to(weight.device)
    settings = GrowSettings(config.k, config.mode, config.init, layout.chunks)
    # routed experts take (tokens, expert indices, routing weights); Llama 4's take tokens sorted by expert
    inputs = (x, index, routing) if len(inspect.signature(module.forward).parameters) > 1 else (x,)
    with torch.no_grad():
        expected = module(*inputs)
        parts = initial_parts(module, layout, config, generator)
        try:
            found = functional_call(module, grown_tensors(module, layout, settings, **parts), inputs)
        except Exception as error:  # noqa: BLE001  (the grown width reaches work sized for the old one)
            return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return (found.float() - expected.float()).abs().max().item(), expected.float().abs().max().item()
