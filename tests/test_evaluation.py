"""peft_grow.evaluation: metrics, the new tasks' examples, generation, adapter on/off losses and retention.

Known answers throughout: hand-written metric cases, the first records of the data slices in tests/data,
the published greedy sample of the real stories260K model, and lm-eval's accuracy recomputed by hand.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from helpers import tiny_model
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_grow import GrowConfig
from peft_grow import evaluation as ev

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tasks"
MODEL_DIR = ROOT / "examples" / "data" / "stories260K"
REFERENCE_TEXT = (ROOT / "examples" / "data" / "stories260K_samples.txt").read_text(encoding="utf-8")[:6000]


@pytest.fixture
def tokenizer():
    # the tokenizer does not add <s> by itself; the model was trained with it
    return AutoTokenizer.from_pretrained(MODEL_DIR, add_bos_token=True)


@pytest.fixture
def model():
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()


def perturb_new_weights(peft_model: torch.nn.Module) -> None:
    """Move every trainable (new) tensor, as training would."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))


# ------------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize(
    ("prediction", "reference", "equal"),
    [
        ("Paris", "paris", True),
        ("  Paris.\nThe capital of France is Paris.", "Paris", True),  # first line only
        ("(C)", "c", True),
        ('"local   weather conditions"', "local weather conditions", True),
        ("Paris is nice", "Paris", False),
        ("", "Paris", False),
    ],
)
def test_exact_match_normalisation(prediction, reference, equal):
    assert ev.exact_match([prediction], [reference]) == float(equal)


def test_exact_match_is_the_share_of_matches():
    assert ev.exact_match(["a", "B.", "c", "x"], ["A", "b", "C", "d"]) == 0.75


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("(C) forests", "C"),
        ("C", "C"),
        ("c ) 625", "C"),
        ("F. local weather conditions", "F"),
        ("Answer: c", "C"),
        ("The answer is (B).", "B"),
        ("answer : e .", "E"),
        ("\n (H) city life\n(A) sand", "H"),
        ("A cat sat on the mat.", None),  # a word, not a choice
        ("Answer: a cat", None),
        ("(Z) nothing", None),  # not an option letter
        ("", None),
    ],
)
def test_extract_choice(text, choice):
    assert ev.extract_choice(text) == choice


def test_extract_choice_respects_the_allowed_letters():
    assert ev.extract_choice("(F) forests", letters="abcde") is None
    assert ev.extract_choice("(e) 1024", letters="abcde") == "E"


def test_choice_accuracy_compares_letters():
    assert ev.choice_accuracy(["(F) local weather", "Answer: c", "I do not know"], ["F", "c", "A"]) == pytest.approx(
        2 / 3
    )
    with pytest.raises(ValueError, match="names no option letter"):
        ev.choice_accuracy(["A"], ["forests"])


def test_bleu_identical_text_is_100():
    text = ["Le chat est sur le tapis.", "Je l'ai fait quand j'étais petit."]
    assert ev.bleu(text, text) == pytest.approx(100.0)


def test_bleu_known_case_matches_sacrebleu_and_a_hand_computation():
    prediction, reference = ["the cat sat on the mat"], ["the cat is on the mat"]
    # n-gram precisions 5/6, 3/5, 1/4 and 0/3; sacrebleu's default "exp" smoothing makes the last 1/(2*3);
    # both sides have 6 tokens, so no brevity penalty
    by_hand = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert ev.bleu(prediction, reference) == pytest.approx(by_hand)
    assert ev.bleu(prediction, reference) == sacrebleu.corpus_bleu(prediction, [reference]).score
    assert round(by_hand, 2) == 37.99


def test_metrics_refuse_mismatched_or_single_strings():
    with pytest.raises(ValueError, match="1 predictions and 2 references"):
        ev.exact_match(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="lists of strings"):
        ev.bleu("a", "a")


# ------------------------------------------------------------------------------------- new tasks: examples


