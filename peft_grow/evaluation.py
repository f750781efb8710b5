"""Evaluation: retention of the original skills (lm-eval) and scores on the paper's new tasks.

The paper (arXiv 2603.08647, section 4) measures forgetting as WinoGrande accuracy and new skills as
exact-match accuracy (QASC, MathQA) or SacreBLEU (MTNT English-French). Everything here runs offline on
local copies of the data in their original formats; see docs/evaluation.md.

- retention(): lm-eval's multiple-choice scoring on the tasks packaged in peft_grow/tasks (grow_winogrande,
  grow_arc_easy, ...), for a plain model or a PeftModel, with no copy of the base model;
- qasc_examples(), mathqa_examples(), mtnt_examples(): (prompt, answer) pairs from the original files;
- generate_answers(), score_generation(), exact_match(), extract_choice(), bleu(): generation and metrics;
- loss_with_and_without_adapter(): the loss on a reference text with the adapter on and off, in one model.

lm-eval and sacrebleu (the `eval` extra) are imported only by the functions that need them.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import re
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval task definitions: --include_path this folder
DATA_ENV = "PEFT_GROW_DATA"  # fallback for the data directory when none is passed
TASK_PREFIX = "grow_"  # our task names never clash with lm-eval's built-in ones
RETENTION_TASKS = ("winogrande", "arc_easy", "boolq", "copa", "openbook_qa", "commonsense_qa")
DEFAULT_RETENTION_TASKS = ("winogrande",)  # the paper's retention proxy
METRICS = ("exact_match", "choice", "bleu")
QASC_LETTERS, MATHQA_LETTERS = "ABCDEFGH", "abcde"  # as the files write them

# files each packaged task reads, relative to the data directory
TASK_FILES = {
    "winogrande": ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"),
    **{name: (f"icl/{name}.jsonl",) for name in RETENTION_TASKS[1:]},
}
_LAYOUT_HINT = (
    "point it at the folder that holds winogrande/, icl/, qasc/, mathqa/ and mtnt/ in their original formats "
    "(see docs/evaluation.md)"
)


class MissingDataError(FileNotFoundError):
    """A data directory or file that an evaluation needs is not there."""


# ---------------------------------------------------------------------------------------------- data files


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The task data directory: `data_dir` if given, else $PEFT_GROW_DATA; never a guess."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV)
    if not chosen:
        raise MissingDataError(
            "No task data directory was given: pass data_dir=... (Python), --metadata '{\"data_dir\": ...}' "
            f"(lm_eval command line) or set ${DATA_ENV}; {_LAYOUT_HINT}."
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"The task data directory {path} does not exist or is not a folder; {_LAYOUT_HINT}.")
    return path


def data_file(data_dir: str | os.PathLike | None, relative: str) -> Path:
    """`relative` inside the data directory, with an error naming what is there instead when it is missing."""
    root = resolve_data_dir(data_dir)
    path = root / relative
    if path.is_file():
        return path
    folder = path.parent
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    hint = " (it holds a tasks/ folder: pass that one)" if (root / "tasks" / relative).is_file() else ""
    raise MissingDataError(
        f"Expected the file {relative} in the task data directory {root}{hint}; found "
        + (f"{found} in {folder}" if found is not None else f"no folder {folder}")
        + f". Copy the original file there, or {_LAYOUT_HINT}."
    )


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_winogrande(data_dir: str | os.PathLike | None = None, split: str = "dev") -> list[dict]:
    """WinoGrande 1.1 records (`sentence`, `option1`, `option2`, `answer` "1"/"2") with the labels file's answers.

    The original release keeps labels in `{split}-labels.lst`, one per line, in the order of `{split}.jsonl`.
    """
    records = _read_jsonl(data_file(data_dir, f"winogrande/{split}.jsonl"))
    labels_path = data_file(data_dir, f"winogrande/{split}-labels.lst")
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(records):
        raise ValueError(
            f"{labels_path} holds {len(labels)} labels but winogrande/{split}.jsonl {len(records)} records; "
            "they must come from the same release, line for line."
        )
    for record, label in zip(records, labels, strict=True):
        if label not in ("1", "2") or record.get("answer", label) != label:
            raise ValueError(
                f"WinoGrande record {record.get('qID')}: label {label!r} from {labels_path.name} does not match "
                f"the record's answer {record.get('answer')!r} (expected '1' or '2', the same in both)."
            )
        record["answer"] = label
    return records


def read_icl(name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Records of tasks/icl/{name}.jsonl: `query`, `choices` (a list) and `gold` (the right choice's index)."""
    path = data_file(data_dir, f"icl/{name}.jsonl")
    records = _read_jsonl(path)
    for index, record in enumerate(records):
        if not {"query", "choices", "gold"} <= set(record):
            raise ValueError(
                f"{path} line {index + 1}: expected the keys query, choices and gold, found {sorted(record)}."
            )
    return records


