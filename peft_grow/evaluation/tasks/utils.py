"""lm-eval glue for the packaged tasks: load the local files, score WinoGrande as lm-eval's own task does.

lm-eval calls a task's `custom_dataset` with the task metadata (where `data_dir` arrives from
`TaskManager(metadata=...)` or `--metadata` on the command line) and the task's `dataset_kwargs`.
"""

from __future__ import annotations

from typing import Any

import datasets

from peft_grow.evaluation import read_icl, read_winogrande


def winogrande_dataset(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """WinoGrande 1.1 dev (dev.jsonl + dev-labels.lst) as the validation split."""
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(read_winogrande(data_dir, "dev"))})


def icl_dataset(data_dir: str | None = None, icl_task: str = "", **_: Any) -> datasets.DatasetDict:
    """tasks/icl/{icl_task}.jsonl (`query`, `choices`, `gold`) as the validation split."""
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(read_icl(icl_task, data_dir))})


# WinoGrande, scored as lm-eval's `winogrande` task (lm_eval/tasks/winogrande/preprocess_winogrande.py):
# partial evaluation, the two option-filled prefixes are the contexts and the rest of the sentence is the
# continuation whose likelihood is compared. doc_to_text returning an int marks "multiple inputs".


def winogrande_gold(doc: dict) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_continuation(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_prefixes(doc: dict) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
