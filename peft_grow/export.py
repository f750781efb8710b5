"""Merged checkpoints: one wider model that plain transformers (layout "pad") or `load_merged` reads back;
and atomic saving of adapters.

`from_pretrained` builds every MLP at the width its config names, so a checkpoint where only some layers are
wider does not load (and `ignore_mismatched_sizes=True` silently re-initialises those layers). Two layouts
solve it:

* `pad` (default): the MLPs that were not grown are widened with units that contribute exactly zero (zero up
  rows, zero down columns) to the common width, which the config then names. A standard checkpoint, exact,
  at the cost of the padded layers' extra width.
* `per-layer`: every MLP keeps its real width; the widths are recorded in the config under
  `peft_grow_shapes`, and `load_merged` rebuilds the model from them. Exact, no wasted width, but it needs
  peft_grow to load.

Writes are atomic: the checkpoint is written to a temporary folder beside the target and renamed into place,
so an interrupted export never leaves a half-written checkpoint at the target path.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from .architectures import WIDTH_KEYS, linear_shape, plan_growth, resolve_layout
from .cards import write_merged_card
from .config import GrowConfig
from .experts import experts_layout, pad_experts
from .layer import interleave, linear_layout, set_projection

logger = logging.getLogger(__name__)
LAYOUTS = ("pad", "per-layer")
SHAPES_KEY = "peft_grow_shapes"  # config attribute of a per-layer checkpoint: module name -> [in, out], or
# "<experts module>.<tensor>" -> its full shape
MIXTURE_WIDTH_KEYS = (*WIDTH_KEYS, "moe_intermediate_size", "shared_expert_intermediate_size")


def save_merged(
    model,
    out_dir: str | os.PathLike,
    layout: str = "pad",
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
) -> nn.Module:
    """Merge the active grown adapter of a PeftModel and write the result to `out_dir`.

    Like `merge_and_unload`, this consumes the PeftModel; the merged model is returned. `dtype` casts the
    checkpoint (default: keep the base model's dtype). Refuses an existing `out_dir` unless `overwrite`.
    """
    out_dir = Path(out_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another path or pass overwrite=True to replace it.")
    config = model.active_peft_config
    if not isinstance(config, GrowConfig):
        raise ValueError(f"save_merged expects a model with an active grown adapter, found {type(config).__name__}.")
    merged = model.merge_and_unload(layout=None)
    if dtype is not None:
        merged = merged.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    widths = describe_merged(merged, config, layout)
    original_format = not hasattr(merged.config, SHAPES_KEY)  # per-layer: keys as in memory, for load_merged
    architecture = merged.config.architectures[0] if merged.config.architectures else type(merged).__name__

    def write(folder: Path) -> None:
        merged.save_pretrained(folder, max_shard_size=max_shard_size, save_original_format=original_format)
        write_merged_card(folder, config, layout, architecture, widths)

    _write_atomically(out_dir, overwrite, write)
    return merged


def describe_merged(merged: nn.Module, config: GrowConfig, layout: str = "pad") -> list[int]:
    """Give a merged model a config that describes it, in `layout`; returns its MLPs' real widths.

    "pad" widens the MLPs narrower than the widest with zero units and sets the config's width, so that
    `save_pretrained` and plain `from_pretrained` round-trip; "per-layer" records every MLP's shape under
    `peft_grow_shapes` for `load_merged`. When every MLP was grown, both just set the config's width.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    layout_of_mlps = GrowConfig(
        up_modules=config.up_modules, down_modules=config.down_modules, fused_up_chunks=config.fused_up_chunks
    )
    mlps = plan_growth(merged, layout_of_mlps)
    widths = [mlp.width for mlp in mlps]
    width = max(widths)
    if getattr(merged, "config", None) is None:  # a custom torch model: no config to describe, nothing to reload
        return widths
    if any(mlp.experts for mlp in mlps):
        _describe_mixture(merged, config, mlps, layout)
        return widths
    width_key = resolve_layout(merged, layout_of_mlps).width_key
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


def _describe_mixture(merged: nn.Module, config: GrowConfig, mlps: list, layout: str) -> None:
    """describe_merged for a model with experts, whose config names several widths (dense MLPs, routed experts,
    shared experts, some derived from others): every MLP becomes k times its original width (the ones not grown
    padded with zero units), so every width the config names scales by k. The scaled config is checked by
    building the model from it on the meta device; where it does not give the merged shapes, or the layout is
    per-layer with MLPs left narrow, the shapes are recorded for load_merged instead."""
    grown = {mlp.down for mlp in plan_growth(merged, config)}
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