def test_qasc_examples_parse_the_original_file():
    examples = ev.qasc_examples(DATA / "qasc" / "dev.json")
    assert len(examples) == 20
    first = examples[0]
    assert first.prompt == (
        "Question: Climate is generally described in terms of what?\n"
        "Options: (A) sand (B) occurs over a wide range (C) forests (D) Global warming (E) rapid changes occur "
        "(F) local weather conditions (G) measure of motion (H) city life\nAnswer:"
    )
    assert first.answer == "F"
    assert first.choices["F"] == "local weather conditions" and list(first.choices) == list("ABCDEFGH")
    raw = json.loads((DATA / "qasc" / "dev.json").read_text(encoding="utf-8"))
    assert all(f"({e.answer}) {e.choices[e.answer]}" == r["answer"] for e, r in zip(examples, raw, strict=True))
    with_facts = ev.qasc_examples(DATA / "qasc" / "dev.json", with_facts=True)[0]
    assert with_facts.prompt.startswith("Facts: Climate is generally described in terms of temperature and moisture.")
    assert with_facts.prompt.endswith(first.prompt)


def test_mathqa_examples_parse_the_original_file():
    examples = ev.mathqa_examples(DATA / "mathqa" / "dev.json")
    assert len(examples) == 21
    assert examples[0].prompt.endswith("Options: a ) 24 , b ) 120 , c ) 625 , d ) 720 , e ) 1024\nAnswer:")
    assert examples[0].answer == "c" and examples[0].choices["c"] == "625"
    assert examples[0].text.endswith("Answer: c")
    # record 40 of the original holds its options as a Python list repr; it reads like the others
    assert "Options: a ) 4 , b ) 4 π , c ) 16 , d ) 8 π , e ) 16\n" in examples[20].prompt
    assert all(list(e.choices) == list("abcde") and e.answer in e.choices for e in examples)


def test_parse_options_needs_every_letter_in_order():
    assert ev.parse_options("a ) 2 ( x + y ) , b ) 3", "ab") == {"a": "2 ( x + y )", "b": "3"}
    with pytest.raises(ValueError, match="option 'c' is missing"):
        ev.parse_options("a ) 1 , b ) 2", "abc")


def test_mtnt_examples_parse_the_original_file():
    examples = ev.mtnt_examples(DATA / "mtnt" / "valid.en-fr.tsv")
    assert len(examples) == 20
    assert examples[0].prompt == "Translate English to French.\nEnglish: yea\nFrench:"
    assert examples[0].answer == "Oui"
    shown = ev.mtnt_examples(DATA / "mtnt" / "valid.en-fr.tsv", one_shot=True)[0]
    english, french = ev.MTNT_DEMONSTRATION
    assert shown.prompt == f"Translate English to French.\nEnglish: {english}\nFrench: {french}\nEnglish: yea\nFrench:"
    assert shown.answer == "Oui"


def test_example_builders_name_a_missing_file(tmp_path):
    for builder, name in [(ev.qasc_examples, "QASC"), (ev.mathqa_examples, "MathQA"), (ev.mtnt_examples, "MTNT")]:
        with pytest.raises(ev.MissingDataError, match=f"Expected the {name} file .*nope"):
            builder(tmp_path / "nope")


def test_mtnt_line_without_three_columns_is_named(tmp_path):
    path = tmp_path / "bad.en-fr.tsv"
    path.write_text("1\thello\tbonjour\n2\tmissing a tab\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected 3 tab-separated columns"):
        ev.mtnt_examples(path)


# ------------------------------------------------------------------------------------------ data directory


def test_missing_data_directory_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(ev.DATA_ENV, raising=False)
    with pytest.raises(ev.MissingDataError, match="No task data directory.*--metadata.*PEFT_GROW_DATA"):
        ev.resolve_data_dir(None)
    with pytest.raises(ev.MissingDataError, match="does not exist"):
        ev.resolve_data_dir("/no/such/folder")
    monkeypatch.setenv(ev.DATA_ENV, str(DATA))
    assert ev.resolve_data_dir(None) == DATA


