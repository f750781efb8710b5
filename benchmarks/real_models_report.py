"""Tables and figures from the real-model runs (benchmarks/real_models.py): the paper's protocol and a fair reading.

For every folder <model>/<task>/ of runs under docs/results/real_models (one tree per machine, e.g. h200/, cpu/):

* the paper's protocol: every method at the paper's rate (1e-3) for the same steps: final new-task score and
  retention, each with its standard error;
* the fair reading: each method at its best rate (the highest final new-task score), compared at equal new-task
  score: the level every selected run reaches (the lowest of their final scores); retention where each run's
  curve first reaches it (linear between evaluations), and the share of full fine-tuning's retention drop that
  each method shows there (the question users ask: at the same new-task score, how much of what full fine-tuning
  forgets does the method forget?);
* the Pareto front of every run (final new-task score against final retention);
* how many layers (the paper's Figure 4), where there are layer-count runs (`g-freeze-pilot-3`, ...): G-Freeze on
  the top N layers of each ranking, final new-task score and retention, beside the top third and every layer at
  the same rate; these runs stay out of the other tables;
* figures: new-task score and retention over steps per method (the paper's Figure 2), and every run's end point.

Retention is the mean accuracy over the retention tasks on which the base model is clearly above chance (the
model's baseline.json, or --tasks). Standard errors: binomial for scores; paired over the same questions for
retention changes (the base model answered the same questions at step 0), combined over tasks; the ratio's by the
delta method, ignoring the positive correlation of the two drops (so it is conservative).

    python -m benchmarks.real_models_report                       # every folder; writes report.md and PNGs there
    python -m benchmarks.real_models_report --results DIR --tasks arc_easy copa
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .methods import LAYER_RANKINGS, METHODS, layer_count, markdown_table, pareto_front
from .methods import method as method_named

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "real_models"
PAPER_LR = 1e-3
LABELS = {key: method.label for key, method in METHODS.items()}


def label(method: str) -> str:
    """A run's method as the tables name it; a guarded run (`g-freeze+kl-self-w1`) adds its guard's settings."""
    name, _, guard = method.partition("+kl-")
    if not guard:
        return method_named(name).label
    source, *settings = guard.split("-")
    return f"{method_named(name).label} + KL ({source}, " + ", ".join(f"{s[0]}={s[1:]}" for s in settings) + ")"


def order(method: str) -> tuple[int, int, str]:
    """Tables list methods in LABELS's order, each one's guarded runs right after it; layer counts last, by
    ranking and count."""
    name, _, guard = method.partition("+kl-")
    if count := layer_count(name):
        return len(LABELS) + LAYER_RANKINGS.index(count[0]), count[1], guard
    return list(LABELS).index(name), 0, guard


@dataclass
class Point:
    """One evaluation: the new-task score and, per retention task, the per-question outcomes (fractional where
    interpolated)."""

    step: float
    score: float
    n: int
    outcomes: dict[str, list[float]]

    def retention(self, tasks: list[str]) -> float:
        return sum(sum(self.outcomes[t]) / len(self.outcomes[t]) for t in tasks) / len(tasks)


def point(entry: dict) -> Point:
    outcomes = {task: [float(c) for c in r["correct"]] for task, r in entry["retention"].items()}
    return Point(entry["step"], entry["task"]["score"], entry["task"]["n"], outcomes)


def interpolate(a: Point, b: Point, w: float) -> Point:
    outcomes = {t: [(1 - w) * x + w * y for x, y in zip(a.outcomes[t], b.outcomes[t], strict=True)] for t in a.outcomes}
    return Point(a.step + w * (b.step - a.step), a.score + w * (b.score - a.score), a.n, outcomes)


@dataclass
class Run:
    method: str
    lr: float
    seed: int
    trainable: int
    total: int
    status: str
    seconds: float
    where: dict
    curve: list[Point]
    seconds_train: float = 0.0

    @property
    def final(self) -> Point:
        return self.curve[-1]

    def at_score(self, level: float) -> Point | None:
        """Where the curve first reaches `level`, linear between evaluations; None if it never does."""
        for a, b in zip(self.curve, self.curve[1:], strict=False):
            if a.score >= level:
                return a
            if b.score >= level:
                return interpolate(a, b, (level - a.score) / (b.score - a.score))
        return self.curve[-1] if self.curve[-1].score >= level else None

    def bracket(self, level: float) -> tuple[Point, Point] | None:
        """The evaluations before and after the first reaching of `level` (the same point twice where an
        evaluation reaches it exactly): what a reading between them rests on."""
        for a, b in zip(self.curve, self.curve[1:], strict=False):
            if a.score >= level:
                return a, a
            if b.score >= level:
                return (b, b) if b.score == level else (a, b)
        return None


def load_runs(folder: Path) -> list[Run]:
    runs = []
    for path in sorted(folder.glob("*_s*.json")):
        if path.name.endswith(".partial.json"):
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        runs.append(
            Run(
                data["method"],
                data["lr"],
                data["seed"],
                data["trainable"],
                data["total"],
                data["status"],
                data["seconds_train"] + data["seconds_eval"],
                data["where"],
                [point(e) for e in data["curve"]],
                data["seconds_train"],
            )
        )
    return runs


def change(after: Point, before: Point, tasks: list[str]) -> tuple[float, float]:
    """Retention change (mean over tasks) and its paired standard error."""
    means, variances = [], []
    for task in tasks:
        d = [x - y for x, y in zip(after.outcomes[task], before.outcomes[task], strict=True)]
        mean = sum(d) / len(d)
        var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1) / len(d)
        means.append(mean)
        variances.append(var)
    return sum(means) / len(tasks), math.sqrt(sum(variances)) / len(tasks)


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def clear_drop(change: tuple[float, float]) -> bool:
    """A retention change more than two standard errors below zero: one that a share can be read against."""
    mean, se = change
    return mean < -2 * se  # a standard error is never negative, so such a mean is never zero


def ratio(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float] | None:
    """a / b with the delta-method standard error; None where b's drop is not clearly negative."""
    (ma, sa), (mb, sb) = a, b
    if not clear_drop(b):
        return None
    r = ma / mb
    return r, abs(r) * math.sqrt((sa / ma) ** 2 + (sb / mb) ** 2) if ma else abs(sa / mb)


