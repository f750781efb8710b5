"""A real-model run's state on disk: atomic JSON files, and the checkpoints a long run saves at every evaluation.

A long run saves its state at every evaluation (trainable weights, AdamW's moments, the curve so far) in
<checkpoints>/<model>/<task>/<run>/step-N, outside the repository; a run that was stopped resumes from its last
complete one and continues exactly as an unbroken run would (same weights, moments and data order). Kept weights
(--keep-weights) are the trained model at the end, for later analysis."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .real_models_training import Run

log = logging.getLogger("real_models")


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temporary file in the same folder, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
        out.write("\n")
    os.replace(temporary, path)


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: Run, step: int):
    """Written to a temporary folder and renamed; state.json last, so a folder with it is complete. Older steps
    are removed once the new one is in place."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f"step-{step}.", dir=folder))
    save_file(
        {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
        temporary / "weights.safetensors",
    )
    state = optimizer.state_dict()
    moments = {f"{i}.{key}": value for i, slots in state["state"].items() for key, value in slots.items()}
    save_file(moments, temporary / "optimizer.safetensors")
    write_json(temporary / "state.json", {"step": step, "run": asdict(run), "param_groups": state["param_groups"]})
    temporary.replace(folder / f"step-{step}")
    for older in folder.iterdir():
        if older.name != f"step-{step}":
            shutil.rmtree(older, ignore_errors=True)


def resume(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: Run) -> int:
    """Load the last complete checkpoint of this run into model, optimizer and run; the step it reached (0: none).
    A checkpoint of other settings (steps, batch, evaluation) is not this run's and is ignored."""
    complete = [f for f in folder.glob("step-*") if f.name[5:].isdigit() and (f / "state.json").is_file()]
    if not complete:
        return 0
    last = max(complete, key=lambda f: int(f.name[5:]))
    state = json.loads((last / "state.json").read_text(encoding="utf-8"))
    if state["run"]["settings"] != json.loads(json.dumps(run.settings)):
        log.warning("ignoring %s: saved with settings %s, not %s", last, state["run"]["settings"], run.settings)
        return 0
    weights = load_file(last / "weights.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise SystemExit(f"error: {last} holds other trainable weights than this run's model; remove it to restart.")
    model.load_state_dict(weights, strict=False)
    moments: dict[int, dict] = {}
    for key, value in load_file(last / "optimizer.safetensors").items():
        index, _, slot = key.partition(".")
        moments.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
    for name, value in state["run"].items():
        setattr(run, name, value)
    log.info("resumed %s at step %d", folder.name, state["step"])
    return state["step"]


def keep_weights(model: torch.nn.Module, folder: Path) -> None:
    """The trained weights, for later analysis (function vectors): an adapter folder for PEFT methods, a full
    checkpoint for full fine-tuning; written to a temporary folder and renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    model.save_pretrained(temporary)
    shutil.rmtree(folder, ignore_errors=True)
    temporary.replace(folder)