def test_missing_data_file_names_expected_and_found(tmp_path):
    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "dev.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ev.MissingDataError, match=r"winogrande/dev-labels.lst .*found \['dev.jsonl'\]"):
        ev.read_winogrande(tmp_path)
    with pytest.raises(ev.MissingDataError, match="icl/boolq.jsonl .*found no folder"):
        ev.read_icl("boolq", tmp_path)
    # the parent of the right folder: the error points at its tasks/ folder
    (tmp_path / "tasks" / "icl").mkdir(parents=True)
    (tmp_path / "tasks" / "icl" / "boolq.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ev.MissingDataError, match="it holds a tasks/ folder"):
        ev.read_icl("boolq", tmp_path)


def test_winogrande_reads_the_labels_file(tmp_path):
    records = ev.read_winogrande(DATA)
    assert len(records) == 20
    assert records[0]["sentence"].startswith("Sarah was a much better surgeon than Maria so _")
    assert [r["answer"] for r in records[:5]] == ["2", "1", "2", "1", "1"]
    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "dev.jsonl").write_text((DATA / "winogrande" / "dev.jsonl").read_text())
    (tmp_path / "winogrande" / "dev-labels.lst").write_text("1\n2\n")
    with pytest.raises(ValueError, match="2 labels but winogrande/dev.jsonl 20 records"):
        ev.read_winogrande(tmp_path)


# --------------------------------------------------------------------------------------------- generation


def test_generate_answers_reproduces_the_published_sample(model, tokenizer):
    # llama2.c's published greedy sample of stories260K starts "Once upon a time, there was a little girl named Lily"
    prompts = ["Once upon a time", "The cat", "Lily went to the park and she saw a big"]
    batched = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=10, batch_size=3)
    assert batched[0].startswith(", there was a little girl named Lily")
    # left padding is right: each prompt alone gives the same continuation
    assert batched == [ev.generate_answers(model, tokenizer, [p], max_new_tokens=10)[0] for p in prompts]
    assert tokenizer.pad_token is None  # not modified


def test_generation_stops_at_a_stop_string_with_the_same_text_before_it(model, tokenizer):
    prompts = ["Once upon a time", "The cat", "Lily went to the park and she saw a big"]
    whole = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=40, batch_size=3)
    stopped = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=40, batch_size=3, stop=(".",))
    assert all("." in text for text in whole)
    assert stopped == [text[: text.index(".") + 1] for text in whole]


