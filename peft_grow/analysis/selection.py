"""Which layers to grow (paper section 4.2): rank decoder layers by how much plain fine-tuning wants to change
their MLPs, then grow the top N.

* `pilot_ranking`: the paper's heuristic. A short plain fine-tune (AdamW on every parameter), then each layer
  scored by the Frobenius norm of its MLP weight update; the model's weights are restored afterwards.
* `gradient_ranking`: a cheaper proxy that needs no pilot run and no optimizer state for the whole model: the
  update Adam would make from the MLP weights' gradients accumulated over a few batches (or their plain norm),
  with every other parameter frozen.

Both take batches with labels, which `text_batches` draws from a plain text of the new task, and return
`LayerScores`; `top_layers(scores, n)` gives the indices `GrowConfig(layers=...)` takes, and `rank_agreement`
measures how well two rankings agree (Spearman correlation, overlap of the top N).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..sequences import token_windows
from ..tuner.architectures import find_mlps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Batch = dict[str, torch.Tensor]  # model inputs with `labels`, as a transformers model takes them


@dataclass(frozen=True)
class LayerScores:
    """A score per (layer stack, layer index); higher means the layer asks for more change."""

    scores: dict[tuple[str, int], float]

    def ranked(self) -> list[tuple[str, int]]:
        return sorted(self.scores, key=lambda key: (-self.scores[key], key))


def _mlp_weights(model: nn.Module) -> dict[tuple[str, int], list[nn.Parameter]]:
    """The up-side and down weights of every MLP, per layer (the same MLPs growth would widen); a layer's routed
    experts (their 3-D tensors) and its shared or dense MLP count together."""
    weights = defaultdict(list)
    for mlp in find_mlps(model):
        if mlp.experts:
            weights[(mlp.stack, mlp.index)] += list(model.get_submodule(mlp.down).parameters())
        else:
            weights[(mlp.stack, mlp.index)] += [model.get_submodule(name).weight for name in (*mlp.up, mlp.down)]
    return dict(weights)


def update_magnitudes(before: dict[tuple[str, int], list[torch.Tensor]], model: nn.Module) -> LayerScores:
    """Frobenius norm of each layer's MLP weight update since `before` (a `snapshot` of the same model)."""
    now = _mlp_weights(model)
    return LayerScores(
        {
            key: float(
                torch.sqrt(
                    sum(((w.detach().float() - b.float()) ** 2).sum() for w, b in zip(now[key], old, strict=True))
                )
            )
            for key, old in before.items()
        }
    )


def snapshot(model: nn.Module) -> dict[tuple[str, int], list[torch.Tensor]]:
    """Copies of the MLP weights, to measure updates against."""
    return {key: [w.detach().clone() for w in weights] for key, weights in _mlp_weights(model).items()}


class TextTooShortError(ValueError):
    """A text holds fewer tokens than one batch of windows; `tokens` says how many it holds."""

    def __init__(self, tokens: int, batch: int, seq_len: int) -> None:
        self.tokens = tokens
        super().__init__(
            f"The text holds {tokens:,} tokens, fewer than one batch of {batch} x {seq_len}; use a longer text or "
            "a smaller batch or seq_len."
        )


def text_batches(
    tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int, batch: int, steps: int, seed: int = 0
) -> list[Batch]:
    """`steps` batches of a plain text, for `pilot_ranking` or `gradient_ranking`.

    The text is tokenised as one stream and cut into non-overlapping `seq_len`-token windows (`token_windows`,
    the tail dropped); each batch is `batch` windows drawn at random with replacement (a generator seeded with
    `seed`), which are their own labels. Raises TextTooShortError if there are fewer windows than `batch`.
    """
    ids = torch.tensor(tokenizer(text)["input_ids"])
    windows = token_windows(ids, seq_len)
    if len(windows) < batch:
        raise TextTooShortError(len(ids), batch, seq_len)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        rows = windows[torch.randint(len(windows), (batch,), generator=generator)]
        batches.append({"input_ids": rows, "labels": rows})
    return batches


def pilot_ranking(model: nn.Module, batches: Iterable[Batch], steps: int, lr: float = 1e-4) -> LayerScores:
    """The paper's heuristic: `steps` AdamW steps of plain fine-tuning, layers scored by their MLP update norm.

    Every parameter is trained during the pilot (that is what full fine-tuning would change); all parameters and
    their requires_grad flags are restored before returning.
    """
    params = list(model.parameters())
    saved = [(p.detach().clone(), p.requires_grad) for p in params]
    before = snapshot(model)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    batches = iter(batches)
    try:
        for _ in range(steps):
            model(**next(batches)).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return update_magnitudes(before, model)
    finally:
        with torch.no_grad():
            for p, (value, requires_grad) in zip(params, saved, strict=True):
                p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = None


def gradient_ranking(model: nn.Module, batches: Iterable[Batch], statistic: str = "adam") -> LayerScores:
    """Layers scored from the gradients of their MLP weights over `batches`, without a pilot run.

    `statistic="adam"` (default) scores the update Adam would make from these gradients, per element
    sum(g) / sqrt(sum(g^2)): how consistently a weight is pushed one way, whatever the gradient's scale, which is
    what the pilot's update magnitude measures. `statistic="norm"` is the plain gradient norm. Only the MLP
    weights require gradients meanwhile, and the two running sums exist for those weights only; requires_grad
    flags and gradients are restored.
    """
    if statistic not in ("adam", "norm"):
        raise ValueError(f"statistic must be 'adam' or 'norm', got {statistic!r}.")
    weights = _mlp_weights(model)
    mlp_ids = {id(w) for ws in weights.values() for w in ws}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(id(p) in mlp_ids)
        p.grad = None
    sums = {id(w): torch.zeros_like(w, dtype=torch.float32) for ws in weights.values() for w in ws}
    squares = {key: torch.zeros_like(value) for key, value in sums.items()}
    try:
        for batch in batches:
            model(**batch).loss.backward()
            for ws in weights.values():
                for w in ws:
                    sums[id(w)] += w.grad.float()
                    squares[id(w)] += w.grad.float().square()
                    w.grad = None
        if statistic == "norm":
            per_weight = {key: value.square().sum() for key, value in sums.items()}
        else:
            per_weight = {key: (value / (squares[key].sqrt() + 1e-12)).square().sum() for key, value in sums.items()}
        return LayerScores({key: float(torch.sqrt(sum(per_weight[id(w)] for w in ws))) for key, ws in weights.items()})
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None


def top_layers(scores: LayerScores, n: int) -> list[int]:
    """The indices of the `n` highest-scoring layers, sorted, ready for `GrowConfig(layers=...)`."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return sorted({index for _, index in scores.ranked()[:n]})


def rank_agreement(a: LayerScores, b: LayerScores, n: int) -> tuple[float, float]:
    """(Spearman rank correlation, fraction of shared layers among the top n) of two rankings of the same layers."""
    keys = sorted(a.scores)
    if sorted(b.scores) != keys:
        raise ValueError("The two rankings score different layers; rank the same model twice.")
    ranks = [torch.tensor([r.ranked().index(key) for key in keys], dtype=torch.float64) for r in (a, b)]
    centered = [r - r.mean() for r in ranks]
    denominator = torch.sqrt((centered[0] ** 2).sum() * (centered[1] ** 2).sum())
    correlation = float((centered[0] * centered[1]).sum() / denominator) if denominator > 0 else 1.0
    overlap = len(set(a.ranked()[:n]) & set(b.ranked()[:n])) / n
    return correlation, overlap
