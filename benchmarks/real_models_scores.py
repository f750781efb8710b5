"""The real-model benchmark's scores: the new task's (exact match or SacreBLEU, by generation) and retention's
(lm-eval accuracy with the per-question outcomes), measured together at every evaluation."""

from __future__ import annotations

import time
from pathlib import Path

from peft_grow import evaluation as ev

from .real_models_setup import Setup
from .real_models_tasks import TASKS


def task_score(model, tokenizer, examples: list[ev.Example], task: str, batch_size: int) -> dict:
    """The new-task score (exact match in [0, 1], or SacreBLEU 0-100), with per-question correctness for EM."""
    spec = TASKS[task]
    if spec.metric == "bleu":  # the package's BLEU scoring: generation up to the first newline, that line scored
        score = ev.score_generation(model, tokenizer, examples, "bleu", spec.max_new_tokens, batch_size)
        return {"score": score, "n": len(examples)}
    predictions = ev.generate_answers(model, tokenizer, [e.prompt for e in examples], spec.max_new_tokens, batch_size)
    correct = [
        int(ev.normalize_answer(p) == ev.normalize_answer(e.answer)) for p, e in zip(predictions, examples, strict=True)
    ]
    return {
        "score": sum(correct) / len(correct),
        "n": len(correct),
        "correct": "".join(map(str, correct)),
        "sample": predictions[:3],
    }


# lm-eval metric per retention task: length-normalised accuracy where lm-eval's own task cards report it
RETENTION_METRIC = {"arc_easy": "acc_norm", "openbook_qa": "acc_norm"}


def retention_scores(model, tokenizer, tasks: list[str], data: Path, limit: int | None, batch_size: int) -> dict:
    """lm-eval accuracy per retention task, with the per-question outcomes (for paired standard errors)."""
    if not tasks:
        return {}
    results = ev.evaluate_tasks(
        model, tokenizer, tasks, data_dir=data, limit=limit, batch_size=batch_size, log_samples=True
    )
    scores = {}
    for task in tasks:
        name = ev.task_name(task)
        metric = RETENTION_METRIC.get(task, "acc")
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        correct = [int(s[metric]) for s in samples]
        chance = [1 / len(s["arguments"]) for s in samples]
        targets = [s["target"] for s in samples]  # the gold choice's index (WinoGrande's is its continuation)
        scores[task] = {
            "metric": metric,
            "acc": sum(correct) / len(correct),
            "n": len(correct),
            "chance": sum(chance) / len(chance),
            # always answering the commonest choice; WinoGrande's two options are balanced by design
            "majority": max(map(targets.count, set(targets))) / len(targets) if task != "winogrande" else 0.5,
            "correct": "".join(map(str, correct)),
        }
    return scores


def evaluate(model, tokenizer, setup: Setup) -> dict:
    """The new-task score and retention of `model`, and the seconds they took."""
    start = time.perf_counter()
    point = {"task": task_score(model, tokenizer, setup.test, setup.task, setup.args.eval_batch)}
    point["retention"] = retention_scores(
        model, tokenizer, setup.retention, setup.data, setup.args.retention_limit, setup.args.eval_batch
    )
    point["seconds"] = time.perf_counter() - start
    return point