def test_generate_answers_on_a_peft_model_and_a_random_tiny_model(model, tokenizer):
    prompts = ["Once upon a time", "The dog"]
    base = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=8)
    grown = get_peft_model(model, GrowConfig(k=2))
    grown.train()
    assert ev.generate_answers(grown, tokenizer, prompts, max_new_tokens=8) == base  # function preserved
    assert grown.training  # the mode it came in
    tiny = tiny_model("llama", vocab_size=len(tokenizer))  # random weights, the real tokenizer
    answers = ev.generate_answers(tiny, tokenizer, prompts, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_score_generation_against_the_models_own_answers(model, tokenizer):
    prompts = ["Once upon a time", "The cat", "One day, Tom"]
    own = ev.generate_answers(model, tokenizer, prompts, max_new_tokens=12)
    right = [ev.Example(p, a) for p, a in zip(prompts, own, strict=True)]
    wrong = [ev.Example(p, "zebra") for p in prompts]
    assert ev.score_generation(model, tokenizer, right, max_new_tokens=12) == 1.0
    assert ev.score_generation(model, tokenizer, wrong, max_new_tokens=12) == 0.0
    assert ev.score_generation(model, tokenizer, right, metric="bleu", max_new_tokens=12) == pytest.approx(100.0)
    qasc = ev.qasc_examples(DATA / "qasc" / "dev.json")[:4]
    letters = [ev.extract_choice(a) for a in ev.generate_answers(model, tokenizer, [e.prompt for e in qasc], 4)]
    graded_by_itself = [ev.Example(e.prompt, letter or "A") for e, letter in zip(qasc, letters, strict=True)]
    expected = sum(letter is not None for letter in letters) / len(qasc)  # right wherever it named a letter
    assert ev.score_generation(model, tokenizer, graded_by_itself, metric="choice", max_new_tokens=4) == expected
    with pytest.raises(ValueError, match="Unknown metric 'rouge'"):
        ev.score_generation(model, tokenizer, right, metric="rouge")


# ------------------------------------------------------------------------------------------------- losses


def test_loss_with_and_without_adapter(model, tokenizer):
    base_loss = ev.reference_loss(model, tokenizer, REFERENCE_TEXT, seq_len=64)
    assert 0.5 < base_loss < 3.0  # a pretrained model on its own samples
    grown = get_peft_model(model, GrowConfig(k=2))
    with_adapter, without_adapter = ev.loss_with_and_without_adapter(grown, tokenizer, REFERENCE_TEXT, seq_len=64)
    assert with_adapter == pytest.approx(base_loss, abs=1e-5)  # function preservation
    assert without_adapter == base_loss  # the same model and computation: bit for bit
    perturb_new_weights(grown)
    with_adapter, without_adapter = ev.loss_with_and_without_adapter(grown, tokenizer, REFERENCE_TEXT, seq_len=64)
    assert abs(with_adapter - base_loss) > 1e-3
    assert without_adapter == base_loss
    with pytest.raises(TypeError, match="Expected a PeftModel"):
        ev.loss_with_and_without_adapter(model.base_model, tokenizer, REFERENCE_TEXT)


def test_reference_loss_takes_ids_and_short_texts(model, tokenizer):
    ids = tokenizer(REFERENCE_TEXT)["input_ids"]
    assert ev.reference_loss(model, tokenizer, ids, seq_len=64) == ev.reference_loss(
        model, tokenizer, REFERENCE_TEXT, seq_len=64
    )
    short = ev.reference_loss(model, tokenizer, ids[:10], seq_len=64)  # one window shorter than seq_len
    logits = model(torch.tensor([ids[:10]])).logits[0, :-1]
    assert short == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:10])).item(), rel=1e-6)


# ------------------------------------------------------------------------------------- retention (lm-eval)


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) as lm-eval's HFLM computes it for a causal model (_encode_pair)."""
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))


def _accuracy_by_hand(model, tokenizer, docs: list[tuple[list[tuple[str, str]], int]]) -> float:
    hits = 0
    for pairs, gold in docs:
        scores = [_loglikelihood(model, tokenizer, c, x) for c, x in pairs]
        hits += scores.index(max(scores)) == gold
    return hits / len(docs)


def test_packaged_tasks_are_indexed(monkeypatch):
    monkeypatch.setenv(ev.DATA_ENV, str(DATA))
    manager = ev.task_manager()  # the data directory from $PEFT_GROW_DATA
    assert {f"grow_{t}" for t in ev.RETENTION_TASKS} <= set(manager.all_subtasks)
    assert "grow_retention" in manager.all_tags
    assert manager.load(["grow_winogrande"])["tasks"]["grow_winogrande"].config.metadata["data_dir"] == str(DATA)


def test_winogrande_glue_is_lm_evals_own():
    from lm_eval.tasks.winogrande import preprocess_winogrande as builtin

    utils = _packaged_utils()
    for doc in ev.read_winogrande(DATA):
        assert utils.winogrande_gold(doc) == builtin.doc_to_text(doc)
        assert utils.winogrande_continuation(doc) == builtin.doc_to_target(doc)
        assert utils.winogrande_prefixes(doc) == builtin.doc_to_choice(doc)


