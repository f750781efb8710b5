"""Evaluation: retention of the original skills (lm-eval) and scores on the paper's new tasks.

The paper (arXiv 2603.08647, section 4) measures forgetting as WinoGrande accuracy and new skills as
exact-match accuracy (QASC, MathQA) or SacreBLEU (MTNT English-French). Everything here runs offline on
local copies of the data in their original formats; see docs/evaluation.md.

- retention(): lm-eval's multiple-choice scoring on the tasks packaged in peft_grow/evaluation/tasks (grow_winogrande,
  grow_arc_easy, ...), for a plain model or a PeftModel, with no copy of the base model;
- qasc_examples(), mathqa_examples(), mtnt_examples(): (prompt, answer) pairs from the original files;
- generate_answers(), score_generation(), exact_match(), extract_choice(), bleu(): generation and metrics;
- loss_with_and_without_adapter(): the loss on a reference text with the adapter on and off, in one model.

The code is in `data.py` (readers), `metrics.py`, `generation.py` and `harness.py` (lm-eval); every public
name is importable from `peft_grow.evaluation`. lm-eval and sacrebleu (the `eval` extra) are imported only by
the functions that need them.
"""

from .data import (
    DATA_ENV,
    MATHQA_LETTERS,
    MTNT_DEMONSTRATION,
    QASC_LETTERS,
    RETENTION_TASKS,
    TASK_FILES,
    Example,
    MissingDataError,
    data_file,
    mathqa_examples,
    mtnt_examples,
    parse_options,
    qasc_examples,
    read_icl,
    read_winogrande,
    resolve_data_dir,
)
from .generation import (
    generate_answers,
    loss_with_and_without_adapter,
    pad_token_id,
    reference_loss,
    score_generation,
)
from .harness import DEFAULT_RETENTION_TASKS, TASK_PREFIX, TASKS_DIR, evaluate_tasks, retention, task_manager, task_name
from .metrics import METRICS, bleu, choice_accuracy, exact_match, extract_choice, normalize_answer

__all__ = [
    "DATA_ENV",
    "DEFAULT_RETENTION_TASKS",
    "MATHQA_LETTERS",
    "METRICS",
    "MTNT_DEMONSTRATION",
    "QASC_LETTERS",
    "RETENTION_TASKS",
    "TASKS_DIR",
    "TASK_FILES",
    "TASK_PREFIX",
    "Example",
    "MissingDataError",
    "bleu",
    "choice_accuracy",
    "data_file",
    "evaluate_tasks",
    "exact_match",
    "extract_choice",
    "generate_answers",
    "loss_with_and_without_adapter",
    "mathqa_examples",
    "mtnt_examples",
    "normalize_answer",
    "pad_token_id",
    "parse_options",
    "qasc_examples",
    "read_icl",
    "read_winogrande",
    "reference_loss",
    "resolve_data_dir",
    "retention",
    "score_generation",
    "task_manager",
    "task_name",
]
