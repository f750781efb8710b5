"""The paper's data in its original formats, read offline: the retention tasks' files (WinoGrande, the
in-context multiple-choice sets) and the new tasks' (prompt, answer) examples (QASC, MathQA, MTNT en-fr)."""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import extract_choice

DATA_ENV = "PEFT_GROW_DATA"  # fallback for the data directory when none is passed
RETENTION_TASKS = ("winogrande", "arc_easy", "boolq", "copa", "openbook_qa", "commonsense_qa")
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


# A hand-written pair, not from MTNT, that a one-shot MTNT prompt shows before the sentence: without it a small
# base model mostly copies the English line (docs/evaluation.md gives the scores).
MTNT_DEMONSTRATION = (
    "I am not sure this is a good idea, but let us try it.",
    "Je ne suis pas sûr que ce soit une bonne idée, mais essayons.",
)


def mtnt_examples(path: str | os.PathLike, one_shot: bool = False) -> list[Example]:
    """MTNT en-fr (*.en-fr.tsv: id, English, French): "English: ...\\nFrench:" -> the French sentence.

    one_shot=True shows MTNT_DEMONSTRATION's English and French lines first. Fields are split on tabs only (no CSV
    quoting): the Reddit text holds quotes of its own.
    """
    shot = "English: {}\nFrench: {}\n".format(*MTNT_DEMONSTRATION) if one_shot else ""
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
        examples.append(Example(f"Translate English to French.\n{shot}English: {columns[1]}\nFrench:", columns[2]))
    return examples