def _scaled_widths(model_config, k: int) -> dict[str, int]:
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


def _record_shapes(merged: nn.Module, mlps: list) -> None:
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


def save_adapter(model, out_dir: str | os.PathLike, overwrite: bool = False, **kwargs) -> None:
    """`model.save_pretrained(out_dir, **kwargs)`, atomically: PEFT writes its files one by one into the target,
    so an interrupted save would leave a folder that looks like an adapter; this writes beside it and renames."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another path or pass overwrite=True to replace it.")
    _write_atomically(out_dir, overwrite, lambda folder: model.save_pretrained(folder, **kwargs))


def load_merged(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Load a merged checkpoint in either layout (a local folder or a Hub id).

    A `pad` checkpoint is a standard one, loaded with `from_pretrained(path, **kwargs)`; a `per-layer` checkpoint
    is built with `_from_config(config, **kwargs)` (e.g. `dtype`), widened to its recorded shapes and filled from
    its safetensors files.
    """
    if not Path(path).is_dir():  # a Hub id
        from huggingface_hub import snapshot_download

        path = snapshot_download(str(path))
    config = AutoConfig.from_pretrained(path)
    model_class = getattr(transformers, config.architectures[0])
    shapes = getattr(config, SHAPES_KEY, None)
    if shapes is None:
        return model_class.from_pretrained(path, **kwargs)
    kwargs.setdefault("dtype", getattr(config, "dtype", None) or torch.float32)
    model = model_class._from_config(config, **kwargs)
    for name, shape in shapes.items():
        owner_name, _, tensor = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if tensor in owner._parameters:  # a 3-D tensor of an experts module
            like = owner._parameters[tensor]
            owner._parameters[tensor] = _parameter(like.new_empty(shape), like)
            continue
        in_features, out_features = shape
        module = model.get_submodule(name)
        shape = (in_features, out_features) if _is_conv1d(module) else (out_features, in_features)
        like = module.weight
        bias = (
            None
            if module.bias is None
            else nn.Parameter(like.new_empty(out_features), requires_grad=like.requires_grad)
        )
        set_projection(module, nn.Parameter(like.new_empty(shape), requires_grad=like.requires_grad), bias)
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match its recorded shapes: missing {missing[:3]}, unexpected {unexpected[:3]}. "
            "The checkpoint is incomplete or was edited; export it again."
        )
    model.tie_weights()
    return model.eval()


def _pad_mlp(model: nn.Module, mlp, width: int) -> None:
    """Widen one MLP to `width` with units that contribute exactly zero: zero up rows, zero down columns."""
    extra = width - mlp.width
    if extra == 0:
        return
    if mlp.experts:
        pad_experts(model.get_submodule(mlp.down), extra)
        return
    for name in mlp.up:
        module = model.get_submodule(name)
        weight = linear_layout(module.weight, _is_conv1d(module))
        rows = weight.new_zeros(mlp.chunks * extra, weight.shape[1])
        padded = interleave(weight, rows, mlp.chunks, dim=0)
        bias = None
        if module.bias is not None:
            bias = nn.Parameter(interleave(module.bias, module.bias.new_zeros(mlp.chunks * extra), mlp.chunks, dim=0))
        set_projection(module, _parameter(linear_layout(padded, _is_conv1d(module)), module.weight), bias)
    module = model.get_submodule(mlp.down)
    weight = linear_layout(module.weight, _is_conv1d(module))
    padded = torch.cat([weight, weight.new_zeros(weight.shape[0], extra)], dim=1)
    set_projection(module, _parameter(linear_layout(padded, _is_conv1d(module)), module.weight), None)


def _parameter(value: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=like.requires_grad)


def _is_conv1d(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear)


def _set_config_width(config, key: str, width: int) -> None:
    *parents, leaf = key.split(".")
    for parent in parents:
        config = getattr(config, parent)
    setattr(config, leaf, width)


def _write_atomically(target: Path, overwrite: bool, write) -> None:
    """Run `write(tmp_dir)` and move the result to `target` in one rename; on any failure remove `tmp_dir`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(tmp)
        if target.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / target.name)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:  # KeyboardInterrupt included: never leave the partial folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
