"""The merged model's config: after merging, the grown MLPs are wider than the config says; this makes the config
(and, for layout "pad", the MLPs left narrow) agree, so that `save_pretrained` round-trips.

`from_pretrained` builds every MLP at the width its config names, so a checkpoint where only some layers are
wider does not load (and `ignore_mismatched_sizes=True` silently re-initialises those layers). Two layouts
solve it:

* `pad` (default): the MLPs that were not grown are widened with units that contribute exactly zero (zero up
  rows, zero down columns) to the common width, which the config then names. A standard checkpoint, exact,
  at the cost of the padded layers' extra width.
* `per-layer`: every MLP keeps its real width; the widths are recorded in the config under
  `peft_grow_shapes`, and `peft_grow.load_merged` rebuilds the model from them. Exact, no wasted width, but it
  needs peft_grow to load.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from .architectures import WIDTH_KEYS, GrownMLP, find_mlps, resolve_layout
from .config import GrowConfig
from .experts import experts_layout, pad_experts
from .growth import zero_padded_bias, zero_padded_down, zero_padded_up
from .tensors import is_conv1d, linear_layout, linear_shape, set_projection

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)
LAYOUTS = ("pad", "per-layer")
SHAPES_KEY = "peft_grow_shapes"  # config attribute of a per-layer checkpoint: module name -> [in, out], or
# "<experts module>.<tensor>" -> its full shape
MIXTURE_WIDTH_KEYS = (*WIDTH_KEYS, "moe_intermediate_size", "shared_expert_intermediate_size")


def make_merged_loadable(merged: nn.Module, config: GrowConfig, layout: str = "pad") -> list[int]:
    """Make a merged model save and reload, in place, in `layout`: widen the MLPs left narrow and make its config
    describe it; returns its MLPs' real widths.

    "pad" widens the MLPs narrower than the widest with zero units and sets the config's width, so that
    `save_pretrained` and plain `from_pretrained` round-trip; "per-layer" records every MLP's shape under
    `peft_grow_shapes` for `load_merged`. When every MLP was grown, both just set the config's width.
    """
    mlps = find_mlps(merged, config.mlp_layout)  # `layout` is checked by the callers, before anything is merged
    widths = [mlp.width for mlp in mlps]
    width = max(widths)
    if getattr(merged, "config", None) is None:  # a custom torch model: no config to describe, nothing to reload
        return widths
    if any(mlp.experts for mlp in mlps):
        _make_mixture_loadable(merged, config, mlps, layout)
        return widths
    width_key = resolve_layout(merged, config.mlp_layout).width_key
    if width_key is None and layout == "pad":  # a detected layout whose config names no width peft-grow knows
        logger.warning(
            "%s's config names no MLP width peft-grow knows (%s); the merged model records its MLP shapes for "
            "peft_grow.load_merged instead (the per-layer layout).",
            type(merged).__name__,
            ", ".join(WIDTH_KEYS),
        )
        layout = "per-layer"
    if width_key is not None and (layout == "pad" or all(w == width for w in widths)):
        for mlp in mlps:
            _pad_mlp(merged, mlp, width)
        _set_config_width(merged.config, width_key, width)
    else:
        _record_shapes(merged, mlps)
    return widths


def _make_mixture_loadable(merged: nn.Module, config: GrowConfig, mlps: list, layout: str) -> None:
    """make_merged_loadable for a model with experts, whose config names several widths (dense MLPs, routed experts,
    shared experts, some derived from others): every MLP becomes k times its original width (the ones not grown
    padded with zero units), so every width the config names scales by k. The scaled config is checked by
    building the model from it on the meta device; where it does not give the merged shapes, or the layout is
    per-layer with MLPs left narrow, the shapes are recorded for load_merged instead."""
    grown = {mlp.down for mlp in find_mlps(merged, config.mlp_layout, config.layers, config.exclude_modules)}
    all_grown = all(mlp.down in grown for mlp in mlps)
    if layout == "pad" or all_grown:
        if layout == "pad":
            for mlp in mlps:
                if mlp.down not in grown:
                    _pad_mlp(merged, mlp, config.k * mlp.width)
        scaled = _scaled_widths(merged.config, config.k)
        if scaled and _builds_merged_shapes(merged, scaled):
            for key, value in scaled.items():
                _set_config_width(merged.config, key, value)
            return
        logger.warning(
            "Scaling the MLP widths of %s's config (%s) by k=%d does not describe the merged model; it records its "
            "MLP shapes for peft_grow.load_merged instead (the per-layer layout).",
            type(merged).__name__,
            ", ".join(scaled) or "none found",
            config.k,
        )
    _record_shapes(merged, mlps)


def _scaled_widths(model_config: PretrainedConfig, k: int) -> dict[str, int]:
    """Every MLP width the config names (dotted for a text sub-config), times k."""
    return {
        prefix + key: k * getattr(node, key)
        for prefix, node in (("", model_config), ("text_config.", getattr(model_config, "text_config", None)))
        for key in MIXTURE_WIDTH_KEYS
        if node is not None and isinstance(getattr(node, key, None), int) and not isinstance(getattr(node, key), bool)
    }


def _builds_merged_shapes(merged: nn.Module, widths: dict[str, int]) -> bool:
    """Whether the model class, built on the meta device from the config with `widths`, has the merged shapes."""
    scaled = copy.deepcopy(merged.config)
    for key, value in widths.items():
        _set_config_width(scaled, key, value)
    try:
        with torch.device("meta"):
            rebuilt = type(merged)._from_config(scaled)
    except Exception:  # noqa: BLE001  (a config the class refuses)
        return False
    expected = rebuilt.state_dict()
    return all(expected[key].shape == tensor.shape for key, tensor in merged.state_dict().items() if key in expected)


def _record_shapes(merged: nn.Module, mlps: list[GrownMLP]) -> None:
    """The per-layer layout: every grown module's shape under SHAPES_KEY, [in, out] for a projection and the
    full shape of each 3-D tensor (`<module>.<tensor>`) of an experts module."""
    shapes = {}
    for mlp in mlps:
        if mlp.experts:
            module = merged.get_submodule(mlp.down)
            tensors = experts_layout(module).tensors
            shapes.update({f"{mlp.down}.{key}": list(module._parameters[key].shape) for key in tensors})
        else:
            shapes.update({name: list(linear_shape(merged.get_submodule(name))) for name in (*mlp.up, mlp.down)})
    setattr(merged.config, SHAPES_KEY, shapes)


def _pad_mlp(model: nn.Module, mlp: GrownMLP, width: int) -> None:
    """Widen one MLP to `width` with units that contribute exactly zero: zero up rows, zero down columns."""
    extra = width - mlp.width
    if extra == 0:
        return
    if mlp.experts:
        pad_experts(model.get_submodule(mlp.down), extra)
        return
    for name in mlp.up:
        module = model.get_submodule(name)
        padded = zero_padded_up(linear_layout(module.weight, is_conv1d(module)), mlp.chunks, extra)
        bias = None if module.bias is None else nn.Parameter(zero_padded_bias(module.bias, mlp.chunks, extra))
        set_projection(module, parameter_like(linear_layout(padded, is_conv1d(module)), module.weight), bias)
    module = model.get_submodule(mlp.down)
    padded = zero_padded_down(linear_layout(module.weight, is_conv1d(module)), extra)
    set_projection(module, parameter_like(linear_layout(padded, is_conv1d(module)), module.weight), None)


def parameter_like(value: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=like.requires_grad)


def _set_config_width(config: PretrainedConfig, key: str, width: int) -> None:
    *parents, leaf = key.split(".")
    for parent in parents:
        config = getattr(config, parent)
    setattr(config, leaf, width)
