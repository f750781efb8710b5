"""What one call of the real-model benchmark works with: where models, caches, task data and results are, the
loaded model and tokenizer, the device, and `Setup`, everything a run of the call reads."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_grow import evaluation as ev

from .real_models_tasks import Encoded

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "real_models"
CACHE_ENV = "PEFT_GROW_CACHE"  # as in benchmarks/fetch_models.py
MODELS = ("smollm2-135m", "gemma3-270m")


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft-grow" / "models")


def guard_cache() -> Path:
    """Where self-generated retention text is cached: beside the model cache."""
    return default_cache().parent / "retention-text"


def default_data() -> Path | None:
    """The task data folder when --data is not given: $PEFT_GROW_DATA, else none (never a guess)."""
    return Path(os.environ[ev.DATA_ENV]) if os.environ.get(ev.DATA_ENV) else None


@dataclass
class Setup:
    args: argparse.Namespace
    task: str
    data: Path
    tokenizer: object
    base: torch.nn.Module
    train: list[Encoded]
    test: list[ev.Example]
    retention: list[str]
    context: dict  # pilot's top layers, matched LoRA rank
    device: torch.device
    prompts: list[str] = field(default_factory=list)  # the training prompts (the guard's `prompts` source)


def require_data(parser: argparse.ArgumentParser, folder, flag: str = "--data") -> None:
    """Stop the command with what it needs when no task data folder was given (by `flag` or $PEFT_GROW_DATA)."""
    if not folder:
        parser.error(
            "no task data folder given (expected the folder holding winogrande/, icl/, qasc/, mathqa/ and mtnt/, "
            f"see docs/evaluation.md): pass {flag} or set ${ev.DATA_ENV}"
        )


def evaluates_at(args: argparse.Namespace, step: int) -> bool:
    """Whether a run is evaluated after `step`: every --eval-every steps and at the last."""
    return step % args.eval_every == 0 or step == args.steps


def load(args) -> tuple[object, torch.nn.Module]:
    folder = args.model_dir or default_cache() / args.model / "hf"
    if not (Path(folder) / "config.json").is_file():
        raise SystemExit(
            f"error: no checkpoint of {args.model} in {folder}. Fetch it first: "
            f"python -m benchmarks.fetch_models {args.model} (or pass --model-dir)."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return tokenizer, model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def where(device: torch.device, dtype: str) -> dict:
    info = {"device": str(device), "dtype": dtype, "torch": torch.__version__, "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info