def pareto(runs: list[Run], tasks: list[str]) -> list[Run]:
    """Runs no other run beats on both final score and final retention, by score."""
    return pareto_front(runs, key=lambda r: (-r.final.score, -r.final.retention(tasks)))


def fmt(value: tuple[float, float | None] | None, scale: float = 100.0, signed: bool = False) -> str:
    """`mean ± se` scaled; the mean alone where there is no standard error (a corpus BLEU score)."""
    if value is None:
        return "n/a"
    mean, se = value
    shown = f"{mean * scale:+.1f}" if signed else f"{mean * scale:.1f}"
    return shown if se is None else f"{shown} ± {se * scale:.1f}"


def equal_score_header(lr_column: str, unit: str) -> list[str]:
    return [
        "method",
        lr_column,
        f"new task, end ({unit})",
        "retention, end %",
        "step at level",
        "retention change at level (points)",
        "share of full FT's drop",
        "change at the evaluations around it",
    ]


def equal_score(
    selected: dict[str, Run],
    base: Point,
    tasks: list[str],
    score_se: Callable[[Point], tuple[float, float]],
    scale: float,
    level: float | None = None,
) -> tuple[list[list[str]], float, tuple[float, float], dict]:
    """Each selected run (one per method, full fine-tuning among them) where it first reaches `level` (default:
    the lowest final score among them): its retention change there, and that change as a share of full
    fine-tuning's. A run that never reaches the level gets a row that says so."""
    level = min(r.final.score for r in selected.values()) if level is None else level
    full_drop = change(selected["full"].at_score(level), base, tasks)
    rows, methods = [], {}
    for method in sorted(selected, key=order):
        r = selected[method]
        at = r.at_score(level)
        if at is None:
            rows.append([label(method), f"{r.lr:.0e}", fmt(score_se(r.final), scale), "", "never", "", "", ""])
            rows[-1][3] = f"{r.final.retention(tasks) * 100:.1f}"
            methods[method] = {"lr": r.lr, "final_score": r.final.score, "reaches_level": False}
            continue
        drop = change(at, base, tasks)
        share = ratio(drop, full_drop) if method != "full" else None
        rows.append(
            [
                label(method),
                f"{r.lr:.0e}",
                fmt(score_se(r.final), scale),
                f"{r.final.retention(tasks) * 100:.1f}",
                f"{at.step:.0f}",
                fmt(drop, signed=True),
                reference_share(full_drop) if method == "full" else fmt(share, scale=1.0),
                around(r, level, base, tasks),
            ]
        )
        methods[method] = {"lr": r.lr, "final_score": r.final.score, "drop_at_level": drop, "share_of_full_drop": share}
    return rows, level, full_drop, methods


