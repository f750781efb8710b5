"""Scores of generated answers: exact match, multiple-choice letter accuracy, SacreBLEU (the `eval` extra)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from .._extras import require

METRICS = ("exact_match", "choice", "bleu")


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
    sacrebleu = require("sacrebleu", "bleu()")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists of strings, not single strings.")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"Expected as many predictions as references, at least one; found {len(predictions)} predictions "
            f"and {len(references)} references."
        )
