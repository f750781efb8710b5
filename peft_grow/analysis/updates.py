"""Update analysis (paper section 4.4): how many directions a weight update really uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._extras import require
from ..tuner.architectures import GrownMLP, find_mlps, split_module_name

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def effective_rank(matrix: torch.Tensor) -> float:
    """Roy and Vetterli's (2007) effective rank: exp of the entropy of the normalised singular values.

    It equals r for a matrix with r equal non-zero singular values, and lies between 1 and the rank otherwise;
    0 for the zero matrix.
    """
    singular = torch.linalg.svdvals(matrix.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class UpdateRankRecorder:
    """Effective rank and norm of the up-projection update of every layer between checkpoints (section 4.4).

    Call `record(model, step)` every few steps of a plain fine-tune (or add `UpdateRankCallback` to a
    transformers Trainer): each call compares the up-side weights with those of the previous call. Rows of
    `ranks` / `norms` are checkpoints, columns layers, as in the paper's Figure 5.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.layers: list[tuple[str, int, str]] = []
        self.ranks: list[list[float]] = []
        self.norms: list[list[float]] = []
        self._previous: dict[tuple[str, int, str], torch.Tensor] | None = None

    def record(self, model: torch.nn.Module, step: int) -> None:
        current = _up_weights(model)
        if self._previous is not None:
            self.layers = sorted(current)
            updates = [current[key] - self._previous[key] for key in self.layers]
            self.steps.append(step)
            self.ranks.append([effective_rank(update) for update in updates])
            self.norms.append([float(update.norm()) for update in updates])
        self._previous = current

    def labels(self) -> list[str]:
        """One label per column: the layer index, with the MLP's path inside the layer where a layer holds
        several dense MLPs (LongCat-Flash's `mlps.0` and `mlps.1`)."""
        return _column_labels(self.layers)

    def plot(self, path: Path | str, title: str = "effective rank of the up-projection update") -> None:
        """Save the heat map (layers across, checkpoints down, lighter = higher rank) as a PNG."""
        plot_rank_map(self.ranks, [str(step) for step in self.steps], self.labels(), path, title, "training step")


def plot_rank_map(
    ranks: list[list[float]], rows: list[str], columns: list[str], path: Path | str, title: str, row_label: str
) -> None:
    """The paper's Figure 5 heat map: effective ranks with `columns` (layers) across and `rows` (checkpoints, or
    runs) down, lighter = higher; saved as a PNG."""
    require("matplotlib", "plot_rank_map").use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(4.5, 1.2 + 0.5 * len(columns)), 1.5 + 0.3 * len(rows)))
    image = axes.imshow(ranks, aspect="auto", cmap="viridis")
    axes.set_xticks(range(len(columns)), columns, rotation=90 if any(" " in c for c in columns) else 0)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("layer")
    axes.set_ylabel(row_label)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="effective rank")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def update_ranks(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, float]:
    """Effective rank of each dense MLP's up-projection update from `before` to `after` (two models of one
    architecture, e.g. a base and its full fine-tune), keyed by the column labels of `UpdateRankRecorder`."""
    start, end = _up_weights(before), _up_weights(after)
    if start.keys() != end.keys():
        differing = sorted(start.keys() ^ end.keys())[:3]
        raise ValueError(
            f"update_ranks needs two models with the same dense MLPs; found {len(start)} and {len(end)}, differing "
            f"at {differing}. Pass the base model and a fine-tune of it."
        )
    layers = sorted(start)
    return dict(zip(_column_labels(layers), (effective_rank(end[key] - start[key]) for key in layers), strict=True))


def _column_labels(layers: list[tuple[str, int, str]]) -> list[str]:
    seen: set[tuple[str, int]] = set()
    shared: set[tuple[str, int]] = set()
    for stack, index, _ in layers:
        (shared if (stack, index) in seen else seen).add((stack, index))
    return [f"{index} {name}" if (stack, index) in shared else str(index) for stack, index, name in layers]


def _up_weights(model: torch.nn.Module) -> dict[tuple[str, int, str], torch.Tensor]:
    """The up projection of every dense MLP (the paper's W^(1); the last up-side module, up_proj of a gated MLP),
    as detached float32 copies, keyed by (stack, layer, MLP path in the layer) so that a layer with several dense
    MLPs keeps one column each; fused experts are left out (one matrix per expert, not one per layer)."""
    return {
        (mlp.stack, mlp.index, _inside_layer(mlp)): model.get_submodule(mlp.up[-1]).weight.detach().float().clone()
        for mlp in find_mlps(model)
        if not mlp.experts
    }


def _inside_layer(mlp: GrownMLP) -> str:
    """`model.layers.3.mlps.1.up_proj` -> `mlps.1`: where the MLP sits inside its layer (its parent's path, for an
    MLP outside any numbered stack)."""
    split = split_module_name(mlp.up[-1])
    return (split[2] if split is not None else mlp.up[-1]).rpartition(".")[0]


def update_rank_callback(recorder: UpdateRankRecorder, every: int) -> TrainerCallback:
    """A transformers TrainerCallback that feeds `recorder` at step 0 and every `every` optimizer steps."""
    from transformers import TrainerCallback

    class UpdateRankCallback(TrainerCallback):
        def on_train_begin(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            model: torch.nn.Module | None = None,
            **kwargs: Any,
        ) -> None:
            recorder.record(model, state.global_step)

        def on_step_end(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            model: torch.nn.Module | None = None,
            **kwargs: Any,
        ) -> None:
            if state.global_step % every == 0:
                recorder.record(model, state.global_step)

    return UpdateRankCallback()