# ------------------------------------------------------------------------------------- new tasks: examples


@dataclass
class Example:
    """One prompt and the answer a model should generate after it (train on `text`, score the answer)."""

    prompt: str
    answer: str
    choices: dict[str, str] = field(default_factory=dict)  # option letter -> option text, for choice tasks

    @property
    def text(self) -> str:
        """Prompt and answer as one training text."""
        return f"{self.prompt} {self.answer}"


def _load_json_list(path: str | os.PathLike, what: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"Expected the {what} file {path}; it does not exist. {_LAYOUT_HINT.capitalize()}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what} records, found {type(data).__name__}.")
    return data


def parse_options(text: str, letters: str) -> dict[str, str]:
    """Option letter -> text, from QASC's "(A) sand (B) forests ..." or MathQA's "a ) 38 , b ) 27.675 , ...".

    The letters are looked for in order, each as a marker "(x)" / "x )" after a space or comma, so an option
    text holding "( y )" cannot start a new option. Raises if a letter is missing.
    """
    markers = []
    cursor = 0
    for letter in letters:
        marker = re.compile(rf"(?:^|(?<=[\s,]))\(?{re.escape(letter)}\s*\)").search(text, cursor)
        if marker is None:
            raise ValueError(f"Expected options {', '.join(letters)} in {text!r}; option {letter!r} is missing.")
        markers.append(marker)
        cursor = marker.end()
    ends = [m.start() for m in markers[1:]] + [len(text)]
    return {m.group().strip("( )"): text[m.end() : end].strip(" ,") for m, end in zip(markers, ends, strict=True)}


def _mathqa_options(options: str) -> str:
    """MathQA's options string; about 2.5% of records hold a Python list repr instead, joined like the rest."""
    if options.startswith("["):
        return " , ".join(ast.literal_eval(options))
    return options


def qasc_examples(path: str | os.PathLike, with_facts: bool = False) -> list[Example]:
    """QASC ({train,dev}.json): "Question: ...\\nOptions: (A) ... (H) ...\\nAnswer:" -> the letter, e.g. "F".

    with_facts=True puts the two supporting facts before the question (open-book); the default is closed-book.
    """
    examples = []
    for record in _load_json_list(path, "QASC"):
        letter = extract_choice(record["answer"])
        if letter is None:
            raise ValueError(f"{path}: QASC answer {record['answer']!r} does not start with an option letter.")
        facts = f"Facts: {record['fact 1']} {record['fact 2']}\n" if with_facts else ""
        prompt = f"{facts}Question: {record['question']}\nOptions: {record['answers']}\nAnswer:"
        examples.append(Example(prompt, letter, parse_options(record["answers"], QASC_LETTERS)))
    return examples


def mathqa_examples(path: str | os.PathLike) -> list[Example]:
    """MathQA ({dev,test}.json): "Problem: ...\\nOptions: a ) ... , e ) ...\\nAnswer:" -> the letter, e.g. "c"."""
    examples = []
    for record in _load_json_list(path, "MathQA"):
        options = _mathqa_options(record["options"])
        prompt = f"Problem: {record['Problem']}\nOptions: {options}\nAnswer:"
        examples.append(Example(prompt, record["correct"], parse_options(options, MATHQA_LETTERS)))
    return examples


def mtnt_examples(path: str | os.PathLike) -> list[Example]:
    """MTNT en-fr (*.en-fr.tsv: id, English, French): "English: ...\\nFrench:" -> the French sentence.

    Fields are split on tabs only (no CSV quoting): the Reddit text holds quotes of its own.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"Expected the MTNT file {path}; it does not exist. {_LAYOUT_HINT.capitalize()}.")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 3:
            raise ValueError(
                f"{path} line {number}: expected 3 tab-separated columns (id, English, French), found {len(columns)}."
            )
        examples.append(Example(f"Translate English to French.\nEnglish: {columns[1]}\nFrench:", columns[2]))
    return examples


# ------------------------------------------------------------------------------------------------ metrics


def normalize_answer(text: str) -> str:
    """First non-empty line, lower-cased, surrounding punctuation and whitespace dropped, spaces collapsed.

    Models run on past the answer (a new question, an explanation); the answer is the first line.
    """
    first = text.strip().split("\n", 1)[0]
    return " ".join(first.strip(string.punctuation + string.whitespace).lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after normalize_answer, in [0, 1]."""
    _check_pairs(predictions, references)
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )


def extract_choice(text: str, letters: str = "ABCDEFGH") -> str | None:
    """The option letter a generation chose, upper-case, or None.

    Reads "(C) forests", "C)", "c ) 625", "C." or "C" at the start, else "Answer: c" / "the answer is (B)"
    anywhere; a letter that starts a word ("A cat ...") is not a choice. Matching ignores case.
    """
    allowed = re.escape(letters.upper() + letters.lower())
    first_line = text.strip().split("\n", 1)[0]
    start = re.match(rf"\s*\(?\s*([{allowed}])\s*(?:\)|[.:]|$)", first_line)
    if start:
        return start.group(1).upper()
    stated = re.search(
        rf"\banswer(?:\s+is)?\s*[:=-]?\s*(?:\(\s*([{allowed}])\s*\)|([{allowed}])(?=\s*(?:[).,;:]|$)))",
        text,
        flags=re.IGNORECASE | re.MULTILINE,
    )
    if stated:
        return (stated.group(1) or stated.group(2)).upper()
    return None


def choice_accuracy(predictions: Sequence[str], references: Sequence[str], letters: str = "ABCDEFGH") -> float:
    """Share of predictions whose extracted option letter is the reference's, in [0, 1]."""
    _check_pairs(predictions, references)
    gold = [extract_choice(r, letters) for r in references]
    if None in gold:
        bad = references[gold.index(None)]
        raise ValueError(f"Reference {bad!r} names no option letter from {letters!r}.")
    return sum(extract_choice(p, letters) == g for p, g in zip(predictions, gold, strict=True)) / len(predictions)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus SacreBLEU (0-100, default 13a tokenisation), one reference per prediction.

    sacrebleu directly: evaluate.load("sacrebleu") would fetch its script from the Hub.
    """
    _check_pairs(predictions, references)
    sacrebleu = _require("sacrebleu")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists of strings, not single strings.")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"Expected as many predictions as references, at least one; found {len(predictions)} predictions "
            f"and {len(references)} references."
        )


# --------------------------------------------------------------------------------------------- generation


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return candidate
    return 0  # padded positions are masked out; any id will do


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of `prompts`: only the new text, special tokens dropped.

    Prompts are encoded with the tokenizer's own special tokens and left-padded by hand, so a tokenizer
    without a pad token works and is not modified. Works for a PeftModel (adapter on) and a plain model.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string.")
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    answers: list[str] = []
    with _eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            encoded = [tokenizer(p)["input_ids"] for p in prompts[start : start + batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            answers += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return answers


def score_generation(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    metric: str = "exact_match",
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> float:
    """Generate an answer to every example and score it: "exact_match" or "choice" in [0, 1], "bleu" 0-100.

    "choice" compares option letters (extract_choice), the fair reading of "(F) local weather" against "F";
    "bleu" scores the first line of each generation. max_new_tokens defaults to 16, or 128 for "bleu".
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: expected one of {METRICS}.")
    if max_new_tokens is None:
        max_new_tokens = 128 if metric == "bleu" else 16
    predictions = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size)
    references = [e.answer for e in examples]
    if metric == "bleu":
        return bleu([p.strip().split("\n", 1)[0].strip() for p in predictions], references)
    if metric == "choice":
        return choice_accuracy(predictions, references)
    return exact_match(predictions, references)


# ------------------------------------------------------------------------------------------------- losses


@torch.no_grad()
def reference_loss(
    model: torch.nn.Module,
    tokenizer,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> float:
    """Mean next-token loss (nats) over non-overlapping `seq_len`-token windows of a reference text.

    A string is encoded with the tokenizer as is; pass ids to control special tokens. A text shorter than
    one window is scored as one window; a shorter tail after whole windows is dropped (equal weights).
    """
    ids = _as_ids(tokenizer, text_or_ids)
    if len(ids) < 2:
        raise ValueError(f"Expected a reference text of at least 2 tokens, found {len(ids)}.")
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len) if len(ids) >= seq_len else ids.view(1, -1)
    if max_windows is not None:
        windows = windows[:max_windows]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with _eval_mode(model):
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return total / count


