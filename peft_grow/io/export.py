"""Writing grown models to disk: merged checkpoints (`save_merged`, read back by `load_merged` or, for layout
"pad", by plain transformers) and adapters (`save_adapter`), both atomically.

Writes go to a temporary folder beside the target that is renamed into place, so an interrupted export never
leaves a half-written checkpoint at the target path. The layouts are described in `peft_grow.tuner.merged`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from ..tuner.config import GrowConfig
from ..tuner.merged import LAYOUTS, SHAPES_KEY, make_merged_loadable, parameter_like
from ..tuner.tensors import is_conv1d, set_projection
from .cards import write_merged_card
from .loading import architecture_class

if TYPE_CHECKING:
    from peft import PeftModel


def save_merged(
    model: PeftModel,
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
    widths = make_merged_loadable(merged, config, layout)
    original_format = not hasattr(merged.config, SHAPES_KEY)  # per-layer: keys as in memory, for load_merged
    architecture = merged.config.architectures[0] if merged.config.architectures else type(merged).__name__

    def write(folder: Path) -> None:
        merged.save_pretrained(folder, max_shard_size=max_shard_size, save_original_format=original_format)
        write_merged_card(folder, config, layout, architecture, widths)

    _write_atomically(out_dir, overwrite, write)
    return merged


def save_adapter(model: PeftModel, out_dir: str | os.PathLike, overwrite: bool = False, **kwargs: Any) -> None:
    """`model.save_pretrained(out_dir, **kwargs)`, atomically: PEFT writes its files one by one into the target,
    so an interrupted save would leave a folder that looks like an adapter; this writes beside it and renames."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another path or pass overwrite=True to replace it.")
    _write_atomically(out_dir, overwrite, lambda folder: model.save_pretrained(folder, **kwargs))


def load_merged(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a merged checkpoint in either layout (a local folder or a Hub id).

    A `pad` checkpoint is a standard one, loaded with `from_pretrained(path, **kwargs)`; a `per-layer` checkpoint
    is built with `_from_config(config, **kwargs)` (e.g. `dtype`), widened to its recorded shapes and filled from
    its safetensors files.
    """
    if not Path(path).is_dir():  # a Hub id
        from huggingface_hub import snapshot_download

        path = snapshot_download(str(path))
    config = AutoConfig.from_pretrained(path)
    model_class = architecture_class(config)
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
            owner._parameters[tensor] = parameter_like(like.new_empty(shape), like)
            continue
        in_features, out_features = shape
        module = model.get_submodule(name)
        shape = (in_features, out_features) if is_conv1d(module) else (out_features, in_features)
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


def _write_atomically(target: Path, overwrite: bool, write: Callable[[Path], object]) -> None:
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
