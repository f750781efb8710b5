"""Model cards (README.md with Hub front matter) for grown adapters and merged checkpoints.

A card says what was grown and gives the exact lines that load the folder. The section it writes is fenced
by HTML comments, so writing it again replaces it instead of piling up copies.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from ..tuner.config import GrowConfig

TAGS = ["peft-grow", "grow-dont-overwrite"]
BEGIN, END = "<!-- peft-grow:begin -->", "<!-- peft-grow:end -->"
PAPER = "[*Grow, Don't Overwrite*](https://arxiv.org/abs/2603.08647)"
AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}
MODE_NAMES = {"freeze": "G-Freeze (only the new units train)", "train": "G-Train (up side trains, down frozen)"}


def write_adapter_card(folder: str | os.PathLike, config: GrowConfig) -> Path:
    """Add the peft-grow section, tags and base model to the README.md of an adapter folder (made if absent)."""
    auto_class = AUTO_CLASS.get(str(config.task_type or "").upper(), "AutoModelForCausalLM")
    base = config.base_model_name_or_path or "BASE_MODEL"
    body = f"""## Grown adapter

A {PAPER} adapter made with peft-grow: the MLPs of `{base}` in {_where(config)} are widened {config.k}x by
copying their up-projection rows and splitting the down projection, so the grown model starts out computing
exactly the base model's function.

| setting | value |
|---|---|
{_settings(config)}

### Load it

```python
import peft_grow  # registers the GROW method with PEFT (installed peft-grow also does it when peft is imported)
from peft import PeftModel
from transformers import {auto_class}

base = {auto_class}.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "ADAPTER")  # ADAPTER: this repository's id, or this folder
merged = model.merge_and_unload()  # optional: one model with wider MLPs
```
"""
    return _write(Path(folder), body, library_name="peft", base_model=config.base_model_name_or_path)


def write_merged_card(
    folder: str | os.PathLike, config: GrowConfig, layout: str, architecture: str, widths: list[int]
) -> Path:
    """README.md of a merged checkpoint: what was grown, the layout, and how to load it."""
    base = f"`{config.base_model_name_or_path}`" if config.base_model_name_or_path else "The base model"
    if layout == "pad":
        load = f"""from transformers import {architecture}

model = {architecture}.from_pretrained("CHECKPOINT")  # CHECKPOINT: this repository's id, or this folder"""
        layout_text = (
            "Every MLP has the same width; layers that were not grown carry zero-contribution units, so this is a "
            "standard checkpoint that plain transformers (and tools that read its format) load without peft-grow."
        )
    else:
        load = """import peft_grow

model = peft_grow.load_merged("CHECKPOINT")  # CHECKPOINT: this repository's id, or this folder"""
        layout_text = (
            "Each MLP keeps its own width, recorded in `config.json` under `peft_grow_shapes`; plain "
            "`from_pretrained` cannot build such a model, so load it with `peft_grow.load_merged`."
        )
    body = f"""## Merged grown model

{base} fine-tuned with {PAPER} (peft-grow) and merged into one model: its MLPs in {_where(config)} are
{config.k}x wider than in the base model. Layout `{layout}`: {layout_text} MLP widths: {_widths(widths)}.

| setting | value |
|---|---|
{_settings(config)}

### Load it

```python
{load}
```
"""
    library = "transformers" if layout == "pad" else "peft-grow"
    return _write(Path(folder), body, library_name=library, base_model=config.base_model_name_or_path)


def _write(folder: Path, body: str, library_name: str, base_model: str | None) -> Path:
    path = folder / "README.md"
    card = (
        ModelCard.load(path)
        if path.exists()
        else ModelCard(f"---\n{ModelCardData(library_name=library_name).to_yaml()}\n---\n")
    )
    card.data.library_name = card.data.library_name or library_name
    card.data.tags = sorted(set(card.data.tags or []) | set(TAGS))
    if base_model and not card.data.base_model:
        card.data.base_model = base_model
    section = f"{BEGIN}\n{body.strip()}\n{END}"
    text = card.text
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = f"\n{section}\n\n{text.lstrip()}"
    card.text = text
    card.save(path)
    return path


def _where(config: GrowConfig) -> str:
    if config.layers is None:
        return "every layer"
    return ("layer " if len(config.layers) == 1 else "layers ") + ", ".join(str(i) for i in config.layers)


def _layers(config: GrowConfig) -> str:
    return "(all)" if config.layers is None else ", ".join(str(i) for i in config.layers)


def _widths(widths: list[int]) -> str:
    unique = sorted(set(widths))
    return str(unique[0]) if len(unique) == 1 else ", ".join(str(w) for w in widths)


def _settings(config: GrowConfig) -> str:
    rows = {
        "layers": _layers(config),
        "growth factor k": config.k,
        "mode": MODE_NAMES[config.mode],
        "init": config.init,
        "symmetry_noise": config.symmetry_noise,
    }
    return "\n".join(f"| {key} | {value} |" for key, value in rows.items())