def _packaged_utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("packaged_task_utils", ev.TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retention_scores_like_lm_eval_on_the_real_model(model, tokenizer):
    results = ev.evaluate_tasks(model, tokenizer, ev.RETENTION_TASKS, data_dir=DATA, limit=6, batch_size=4)
    assert set(results["results"]) == {f"grow_{t}" for t in ev.RETENTION_TASKS}
    for name, count in results["n-samples"].items():
        assert count == {"original": 20, "effective": 6}, name
        assert 0.0 <= results["results"][name]["acc,none"] <= 1.0
    # the same accuracies, recomputed without lm-eval: WinoGrande by partial evaluation (the option-filled
    # prefix is the context, the rest of the sentence the continuation), the others query -> " " + choice
    winogrande = []
    for record in ev.read_winogrande(DATA)[:6]:
        blank = record["sentence"].index("_")
        rest = " " + record["sentence"][blank + 1 :].strip()
        prefixes = [record["sentence"][:blank] + record[o] for o in ("option1", "option2")]
        winogrande.append(([(p, rest) for p in prefixes], int(record["answer"]) - 1))
    assert results["results"]["grow_winogrande"]["acc,none"] == _accuracy_by_hand(model, tokenizer, winogrande)
    copa = [([(r["query"], " " + c) for c in r["choices"]], r["gold"]) for r in ev.read_icl("copa", DATA)[:6]]
    assert results["results"]["grow_copa"]["acc,none"] == _accuracy_by_hand(model, tokenizer, copa)


def test_retention_of_a_grown_model(model, tokenizer):
    full = ev.evaluate_tasks(model, tokenizer, data_dir=DATA)  # default: WinoGrande, the paper's proxy
    assert full["n-samples"] == {"grow_winogrande": {"original": 20, "effective": 20}}
    tasks = ("winogrande", "grow_boolq")  # short or full names
    base = ev.retention(model, tokenizer, tasks, data_dir=DATA, limit=10)
    assert set(base) == {"winogrande", "boolq"} and all(0.0 <= v <= 1.0 for v in base.values())
    grown = get_peft_model(model, GrowConfig(k=2)).train()  # as in a training loop
    assert ev.retention(grown, tokenizer, tasks, data_dir=DATA, limit=10) == base  # the function is kept
    perturb_new_weights(grown)
    with grown.disable_adapter():
        assert ev.retention(grown, tokenizer, tasks, data_dir=DATA, limit=10) == base
    assert tokenizer.pad_token is None and grown.training  # lm-eval's HFLM changed neither


def test_retention_errors_before_lm_eval_starts(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Unknown retention task 'hellaswag': expected one of"):
        ev.retention(model, tokenizer, ["hellaswag"], data_dir=DATA)
    with pytest.raises(ev.MissingDataError, match=r"Expected the file winogrande/dev.jsonl .*no folder"):
        ev.retention(model, tokenizer, data_dir=tmp_path)


@pytest.mark.slow
def test_lm_eval_command_line_with_a_grown_adapter(model, tokenizer, tmp_path):
    get_peft_model(model, GrowConfig(k=2, layers=[1])).save_pretrained(tmp_path / "adapter")
    command = [
        sys.executable,
        "-m",
        "peft_grow.evaluation",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={MODEL_DIR},add_bos_token=True,peft={tmp_path / 'adapter'}",
        "--include_path",
        str(ev.TASKS_DIR),
        "--tasks",
        "grow_copa",
        "--metadata",
        json.dumps({"data_dir": str(DATA)}),
        "--limit",
        "4",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "results"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (tmp_path / "results").rglob("results_*.json")
    scores = json.loads(written.read_text())
    assert scores["n-samples"]["grow_copa"] == {"original": 20, "effective": 4}
    fresh = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    grown = PeftModel.from_pretrained(fresh, tmp_path / "adapter")  # the same adapter, evaluated in this process
    in_process = ev.evaluate_tasks(grown, tokenizer, ["copa"], data_dir=DATA, limit=4)
    assert scores["results"]["grow_copa"]["acc,none"] == in_process["results"]["grow_copa"]["acc,none"]
