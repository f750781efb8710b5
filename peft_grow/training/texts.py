"""Retention text for the guard, from three sources, each as fixed-length token windows [n, length]:

- `dataset_windows`: text the user gives (a `datasets.Dataset`, a list of records or of strings);
- `self_generated_windows`: text the base model writes itself, sampled once from a seed and cached, so that a user
  needs no data at all;
- `prompt_windows`: the new task's own prompts (the cheapest: no extra text).

Texts are joined into one token stream (each with the tokenizer's own special tokens, separated by EOS) and cut
into windows of equal length: no padding, so every position of every window is a real next-token prediction, and a
batch split into micro-batches averages exactly like one large batch.

`drop_overlapping` removes windows that share a run of `n` words with the texts retention is measured on, so that
the guard cannot teach the evaluation's questions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..sequences import token_windows
from .guard import RetentionGuardError, has_adapter

log = logging.getLogger(__name__)


def _texts_of(data: Any, column: str) -> list[str]:
    """The strings of `column` in a datasets.Dataset or a list of records, or the strings of a list of strings."""
    columns = getattr(data, "column_names", None)
    if columns is not None:  # a datasets.Dataset
        if column not in columns:
            raise RetentionGuardError(
                f"The retention dataset has no column {column!r}; its columns are {columns}. Pass column=<the "
                "column that holds the text>."
            )
        return list(data[column])
    rows = list(data)
    if not rows:
        return []
    if all(isinstance(r, str) for r in rows):
        return rows
    if all(isinstance(r, dict) for r in rows):
        missing = [i for i, r in enumerate(rows) if column not in r]
        if missing:
            raise RetentionGuardError(
                f"Retention record {missing[0]} has no key {column!r} (its keys: {sorted(rows[missing[0]])}). Pass "
                "column=<the key that holds the text>."
            )
        return [r[column] for r in rows]
    raise RetentionGuardError(
        f"Retention text must be a datasets.Dataset, a list of records or a list of strings; got items of type "
        f"{sorted({type(r).__name__ for r in rows})}."
    )


def dataset_windows(
    data: Any, tokenizer: Any, length: int = 128, column: str = "text", max_windows: int | None = None
) -> torch.Tensor:
    """Token windows [n, length] of the texts in `data` (a Dataset, records with `column`, or strings)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise RetentionGuardError(f"The retention window length must be an integer of 2 or more; got {length!r}.")
    texts = [t for t in _texts_of(data, column) if isinstance(t, str) and t.strip()]
    if not texts:
        raise RetentionGuardError(
            f"The retention text is empty: no non-blank string in column {column!r}. Give a dataset with text, or "
            "use self_generated_windows(model, tokenizer), which needs no data."
        )
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [token for ids in tokenizer(texts)["input_ids"] for token in [*ids, *separator]]
    windows = token_windows(torch.tensor(stream, dtype=torch.long), length)
    if len(windows) == 0:
        raise RetentionGuardError(
            f"The retention text tokenizes to {len(stream)} tokens, fewer than one window of {length}. Give more "
            "text, or a shorter length."
        )
    return windows[:max_windows] if max_windows is not None else windows


def prompt_windows(data: Any, tokenizer: Any, length: int = 128, column: str = "prompt") -> torch.Tensor:
    """Token windows of the new task's prompts (`column` of its dataset, or a list of strings): retention text
    at no cost of data; the base model's predictions on the task's own inputs are what the guard keeps."""
    return dataset_windows(data, tokenizer, length, column)


def _fingerprint(model: nn.Module) -> str:
    """A short hash of a strided sample of the input embeddings: tells one set of weights from another."""
    weight = model.get_input_embeddings().weight.detach()
    sample = weight.flatten()[:: max(1, weight.numel() // 65_536)].float().cpu().contiguous()
    return hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]


def _start_token(tokenizer: Any) -> int:
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    raise RetentionGuardError(
        "self_generated_windows starts every sample from the tokenizer's BOS (or EOS) token, and this tokenizer has "
        "neither. Give retention text with dataset_windows instead."
    )


def _sample(model: nn.Module, tokenizer: Any, count: int, length: int, seed: int, batch: int) -> torch.Tensor:
    """`count` windows of `length` tokens of the model's own text at temperature 1 (no top-k or top-p)."""
    start, eos = _start_token(tokenizer), tokenizer.eos_token_id
    device = next(model.parameters()).device
    stream: list[int] = []
    generator_seed = seed
    while len(stream) < count * length:
        torch.manual_seed(generator_seed)
        generator_seed += 1
        prompt = torch.full((batch, 1), start, device=device)
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=length,
            pad_token_id=eos if eos is not None else start,
        )
        for row in out.tolist():
            # each sample up to and including its first EOS (generation pads after it), starting from its start token
            end = row.index(eos, 1) + 1 if eos is not None and eos in row[1:] else len(row)
            stream += row[:end]
    return token_windows(torch.tensor(stream[: count * length], dtype=torch.long), length)


def self_generated_windows(
    model: nn.Module,
    tokenizer: Any,
    count: int = 256,
    length: int = 128,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    batch: int = 16,
) -> torch.Tensor:
    """`count` windows of `length` tokens of text the base model writes itself, sampled at temperature 1 from its
    start token with `seed` (a PEFT model samples with its adapter disabled: the base's text, also mid-training).

    With `cache_dir` the windows are kept in `<cache_dir>/<hash>.safetensors`, keyed by the weights' fingerprint
    and the settings, written atomically; a later call with the same model and settings reads them back."""
    for name, value in (("count", count), ("length", length), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "length" else 1):
            raise RetentionGuardError(f"self_generated_windows {name} must be a positive integer; got {value!r}.")
    key = {"model": _fingerprint(model), "count": count, "length": length, "seed": seed, "temperature": 1.0}
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"self-generated-{digest}.safetensors"
        if path.is_file():
            with safe_open(path, "pt") as cached:
                if json.loads(cached.metadata()["key"]) == key:
                    return cached.get_tensor("windows")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:  # the caller's random state is left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            if has_adapter(model):
                with model.disable_adapter():
                    windows = _sample(model, tokenizer, count, length, seed, batch)
            else:
                windows = _sample(model, tokenizer, count, length, seed, batch)
    finally:
        model.train(was_training)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        os.close(handle)
        save_file({"windows": windows.contiguous()}, temporary, metadata={"key": json.dumps(key, sort_keys=True)})
        os.replace(temporary, path)
        log.info("sampled %d retention windows of %d tokens into %s", count, length, path)
    return windows


_WORD = re.compile(r"[a-z0-9]+")


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def drop_overlapping(
    windows: torch.Tensor, tokenizer: Any, references: Iterable[str], n: int = 8
) -> tuple[torch.Tensor, int]:
    """The windows that share no run of `n` words (lower-cased, letters and digits) with any reference text, and
    how many were dropped. Pass the questions and answers of the tasks retention is measured on: the guard must
    not train on what the evaluation asks."""
    seen: set[tuple[str, ...]] = set()
    for text in references:
        seen |= _ngrams(text, n)
    decoded: Sequence[str] = tokenizer.batch_decode(windows, skip_special_tokens=True)
    keep = [i for i, text in enumerate(decoded) if not (_ngrams(text, n) & seen)]
    return windows[keep], len(windows) - len(keep)