def reference_share(full_drop: tuple[float, float]) -> str:
    """Full fine-tuning's own cell in the share column: the reference, or why no share can be read."""
    return "1 (reference)" if clear_drop(full_drop) else "reference; no clear drop, so no shares"


def seeds_reference(full_drops: list[tuple[float, float]]) -> str:
    """Full fine-tuning's own cell in a share column over seeds: the reference, and on how many seeds its drop is
    clear enough to divide by (the other rows' shares come from those seeds only)."""
    return f"1 (clear drop on {sum(map(clear_drop, full_drops))} of {len(full_drops)} seeds)"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def fmt_seeds(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    """Mean ± standard error over seeds; a single seed has no standard error, and says so."""
    if len(values) > 1:
        return fmt(mean_se(values), scale, signed)
    return (f"{values[0] * scale:+.1f}" if signed else f"{values[0] * scale:.1f}") + " (one seed)"


def over_seeds(runs: list[Run], best: dict[str, Run], base: Point, tasks: list[str], scale: float) -> tuple:
    """Each method at its best rate, over every seed run there: final score and retention, the retention change
    where each seed's run first reaches 90% of full fine-tuning's mean final score, and that change as a share of
    full fine-tuning's of the same seed, on the seeds where that drop is clear (mean ± standard error over seeds).
    Rows only where some method has several seeds."""
    seeds = {m: [r for r in runs if r.method == m and r.lr == best[m].lr] for m in best}
    if max(map(len, seeds.values())) < 2:
        return [], {}
    level = 0.9 * mean_se([r.final.score for r in seeds["full"]])[0]
    full_drop = {r.seed: change(r.at_score(level), base, tasks) for r in seeds["full"] if r.at_score(level)}
    rows, found = [], {}
    for method in sorted(seeds, key=order):
        reached = [r for r in seeds[method] if r.at_score(level) is not None]
        changes = [change(r.at_score(level), base, tasks) for r in reached]
        drops = [mean for mean, _ in changes]
        # ratio() reads a share only against a clear drop, as in every other table
        shares = [
            share[0]
            for c, r in zip(changes, reached, strict=True)
            if r.seed in full_drop and (share := ratio(c, full_drop[r.seed]))
        ]
        finals = mean_se([r.final.score for r in seeds[method]])
        found[method] = {"seeds": [r.seed for r in seeds[method]], "final": finals, "drops": drops, "shares": shares}
        rows.append(
            [
                label(method),
                f"{best[method].lr:.0e}",
                f"{len(seeds[method])} ({len(reached)} reach it)",
                fmt_seeds([r.final.score for r in seeds[method]], scale),
                fmt_seeds([r.final.retention(tasks) for r in seeds[method]]),
                fmt_seeds(drops, signed=True) if drops else "never",
                seeds_reference(list(full_drop.values()))
                if method == "full"
                else (fmt_seeds(shares, scale=1.0) if shares else ""),
            ]
        )
    return rows, found | {"level": level}


def around(run: Run, level: float, base: Point, tasks: list[str]) -> str:
    """The retention change at the evaluations that bracket the level, with their steps: the interpolation at
    the level lies between them, so where they differ little it adds no doubt."""
    before, after = run.bracket(level)
    if before is after:
        return f"{change(before, base, tasks)[0] * 100:+.1f} (step {before.step:.0f}, measured)"
    return (
        f"{change(before, base, tasks)[0] * 100:+.1f} to {change(after, base, tasks)[0] * 100:+.1f} "
        f"(steps {before.step:.0f}-{after.step:.0f})"
    )


@dataclass
class Reading:
    """How one folder's runs are read: against the base model, on these retention tasks, in the task's unit."""

    base: Point
    tasks: list[str]
    scale: float  # 100 for exact match (shown in %), 1 for BLEU
    unit: str
    metric: str

    def score_se(self, p: Point) -> tuple[float, float | None]:
        # corpus BLEU is not a mean of per-item outcomes: no binomial error, and none is claimed
        return (p.score, None if self.metric == "bleu" else binomial_se(p.score, p.n))


def report(folder: Path, tasks: list[str], metric: str, unfinished: bool = False) -> tuple[str, dict]:
    finished = [r for r in load_runs(folder) if r.status == "done" or unfinished]
    if not finished:
        return f"(no finished runs in {folder})", {}
    runs = [r for r in finished if not layer_count(r.method)]  # the layer counts have their own table
    counted = [r for r in finished if layer_count(r.method)]
    base = finished[0].curve[0]
    reading = Reading(base, tasks, 1.0 if metric == "bleu" else 100.0, "BLEU" if metric == "bleu" else "EM %", metric)
    lines = [
        f"Base model: new task {base.score * reading.scale:.1f} {reading.unit} (n={base.n}), retention "
        f"{base.retention(tasks) * 100:.1f}% (mean accuracy over {', '.join(tasks)}; "
        + ", ".join(f"{t} {sum(base.outcomes[t]) / len(base.outcomes[t]) * 100:.1f}" for t in tasks)
        + f"). {len(finished)} runs ({sum(r.status != 'done' for r in finished)} stopped before the end, compared "
        f"at their last evaluation); {finished[0].where.get('gpu', finished[0].where.get('device'))}, "
        f"{finished[0].where.get('dtype')}.",
        "",
    ]
    summary = {"base_score": base.score, "base_retention": base.retention(tasks), "methods": {}}
    if runs:
        lines += method_tables(folder, runs, reading, summary)
    if counted:
        context = json.loads((folder / "context.json").read_text(encoding="utf-8"))
        lines += ["", *layer_counts(counted, runs, context, reading, summary)]
        plot_layer_counts(folder, summary["layer_counts"], reading.unit)
    return "\n".join(lines), summary


def method_tables(folder: Path, runs: list[Run], reading: Reading, summary: dict) -> list[str]:
    """The paper's protocol, the fair readings, the Pareto front, and the figures of every method's runs."""
    tasks = reading.tasks
    lines = paper_protocol(runs, reading)
    # the fair reading: each method at its best rate; then every method at full fine-tuning's best rate
    best: dict[str, Run] = {}
    for r in runs:
        if r.seed == 0 and (r.method not in best or r.final.score > best[r.method].final.score):
            best[r.method] = r
    if "full" in best:
        lines += fair_reading(runs, best, reading, summary)
    front = pareto(runs, tasks)
    lines.append(
        "Pareto front (final new-task score, final retention %): "
        + "; ".join(
            f"{label(r.method)} lr {r.lr:.0e} s{r.seed} "
            f"({r.final.score * reading.scale:.1f}, {r.final.retention(tasks) * 100:.1f})"
            for r in front
        )
    )
    summary["pareto"] = [[r.method, r.lr, r.seed] for r in front]
    plot(folder, runs, best, tasks, reading.scale, reading.unit)
    return lines


def paper_protocol(runs: list[Run], reading: Reading) -> list[str]:
    """Every method at the paper's rate, seed 0: trainable share, final score and retention, their change."""
    base, tasks, scale, unit = reading.base, reading.tasks, reading.scale, reading.unit
    paper = sorted((r for r in runs if r.lr == PAPER_LR and r.seed == 0), key=lambda r: order(r.method))
    rows = [
        [
            label(r.method),
            f"{r.trainable:,} ({r.trainable / runs[0].total:.0%})" if r.method != "full" else f"{r.trainable:,} (100%)",
            fmt(reading.score_se(r.final), scale),
            f"{r.final.retention(tasks) * 100:.1f}",
            fmt(change(r.final, base, tasks), signed=True),
            f"{r.seconds / 60:.1f}",
        ]
        for r in paper
    ]
    header = ["method", "trainable", f"new task ({unit})", "retention %", "retention change (points)", "minutes"]
    title = f"**The paper's protocol** (every method at lr {PAPER_LR:g}, same steps):"
    if not rows:
        return [title, "", f"(no finished run at lr {PAPER_LR:g} yet)", ""]
    return [title, "", markdown_table(header, rows), ""]


def fair_reading(runs: list[Run], best: dict[str, Run], reading: Reading, summary: dict) -> list[str]:
    """Each method at its best rate, at equal score: the lowest final score among them, 90% of full fine-tuning's,
    over seeds, and every method at full fine-tuning's best rate; `summary` takes the numbers."""
    base, tasks, scale, unit, score_se = reading.base, reading.tasks, reading.scale, reading.unit, reading.score_se
    rows, level, full_drop, summary["methods"] = equal_score(best, base, tasks, score_se, scale)
    summary |= {"level": level, "full_drop_at_level": full_drop}
    lines = [
        f"**Fair reading** (each method at its best rate; compared where each first reaches the new-task score "
        f"{level * scale:.1f} {unit}, the lowest final score among them):",
        "",
        markdown_table(equal_score_header("best lr", unit), rows),
        "",
    ]
    level = 0.9 * best["full"].final.score
    rows, _, _, summary["at_90_percent"] = equal_score(best, base, tasks, score_se, scale, level)
    lines += [
        f"**At 90% of tuned full fine-tuning's final score** (each method at its best rate; compared where each "
        f"first reaches {level * scale:.1f} {unit}, 90% of full fine-tuning's "
        f"{best['full'].final.score * scale:.1f}; the level where a score means the task is learnt, not only "
        "its answer format):",
        "",
        markdown_table(equal_score_header("best lr", unit), rows),
        "",
    ]
    rows, summary["over_seeds"] = over_seeds(runs, best, base, tasks, scale)
    if rows:
        lines += [
            f"**Over seeds** (each method at its best rate; where each seed's run first reaches "
            f"{summary['over_seeds']['level'] * scale:.1f} {unit}, 90% of full fine-tuning's mean final score; "
            "mean ± standard error over seeds, each share against full fine-tuning's drop of the same seed, on the "
            "seeds where that drop is clear):",
            "",
            markdown_table(
                [
                    "method",
                    "lr",
                    "seeds",
                    f"new task, end ({unit})",
                    "retention, end %",
                    "retention change at level",
                    "share",
                ],
                rows,
            ),
            "",
        ]
    lines += per_seed(runs, best, reading, summary)
    lines += cost(runs, best, summary)
    same_rate = {r.method: r for r in runs if r.seed == 0 and r.lr == best["full"].lr}
    if len(same_rate) > 1 and same_rate != best:
        rows, level, _, summary["same_rate"] = equal_score(same_rate, base, tasks, score_se, scale)
        lines += [
            f"**At full fine-tuning's best rate** ({best['full'].lr:.0e} for every method run at it; compared "
            f"where each first reaches {level * scale:.1f} {unit}, the lowest final score among them):",
            "",
            markdown_table(equal_score_header("lr", unit), rows),
            "",
        ]
    return lines


def cost(runs: list[Run], best: dict[str, Run], summary: dict) -> list[str]:
    """Each method at its best rate: trainable parameters and training seconds per step, mean over its runs."""
    rows, summary["seconds_per_step"] = [], {}
    for method in sorted(best, key=order):
        own = [r for r in runs if r.method == method and r.lr == best[method].lr and r.final.step > 0]
        per_step = [r.seconds_train / r.final.step for r in own]
        summary["seconds_per_step"][method] = per_step
        rows.append([label(method), f"{best[method].lr:.0e}", f"{best[method].trainable:,}", str(len(own))])
        spread = f" ({min(per_step):.1f}-{max(per_step):.1f})" if len(per_step) > 1 else ""
        rows[-1].append(f"{sum(per_step) / len(per_step):.1f}{spread}" if per_step else "")
    return [
        "**Cost** (each method at its best rate: trainable parameters, and training seconds per step as timed "
        "during the runs, evaluation left out, mean (lowest-highest) over its runs; the runs shared the machine "
        "with others, so these are rough. Peak memory is measured side by side in the speed benchmark, "
        "docs/performance.md):",
        "",
        markdown_table(["method", "lr", "trainable", "runs", "seconds per step"], rows),
        "",
    ]


def per_seed(runs: list[Run], best: dict[str, Run], reading: Reading, summary: dict) -> list[str]:
    """Each seed on its own, for the methods run on several seeds, at the lowest final score among that seed's
    runs: a seed where some method ends below the 90% level still gives an equal-score reading, at a level every
    one of its runs reaches; then each method's share over those seeds (mean ± standard error)."""
    lines, summary["per_seed"], summary["per_seed_level"] = [], {}, {}
    at_best = [r for r in runs if r.method in best and r.lr == best[r.method].lr]
    several = {m for m in best if len({r.seed for r in at_best if r.method == m}) > 1}
    if "full" not in several:
        return lines
    for seed in sorted({r.seed for r in at_best if r.method in several}):
        selected = {r.method: r for r in at_best if r.seed == seed and r.method in several}
        if "full" not in selected or len(selected) < 2:
            continue
        rows, level, _, summary["per_seed"][seed] = equal_score(
            selected, reading.base, reading.tasks, reading.score_se, reading.scale
        )
        summary["per_seed_level"][seed] = level
        lines += [
            f"**Seed {seed} alone** (the methods run on several seeds, each at its best rate; compared where each "
            f"first reaches {level * reading.scale:.1f} {reading.unit}, the lowest final score among this seed's "
            "runs):",
            "",
            markdown_table(equal_score_header("lr", reading.unit), rows),
            "",
        ]
    return lines + seeds_at_own_level(summary["per_seed"], summary["per_seed_level"], reading)


def seeds_at_own_level(readings: dict[int, dict], levels: dict[int, float], reading: Reading) -> list[str]:
    """Each method's retention change and share of full fine-tuning's drop over the seed tables, each seed read
    at its own level (mean ± standard error over seeds)."""
    if len(readings) < 2:
        return []
    rows = []
    for method in sorted({m for found in readings.values() for m in found}, key=order):
        read = [found[method] for found in readings.values() if found.get(method, {}).get("drop_at_level")]
        drops = [r["drop_at_level"][0] for r in read]
        shares = [r["share_of_full_drop"][0] for r in read if r.get("share_of_full_drop")]
        rows.append(
            [
                label(method),
                str(len(read)),
                fmt_seeds(drops, signed=True) if drops else "never",
                seeds_reference([r["drop_at_level"] for r in read])
                if method == "full"
                else (fmt_seeds(shares, scale=1.0) if shares else "n/a"),
            ]
        )
    at = ", ".join(f"{level * reading.scale:.1f}" for level in levels.values())
    return [
        f"**Each seed at its own level** (the seed tables above, at {at} {reading.unit}; mean ± standard error "
        "over seeds):",
        "",
        markdown_table(["method", "seeds", "retention change at the seed's level", "share of full FT's drop"], rows),
        "",
    ]


def layer_counts(counted: list[Run], runs: list[Run], context: dict, reading: Reading, summary: dict) -> list[str]:
    """Seed 0's layer-count runs per rate, each ranking's top N beside the top third (pilot) and every layer;
    `context` is the runner's context.json (its rankings and its top third)."""
    base, tasks, scale = reading.base, reading.tasks, reading.scale
    layers, third = len(context["rankings"]["pilot"]), len(context["top"])
    lines, found = [], []
    for lr in sorted({r.lr for r in counted}):
        at = {r.method: r for r in runs + counted if r.lr == lr and r.seed == 0 and "+kl-" not in r.method}
        rows = [(*layer_count(m), r) for m, r in at.items() if layer_count(m)]
        if "g-freeze-top" in at and f"g-freeze-pilot-{third}" not in at:
            rows.append(("pilot", third, at["g-freeze-top"]))
        if "g-freeze" in at:
            rows.append(("every layer", layers, at["g-freeze"]))
        rows.sort(key=lambda row: (row[1], row[0]))
        table = [
            [
                ranking,
                str(n),
                f"{r.trainable:,}",
                fmt(reading.score_se(r.final), scale),
                f"{r.final.retention(tasks) * 100:.1f}",
                fmt(change(r.final, base, tasks), signed=True),
            ]
            for ranking, n, r in rows
        ]
        found += [
            {
                "lr": lr,
                "ranking": ranking,
                "layers": n,
                "score": r.final.score * scale,
                "retention": r.final.retention(tasks) * 100,
            }
            for ranking, n, r in rows
        ]
        header = ["ranking", "layers", "trainable", f"new task, end ({reading.unit})", "retention, end %"]
        lines += [
            f"**How many layers** (G-Freeze on the top N of {layers} layers by each ranking, lr {lr:.0e}, seed 0; "
            "the paper's Figure 4):",
            "",
            markdown_table([*header, "retention change (points)"], table),
            "",
        ]
    summary["layer_counts"] = found
    return lines


def plot_layer_counts(folder: Path, found: list[dict], unit: str) -> None:
    """layers.png: final new-task score and retention against the number of grown layers, a line per ranking
    and rate (every layer's point shared by all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for lr in sorted({f["lr"] for f in found}):
        at = [f for f in found if f["lr"] == lr]
        every = [f for f in at if f["ranking"] == "every layer"]
        for ranking in LAYER_RANKINGS:
            own = sorted([f for f in at if f["ranking"] == ranking] + every, key=lambda f: f["layers"])
            if len(own) > len(every):
                counts = [f["layers"] for f in own]
                for ax, key in zip(axes, ("score", "retention"), strict=True):
                    ax.plot(counts, [f[key] for f in own], marker="o", label=f"{ranking} ({lr:.0e})")
    axes[0].set(xlabel="grown layers", ylabel=f"new task, end ({unit})")
    axes[1].set(xlabel="grown layers", ylabel="retention, end (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{folder.parent.name} / {folder.name}: G-Freeze on the top N layers of each ranking")
    fig.tight_layout()
    fig.savefig(folder / "layers.png", dpi=80)
    plt.close(fig)


def plot(folder: Path, runs: list[Run], best: dict[str, Run], tasks: list[str], scale: float, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r.method for r in runs}, key=order)
    colors = dict(zip(methods, plt.get_cmap("tab20").colors, strict=False))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (title, chosen) in enumerate(
        [
            (f"paper's protocol (lr {PAPER_LR:g})", [r for r in runs if r.lr == PAPER_LR and r.seed == 0]),
            ("each method at its best rate", list(best.values())),
        ]
    ):
        for r in chosen:
            steps = [p.step for p in r.curve]
            name = f"{label(r.method)} ({r.lr:.0e})"
            axes[0, col].plot(steps, [p.score * scale for p in r.curve], color=colors[r.method], label=name)
            axes[1, col].plot(steps, [p.retention(tasks) * 100 for p in r.curve], color=colors[r.method])
        axes[0, col].set(title=title, ylabel=f"new task ({unit})")
        axes[1, col].set(xlabel="step", ylabel="retention (mean accuracy %)")
        axes[0, col].legend(fontsize=7)
    fig.suptitle(f"{folder.parent.name} / {folder.name}: learning (top) and retention (bottom)")
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.6))
    for method in methods:
        own = [r for r in runs if r.method == method]
        if own:
            ax.scatter(
                [r.final.score * scale for r in own],
                [r.final.retention(tasks) * 100 for r in own],
                color=colors[method],
                label=label(method),
                s=24,
            )
    front = pareto(runs, tasks)
    ax.plot(
        [r.final.score * scale for r in front],
        [r.final.retention(tasks) * 100 for r in front],
        color="black",
        lw=1,
        drawstyle="steps-pre",
    )
    for r in front:
        ax.annotate(f"{r.lr:.0e}", (r.final.score * scale, r.final.retention(tasks) * 100), fontsize=7)
    base = runs[0].curve[0]
    ax.axhline(base.retention(tasks) * 100, color="grey", ls=":", lw=1, label="base model")
    ax.set(
        xlabel=f"new task, end ({unit})",
        ylabel="retention, end (%)",
        title=f"{folder.parent.name} / {folder.name}: every run (upper right is better)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tasks", nargs="+", help="retention tasks (default: the model's baseline.json)")
    parser.add_argument(
        "--include-unfinished", action="store_true", help="also runs that stopped early (their last evaluation)"
    )
    args = parser.parse_args(argv)
    for folder in sorted(p.parent for p in args.results.rglob("base.json")):
        model = folder.parent.name
        found = [*args.results.rglob("baseline.json"), *RESULTS.rglob("baseline.json")]  # any machine's will do
        baselines = sorted(p for p in found if p.parent.name == model)
        tasks = args.tasks or (json.loads(baselines[0].read_text())["above_chance"] if baselines else None)
        if not tasks:
            raise SystemExit(f"error: no retention tasks for {model}: pass --tasks or measure its baseline.json")
        first = json.loads(next(folder.glob("base.json")).read_text())
        tasks = [t for t in tasks if t in first["point"]["retention"]]
        metric = "bleu" if folder.name == "mtnt" else "exact_match"
        if not any(folder.glob("*_s*.json")):
            continue
        text, summary = report(folder, tasks, metric, args.include_unfinished)
        if not summary:
            print(f"## {folder.relative_to(args.results)}\n\n{text}\n")
            continue
        (folder / "report.md").write_text(f"# {model} / {folder.name}\n\n{text}\n", encoding="utf-8")
        (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print(f"## {folder.relative_to(args.results)}\n\n{text}\n")


if __name__ == "__main__":
    main()