def _as_ids(tokenizer, text_or_ids: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        return torch.tensor(tokenizer(text_or_ids)["input_ids"], dtype=torch.long)
    return torch.as_tensor(text_or_ids, dtype=torch.long).flatten()


def loss_with_and_without_adapter(
    peft_model: torch.nn.Module,
    tokenizer,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> tuple[float, float]:
    """(loss with the active adapter, loss with it disabled) on a reference text, in the same model.

    Disabling the adapter gives back exactly the base model (docs/method.md), so the second value is the
    base model's loss without keeping a copy of it; on the original domain the difference is the forgetting.
    """
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError(
            f"Expected a PeftModel (with disable_adapter()), found {type(peft_model).__name__}; for a plain "
            "model use reference_loss()."
        )
    kwargs = dict(seq_len=seq_len, batch_size=batch_size, max_windows=max_windows)
    with_adapter = reference_loss(peft_model, tokenizer, text_or_ids, **kwargs)
    with peft_model.disable_adapter():
        without_adapter = reference_loss(peft_model, tokenizer, text_or_ids, **kwargs)
    return with_adapter, without_adapter


# ------------------------------------------------------------------------------------- retention (lm-eval)


def task_name(name: str) -> str:
    """The packaged lm-eval task for `name` ("winogrande" or "grow_winogrande" -> "grow_winogrande")."""
    short = name.removeprefix(TASK_PREFIX)
    if short not in RETENTION_TASKS:
        raise ValueError(
            f"Unknown retention task {name!r}: expected one of {list(RETENTION_TASKS)} (optionally prefixed "
            f"{TASK_PREFIX!r}). For lm-eval's own tasks call lm_eval.simple_evaluate directly."
        )
    return TASK_PREFIX + short


def task_manager(data_dir: str | os.PathLike | None = None, include_defaults: bool = False):
    """An lm_eval TaskManager that knows the packaged tasks and reads their data from `data_dir`.

    The directory reaches the tasks' loaders as task metadata, the same path as `--metadata` on the lm_eval
    command line. include_defaults=False skips indexing lm-eval's thousands of built-in tasks.
    """
    tasks = _require("lm_eval.tasks", "lm_eval")
    root = resolve_data_dir(data_dir)
    return tasks.TaskManager(
        include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata={"data_dir": str(root)}
    )


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[str] = DEFAULT_RETENTION_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
    **simple_evaluate_kwargs: Any,
) -> dict:
    """lm_eval.simple_evaluate's full results for the packaged tasks, on a model object already in memory.

    The model (plain or PeftModel, adapter as it is set) is wrapped in lm-eval's HFLM without copying; HFLM
    puts it in eval mode, which is undone afterwards. The tokenizer is copied, because HFLM sets a pad token
    on it. Data files are checked before lm-eval starts, so a missing one gives a clear error.
    """
    names = [task_name(t) for t in tasks]
    root = resolve_data_dir(data_dir)
    for name in names:
        for relative in TASK_FILES[name.removeprefix(TASK_PREFIX)]:
            data_file(root, relative)
    evaluator = _require("lm_eval.evaluator", "lm_eval")
    huggingface = _require("lm_eval.models.huggingface", "lm_eval")
    with _eval_mode(model):
        lm = huggingface.HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        options = dict(log_samples=False, bootstrap_iters=0) | simple_evaluate_kwargs
        return evaluator.simple_evaluate(
            model=lm, tasks=names, task_manager=task_manager(root), limit=limit, num_fewshot=num_fewshot, **options
        )


def retention(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[str] = DEFAULT_RETENTION_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy (lm-eval's `acc`, zero-shot) per retention task, keyed by short name: {"winogrande": 0.51}.

    Compare a grown model with the adapter on and inside `model.disable_adapter()` (the base model).
    """
    results = evaluate_tasks(model, tokenizer, tasks, data_dir=data_dir, limit=limit, batch_size=batch_size)
    return {name.removeprefix(TASK_PREFIX): scores["acc,none"] for name, scores in results["results"].items()}


def _require(module: str, package: str | None = None):
    """Import an optional dependency of the `eval` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"peft_grow.evaluation needs {package or module} for this: pip install 'peft-grow[eval]'."
        ) from error


def _main() -> None:
    """`python -m peft_grow.evaluation ...` is the lm_eval command line with GROW registered with PEFT.

    lm_eval loads `--model_args ...,peft=<adapter>` before it reads any task, so `import peft_grow` must come
    first or PEFT does not know the GROW adapter type.
    """
    import peft_grow  # noqa: F401  (registers GROW with PEFT)

    _require("lm_eval", "lm_eval")
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    _main()
