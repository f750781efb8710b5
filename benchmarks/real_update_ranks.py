"""The paper's Figure 5 on the real models: the effective rank, per layer, of the up-projection update that each
full fine-tune made (its final weights, kept by `real_models run --keep-weights`, minus the base's), one row per
task and run, so tasks can be compared. Writes update_ranks.json and update_ranks.png beside the model's results.
Where a run's JSON holds the ranks of its updates between evaluations (the runner records them for full
fine-tuning), each such run also gets the paper's own map, evaluations down and layers across, as
<task>/update_ranks_<run>.png, and its rows in update_ranks.json under "stages".

    python -m benchmarks.real_update_ranks --model gemma3-270m    # about 1 s a layer and run on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from peft_grow import find_mlps
from peft_grow.analysis import plot_rank_map, update_ranks

from .real_models_setup import MODELS, RESULTS, default_cache

FULL_RUN = re.compile(r"full_lr[0-9e.+-]+_s\d+")  # full fine-tunes without a guard: the paper's updates


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=f"{', '.join(MODELS)}, or any name with --model-dir")
    parser.add_argument("--model-dir", type=Path, help="the base checkpoint (default: <cache>/<model>/hf)")
    parser.add_argument("--weights", type=Path, default=Path.home() / ".cache" / "peft-grow" / "runs",
                        help="the --keep-weights folder of the runs (default: %(default)s)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS / "cpu")
    args = parser.parse_args(argv)
    runs = sorted(
        folder for folder in (args.weights / args.model).glob("*/*") if FULL_RUN.fullmatch(folder.name)
    )  # <task>/<run>
    out = args.results / args.model
    stages = stage_maps(out)
    if not runs and not stages:
        raise SystemExit(
            f"error: no full fine-tune kept under {args.weights / args.model}/<task>/full_lr*_s*, and no run in "
            f"{out}/<task>/ with update ranks: run `real_models run --runs full@LR --keep-weights DIR` first."
        )
    base = AutoModelForCausalLM.from_pretrained(
        args.model_dir or default_cache() / args.model / "hf", dtype=torch.float32
    )
    rows = {}
    for folder in runs:
        tuned = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        rows[f"{folder.parent.name} {folder.name}"] = update_ranks(base, tuned)
        del tuned
    bound = min(base.get_submodule(find_mlps(base)[0].up[-1]).weight.shape)  # rank of an up-projection matrix
    out.mkdir(parents=True, exist_ok=True)
    written = {"bound": bound, "runs": rows, "stages": stages}
    (out / "update_ranks.json").write_text(json.dumps(written, indent=1) + "\n")
    title = f"{args.model}: effective rank of the full fine-tune's up-projection update (at most {bound})"
    if rows:
        columns = list(next(iter(rows.values())))
        plot_rank_map([list(r.values()) for r in rows.values()], list(rows), columns, out / "update_ranks.png",
                      title, "task, run")  # fmt: skip
        print_table("task, run (final weights minus the base's)", rows)
    for name, steps in stages.items():
        task, run = name.split(" ")
        figure, columns = out / task / f"update_ranks_{run}.png", list(next(iter(steps.values())))
        plot_rank_map([list(r.values()) for r in steps.values()], list(steps), columns, figure,
                      f"{title}\n{name}, between evaluations", "step")  # fmt: skip
        print_table(f"{name}: step (update since the evaluation before)", steps)
    print(f"wrote {out}/update_ranks.json and the figures")


def stage_maps(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """The update ranks between evaluations that the runs' JSON files under folder/<task>/ hold (full
    fine-tunes without a guard), per "<task> <run>" and step."""
    found = {}
    for path in sorted(folder.glob("*/full_lr*_s*.json")):
        if FULL_RUN.fullmatch(path.stem):  # not the .partial.json of a run in progress
            curve = json.loads(path.read_text(encoding="utf-8"))["curve"]
            steps = {str(p["step"]): p["update_ranks"] for p in curve if "update_ranks" in p}
            if steps:
                found[f"{path.parent.name} {path.stem}"] = steps
    return found


def print_table(first: str, rows: dict[str, dict[str, float]]) -> None:
    columns = list(next(iter(rows.values())))
    print(f"\n| {first} | mean | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for label, ranks in rows.items():
        values = list(ranks.values())
        print(f"| {label} | {sum(values) / len(values):.0f} | " + " | ".join(f"{v:.0f}" for v in values) + " |")


if __name__ == "__main__":
    main()
