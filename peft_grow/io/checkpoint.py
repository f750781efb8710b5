"""Checks on adapter folders before PEFT reads them: safetensors only, and readable."""

from __future__ import annotations

import os

import torch
from safetensors import safe_open

from ..tuner.model import GrowCheckpointError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"


def check_adapter_folder(path: str | os.PathLike, subfolder: str | None = None) -> None:
    """Check the weights of the adapter in `path` (or its `subfolder`) if that is a local folder
    (`check_adapter_weights`); a Hub id is not one, and is left to PEFT."""
    folder = os.path.join(path, subfolder or "")
    if os.path.isdir(folder):
        check_adapter_weights(folder)


def check_adapter_weights(folder: str) -> None:
    """Raise a clear error if `folder` has no readable `adapter_model.safetensors`, or one whose tensors hold NaN
    or infinity (an adapter that cannot compute: its logits would all be NaN).

    The header and the file length are checked first (safetensors checks that every tensor fits in the file);
    then each tensor is read once through safetensors' memory map, which leaves it in the page cache for PEFT's
    own read. Pickled weights are refused: loading them can run arbitrary code.
    """
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(folder, PICKLED_WEIGHTS)):
            raise GrowCheckpointError(
                f"{folder} holds {PICKLED_WEIGHTS} (pickle), expected {ADAPTER_WEIGHTS}. peft-grow loads "
                "safetensors only; re-save the adapter with save_pretrained(..., safe_serialization=True)."
            )
        raise GrowCheckpointError(
            f"{folder} has an adapter_config.json but no {ADAPTER_WEIGHTS}; the folder is incomplete. "
            "Save the adapter again with save_pretrained, or copy the missing file."
        )
    try:
        handle = safe_open(path, framework="pt")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise GrowCheckpointError(
            f"{path} is not a readable safetensors file ({os.path.getsize(path)} bytes; safetensors said: "
            f"{exc}). It is truncated or corrupt: save the adapter again or re-download it."
        ) from exc
    with handle:  # one open for the names and the values
        names = list(handle.keys())
        foreign = [n for n in names if ".grow_" not in n]
        if not names or len(foreign) == len(names):
            raise GrowCheckpointError(
                f"{path} holds no grown-adapter tensors (expected names containing '.grow_', found "
                f"{names[:3]}{'...' if len(names) > 3 else ''}). This is not a peft-grow adapter file."
            )
        for name in names:
            tensor = handle.get_tensor(name)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise GrowCheckpointError(
                    f"{path}: tensor {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; an adapter "
                    "that cannot compute (every logit would be NaN). Training diverged before it was saved: save "
                    "an earlier checkpoint, or train again with a lower learning rate or gradient clipping."
                )
