"""The real-model benchmark (benchmarks/real_models*.py and its report) end to end on in-repository material: the
stories260K model stands in for the real models, the task slices in tests/data for the shared data. Checked: the
answer-only loss, runs with one JSON each that resume exactly after a stop, the refusal to mix evaluation
settings, and the report's equal-score reading on hand-made curves."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks import methods as benchmark_methods
from benchmarks import (
    real_models,
    real_models_runner,
    real_models_scores,
    real_models_sdft,
    real_models_setup,
    real_models_tasks,
)
from benchmarks import real_models_report as report
from peft_grow import evaluation as ev

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "data" / "stories260K"
DATA = ROOT / "tests" / "data" / "tasks"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A task folder: the QASC slice serves as both training and test split."""
    root = tmp_path_factory.mktemp("tasks")
    shutil.copytree(DATA, root, dirs_exist_ok=True)
    shutil.copy(DATA / "qasc" / "dev.json", root / "qasc" / "train.json")
    return root


def run_args(data: Path, results: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--model",
        "stories",
        "--model-dir",
        str(MODEL),
        "--data",
        str(data),
        "--results",
        str(results),
        "--task",
        "qasc",
        "--tiny",
        "--retention",
        "copa",
        "--checkpoints",
        str(results / "checkpoints"),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    weights = results / "weights"
    real_models.main(
        run_args(
            data, results, "--runs", "full@1e-3", "g-freeze-top@1e-3", "lora-r16@1e-2", "--keep-weights", str(weights)
        )
    )
    return results / "stories" / "qasc"


def test_answer_loss_is_the_mean_over_answer_tokens_of_each_example_alone():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    encoded = real_models_tasks.encode(tokenizer, ev.qasc_examples(DATA / "qasc" / "dev.json")[:5])
    assert all(e.answer[-1] == tokenizer.eos_token_id for e in encoded)
    batch = real_models_tasks.collate(encoded, ev.pad_token_id(tokenizer), max_len=256)
    assert batch["input_ids"].shape[1] == max(len(e.prompt) + len(e.answer) for e in encoded)
    assert batch["attention_mask"][:, 0].all()  # right-padded: no row of queries is fully masked
    with torch.no_grad():
        loss = real_models_tasks.answer_loss(model, batch, torch.device("cpu"))
        whole_rows = model(**real_models_tasks.full_label_batch(batch)).loss
        total, count = 0.0, 0
        for e in encoded:  # each example alone, unpadded
            ids = torch.tensor([e.prompt + e.answer])
            labels = ids.clone()
            labels[:, : len(e.prompt)] = -100
            total += model(input_ids=ids, labels=labels).loss * len(e.answer)
            count += len(e.answer)
    assert loss.item() == pytest.approx(total.item() / count, abs=1e-5)
    assert loss.item() == pytest.approx(whole_rows.item(), abs=1e-5)


def test_each_run_writes_one_json_with_its_curve_and_where_it_ran(finished):
    names = sorted(p.name for p in finished.glob("*_s0.json"))
    assert names == ["full_lr1e-03_s0.json", "g-freeze-top_lr1e-03_s0.json", "lora-r16_lr1e-02_s0.json"]
    assert not list(finished.glob("*.lock")) and not list(finished.glob("*.partial.json"))
    base = json.loads((finished / "base.json").read_text())["point"]
    layers = AutoModelForCausalLM.from_pretrained(MODEL).config.num_hidden_layers
    assert json.loads((finished / "context.json").read_text())["top"].__len__() == max(1, layers // 3)
    for name in names:
        run = json.loads((finished / name).read_text())
        assert run["status"] == "done" and run["where"]["device"] == "cpu" and run["where"]["dtype"] == "fp32"
        assert [p["step"] for p in run["curve"]] == [0, 1, 2]
        assert run["curve"][0]["task"] == base["task"]  # step 0 is the base model, measured once
        assert len(run["curve"][-1]["retention"]["copa"]["correct"]) == 4  # --tiny: 4 retention questions
        assert 0 < run["trainable"] <= run["total"]
    full = json.loads((finished / "full_lr1e-03_s0.json").read_text())
    assert full["trainable"] == full["total"]


def test_kept_weights_reload_as_a_full_checkpoint_or_an_adapter(finished):
    weights = finished.parents[1] / "weights" / "stories" / "qasc"
    assert sorted(p.name for p in weights.iterdir()) == [
        "full_lr1e-03_s0",
        "g-freeze-top_lr1e-03_s0",
        "lora-r16_lr1e-02_s0",
    ]
    assert (weights / "full_lr1e-03_s0" / "model.safetensors").is_file()
    config = json.loads((weights / "g-freeze-top_lr1e-03_s0" / "adapter_config.json").read_text())
    assert config["peft_type"] == "GROW"


def test_update_ranks_of_the_kept_full_fine_tunes(finished, capsys):
    """benchmarks.real_update_ranks reads every kept full fine-tune (not the adapters) and writes one row of
    per-layer effective ranks per task and run, each between 0 and the up projection's rank."""
    from benchmarks import real_update_ranks

    results = finished.parents[1]
    where = ["--weights", str(results / "weights"), "--results", str(results)]
    real_update_ranks.main(["--model", "stories", "--model-dir", str(MODEL), *where])
    assert torch.is_grad_enabled()  # the command leaves the process's autograd state as it found it
    written = json.loads((results / "stories" / "update_ranks.json").read_text())
    layers = AutoModelForCausalLM.from_pretrained(MODEL).config.num_hidden_layers
    assert list(written["runs"]) == ["qasc full_lr1e-03_s0"]
    ranks = list(written["runs"]["qasc full_lr1e-03_s0"].values())
    assert len(ranks) == layers and all(0 < rank <= written["bound"] for rank in ranks), written
    assert (results / "stories" / "update_ranks.png").read_bytes()[:4] == b"\x89PNG"
    assert "| qasc full_lr1e-03_s0 |" in capsys.readouterr().out
    # the runner's ranks between evaluations, for the full fine-tune only: steps 1 and 2 of the tiny run
    stages = written["stages"]["qasc full_lr1e-03_s0"]
    assert list(written["stages"]) == ["qasc full_lr1e-03_s0"] and list(stages) == ["1", "2"]
    assert all(len(r) == layers and all(0 < v <= written["bound"] for v in r.values()) for r in stages.values())
    assert (finished / "update_ranks_full_lr1e-03_s0.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_skips_finished_runs(data, finished, capsys):
    before = {p: p.stat().st_mtime_ns for p in finished.glob("*.json")}
    real_models.main(run_args(data, finished.parents[1], "--runs", "full@1e-3"))
    assert {p: p.stat().st_mtime_ns for p in finished.glob("*.json")} == before
    assert "full" not in capsys.readouterr().out


def stop_then_resume(monkeypatch, args: list[str], checkpoints: Path) -> None:
    """Run, stopped at the last evaluation of --tiny's 2 steps (its third: the base model, step 1, step 2), when
    only step 1's checkpoint is written; then run again, which resumes."""
    evaluate, calls = real_models_scores.evaluate, []

    def stop_at_the_last_evaluation(*evaluated):
        calls.append(evaluated)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(*evaluated)

    monkeypatch.setattr(real_models_scores, "evaluate", stop_at_the_last_evaluation)
    with pytest.raises(KeyboardInterrupt):
        real_models.main(args)
    assert [p.parent.name for p in checkpoints.rglob("state.json")] == ["step-1"]
    monkeypatch.setattr(real_models_scores, "evaluate", evaluate)
    real_models.main(args)


@pytest.mark.parametrize(
    ("guard", "method", "name"),
    [
        ((), "g-freeze", "g-freeze_lr1e-03_s0"),
        (("--guard-weight", "1", "--guard-source", "prompts"), "g-freeze", "g-freeze+kl-prompts-w1_lr1e-03_s0"),
        ((), "full", "full_lr1e-03_s0"),  # with its update ranks between evaluations
    ],
    ids=["plain", "guarded", "full"],
)
def test_a_stopped_run_resumes_from_its_last_evaluation_as_if_unbroken(
    data, tmp_path, monkeypatch, guard, method, name
):
    unbroken, stopped = tmp_path / "unbroken", tmp_path / "stopped"
    runs = (*guard, "--runs", f"{method}@1e-3", "--keep-weights")
    real_models.main(run_args(data, unbroken, *runs, str(unbroken / "weights")))
    stop_then_resume(monkeypatch, run_args(data, stopped, *runs, str(stopped / "weights")), stopped / "checkpoints")

    def final(root):
        run = json.loads((root / "stories" / "qasc" / f"{name}.json").read_text())
        kept = root / "weights" / "stories" / "qasc" / name
        weights = kept / ("model.safetensors" if method == "full" else "adapter_model.safetensors")
        keys = ("step", "train_loss", "task", "retention_kl", "update_ranks")
        return [tuple(c.get(k) for k in keys) for c in run["curve"]], load_file(weights)

    (curve, weights), (resumed_curve, resumed_weights) = final(unbroken), final(stopped)
    assert resumed_curve == curve and len(curve) == 3
    assert all((c[4] is not None) == (method == "full" and c[0] > 0) for c in curve)
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    assert not list((stopped / "checkpoints").rglob("step-*"))  # removed once the run is done


def test_sdft_trains_the_grown_adapter_with_the_runners_evaluations_and_resumes_after_a_stop(
    data, tmp_path, monkeypatch
):
    """`sdft`: TRL's SDFTTrainer on G-Freeze, evaluated and checkpointed at the runner's steps. A stopped run
    resumes from its last evaluation (reseeded there, so not bit-identical to an unbroken run)."""
    runs = ("--runs", "sdft@1e-3", "--keep-weights", str(tmp_path / "weights"))
    stop_then_resume(monkeypatch, run_args(data, tmp_path, *runs), tmp_path / "checkpoints")

    run = json.loads((tmp_path / "stories" / "qasc" / "sdft_lr1e-03_s0.json").read_text())
    assert run["status"] == "done" and [c["step"] for c in run["curve"]] == [0, 1, 2]
    assert all(c["train_loss"] >= 0 for c in run["curve"][1:])  # the distillation loss, a divergence
    assert run["settings"]["sdft"]["teacher_prompt_template"] == "{privileged_context}\n\n{prompt}"
    grown = benchmark_methods.method("g-freeze").build(AutoModelForCausalLM.from_pretrained(MODEL), {})
    assert run["trainable"] == benchmark_methods.trainable(grown)
    kept = load_file(tmp_path / "weights" / "stories" / "qasc" / "sdft_lr1e-03_s0" / "adapter_model.safetensors")
    start = get_peft_model_state_dict(grown)  # the adapter as saved, before training
    assert kept.keys() == start.keys() and any(not torch.equal(kept[k], start[k]) for k in kept)
    assert not list((tmp_path / "checkpoints").rglob("step-*"))


def test_the_sdft_teacher_reads_the_answered_prompt_then_the_prompt_and_is_scored_beside_the_student(data, capsys):
    example = ev.Example(prompt="Question: 2+2?\nAnswer:", answer="B")
    teacher = real_models_sdft.as_teacher_reads(example)
    assert teacher.prompt == "Question: 2+2?\nAnswer: B\n\nQuestion: 2+2?\nAnswer:" and teacher.answer == "B"

    real_models_sdft.main(["--model", "stories", "--model-dir", str(MODEL), "--task", "qasc", "--data", str(data),
                           "--limit", "3", "--batch", "2"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" as the ")[1].split(" reads")[0] for line in lines] == ["student", "teacher"]
    assert all(0 <= float(line.split("score ")[1].split(",")[0]) <= 1 for line in lines)


def test_sdft_with_the_guard_is_refused_before_any_step(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        real_models.main(run_args(data, tmp_path, "--guard-weight", "1", "--runs", "sdft@1e-3"))
    assert "sdft distils from the base model already" in capsys.readouterr().err
    assert not (tmp_path / "stories").exists()


@pytest.mark.parametrize("source", ["self", "prompts", "wikitext"])
def test_guarded_runs_record_the_guard_and_its_kl_and_start_at_the_base(data, tmp_path, monkeypatch, source):
    cache = tmp_path / "cache" / "models"
    monkeypatch.setenv(real_models_setup.CACHE_ENV, str(cache))  # self-generated text lands beside it
    real_models.main(run_args(data, tmp_path, "--guard-weight", "2", "--guard-source", source, "--runs", "full@1e-3"))
    run = json.loads((tmp_path / "stories" / "qasc" / f"full+kl-{source}-w2_lr1e-03_s0.json").read_text())
    guard = run["settings"]["guard"]
    assert guard["weight"] == 2.0 and guard["source"] == source and guard["windows"] > 0
    assert guard["dropped_overlapping"] >= 0 and guard["overlap_words"] == 8
    assert len(guard["windows_sha256"]) == 16  # the text guarded on, checkable on another machine
    assert run["curve"][1]["retention_kl"] == 0.0  # step 1 measures before any update: the frozen copy is the model
    assert run["curve"][2]["retention_kl"] > 0
    assert run["method"] == f"full+kl-{source}-w2"
    cached = list((tmp_path / "cache" / "retention-text").glob("*.safetensors"))
    assert len(cached) == (1 if source == "self" else 0)  # the model's own text is sampled once and kept
    if source == "self":  # a second run guards on the same cached text, and records the same hash
        real_models.main(
            run_args(data, tmp_path, "--guard-weight", "1", "--guard-source", source, "--runs", "full@1e-3")
        )
        again = json.loads((tmp_path / "stories" / "qasc" / f"full+kl-{source}-w1_lr1e-03_s0.json").read_text())
        assert again["settings"]["guard"]["windows_sha256"] == guard["windows_sha256"]


def test_the_report_names_guarded_runs_after_their_method():
    assert report.label("g-freeze+kl-self-w1") == "G-Freeze all + KL (self, w=1)"
    assert report.label("full+kl-prompts-w0.3-t2") == "full FT + KL (prompts, w=0.3, t=2)"
    methods = ["g-freeze+kl-self-w1", "full+kl-self-w1", "g-freeze", "full"]
    assert sorted(methods, key=report.order) == ["full", "full+kl-self-w1", "g-freeze", "g-freeze+kl-self-w1"]


def test_other_evaluation_settings_are_refused_in_the_same_folder(data, finished):
    with pytest.raises(SystemExit, match="only comparable with the same evaluation"):
        real_models.main(run_args(data, finished.parents[1], "--runs", "full@3e-4", "--retention", "copa", "boolq"))


def test_a_run_claimed_by_a_live_worker_is_left_alone(tmp_path):
    path = tmp_path / "full_lr1e-03_s0.json"
    with real_models_runner.claimed(path) as first, real_models_runner.claimed(path) as second:
        assert first and not second
    path.with_suffix(".lock").write_text(f"{real_models_runner.socket.gethostname()} 999999999")  # a dead process
    with real_models_runner.claimed(path) as taken_over:
        assert taken_over
    assert not path.with_suffix(".lock").exists()


def test_the_task_data_folder_is_an_argument_or_the_environment_never_a_guess(data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ev.DATA_ENV, raising=False)
    with pytest.raises(SystemExit):
        real_models.parse_args(["baseline", "--model", "stories", "--results", str(tmp_path)])
    assert f"pass --data or set ${ev.DATA_ENV}" in capsys.readouterr().err
    monkeypatch.setenv(ev.DATA_ENV, str(data))
    assert real_models.parse_args(["baseline", "--model", "stories", "--device", "cpu"]).data == data


def test_runs_must_name_a_method_and_a_rate(data, tmp_path):
    with pytest.raises(SystemExit):
        real_models.main(run_args(data, tmp_path, "--runs", "sgd@1e-3"))
    with pytest.raises(SystemExit):
        real_models.main(run_args(data, tmp_path, "--methods", "full"))


def test_the_report_reads_the_runs_and_draws_the_figures(finished, capsys):
    report.main(["--results", str(finished.parents[1]), "--tasks", "copa"])
    text = (finished / "report.md").read_text()
    assert "paper's protocol" in text and "Fair reading" in text and "Pareto front" in text
    for label in ("full FT", "G-Freeze top third", "LoRA r=16"):
        assert label in text
    for name in ("curves.png", "pareto.png"):
        assert (finished / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((finished / "summary.json").read_text())
    assert set(summary["methods"]) == {"full", "g-freeze-top", "lora-r16"}
    assert "**Cost**" in text
    for method, per_step in summary["seconds_per_step"].items():  # training time of each run over its steps
        run = json.loads((finished / f"{method}_lr{summary['methods'][method]['lr']:.0e}_s0.json").read_text())
        assert per_step == [pytest.approx(run["seconds_train"] / run["curve"][-1]["step"])]


def test_layer_counts_grow_the_top_n_of_each_ranking_and_have_their_own_table(data, finished, tmp_path):
    """g-freeze-<ranking>-<N>: the rankings are added to the task's earlier context.json (its pilot's top third
    unchanged), each run grows the first N layers of its ranking, and the report gives them their own table beside
    the top third at the same rate, leaving the other tables as they were."""
    results = tmp_path / "results"
    shutil.copytree(finished.parents[1], results, ignore=shutil.ignore_patterns("weights", "checkpoints"))
    folder = results / "stories" / "qasc"
    before = json.loads((folder / "context.json").read_text())
    assert "rankings" not in before
    runs = ["g-freeze-pilot-2@1e-3", "g-freeze-proxy-1@1e-3", "g-freeze-random-1@1e-3"]
    weights = tmp_path / "weights"
    real_models.main(run_args(data, results, "--runs", *runs, "--keep-weights", str(weights)))
    context = json.loads((folder / "context.json").read_text())
    layers = AutoModelForCausalLM.from_pretrained(MODEL).config.num_hidden_layers
    assert {k: context[k] for k in before} == before
    for ranking in ("pilot", "proxy", "random"):
        assert sorted(context["rankings"][ranking]) == list(range(layers))
    pilot = context["pilot"]["scores"]
    assert [pilot[str(i)] for i in context["rankings"]["pilot"]] == sorted(pilot.values(), reverse=True)
    assert sorted(context["rankings"]["pilot"][: len(context["top"])]) == context["top"]
    for ranking, n in (("pilot", 2), ("proxy", 1), ("random", 1)):
        adapter = weights / "stories" / "qasc" / f"g-freeze-{ranking}-{n}_lr1e-03_s0" / "adapter_config.json"
        assert json.loads(adapter.read_text())["layers"] == sorted(context["rankings"][ranking][:n])

    report.main(["--results", str(results), "--tasks", "copa"])
    text = (folder / "report.md").read_text()
    table = text[text.index("**How many layers**") :]
    assert "G-Freeze 1 layers" not in text[: text.index("**How many layers**")]  # kept out of the other tables
    assert layers // 3 == 1  # so the top third's run is the pilot's top 1
    assert [line.split(" | ")[:2] for line in table.splitlines()[4:9]] == [
        ["| pilot", "1"],
        ["| proxy", "1"],
        ["| random", "1"],
        ["| pilot", "2"],
        [""],
    ]
    found = json.loads((folder / "summary.json").read_text())["layer_counts"]
    assert [(f["ranking"], f["layers"]) for f in found] == [("pilot", 1), ("proxy", 1), ("random", 1), ("pilot", 2)]
    assert (folder / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in folder.glob("*_s0.json"):  # layer counts alone still get their table
        if not path.name.startswith(("g-freeze-pilot", "g-freeze-proxy", "g-freeze-random")):
            path.unlink()
    report.main(["--results", str(results), "--tasks", "copa"])
    text = (folder / "report.md").read_text()
    assert "**How many layers**" in text and "paper's protocol" not in text and "3 runs" in text


def test_layer_counts_name_a_known_ranking_and_at_most_every_layer(data, tmp_path):
    for wrong in ("g-freeze-best-1@1e-3", "g-freeze-pilot-0@1e-3", "g-freeze-pilot@1e-3"):
        with pytest.raises(SystemExit):
            real_models.main(run_args(data, tmp_path, "--runs", wrong))
    build = benchmark_methods.method("g-freeze-random-9").build
    with pytest.raises(ValueError, match="grows 9 layers, but the model has 5; use N of at most 5"):
        build(AutoModelForCausalLM.from_pretrained(MODEL), {"rankings": {"random": [4, 3, 2, 1, 0]}})
    with pytest.raises(KeyError, match="g-freeze-<ranking>-<N>"):
        benchmark_methods.method("g-freeze-best-1")


def point(step, score, correct):
    return report.Point(step, score, 100, {"copa": [float(c) for c in correct]})


def test_equal_score_reading_on_hand_made_curves():
    base = point(0, 0.0, [1, 1, 1, 1])
    full = report.Run(
        "full", 1e-4, 0, 10, 10, "done", 1.0, {}, [base, point(10, 0.4, [1, 1, 0, 0]), point(20, 0.6, [1, 0, 0, 0])]
    )
    grow = report.Run(
        "g-freeze", 1e-3, 0, 5, 15, "done", 1.0, {}, [base, point(10, 0.2, [1, 1, 1, 1]), point(20, 0.5, [1, 1, 1, 0])]
    )
    at = full.at_score(0.5)  # halfway between steps 10 and 20
    assert at.step == pytest.approx(15) and at.outcomes["copa"] == pytest.approx([1, 0.5, 0, 0])
    assert grow.at_score(0.5).step == 20 and grow.at_score(0.9) is None
    drop_full = report.change(at, base, ["copa"])
    drop_grow = report.change(grow.at_score(0.5), base, ["copa"])
    assert drop_full[0] == pytest.approx(-0.625) and drop_grow[0] == pytest.approx(-0.25)
    share = report.ratio(drop_grow, drop_full)
    assert share[0] == pytest.approx(0.4) and share[1] > 0
    assert report.ratio(drop_grow, (0.0, 0.1)) is None  # no clear drop of full fine-tuning: no share
    assert [r.method for r in report.pareto([full, grow], ["copa"])] == ["full", "g-freeze"]


def test_equal_score_compares_each_selected_run_with_full_fine_tuning_at_their_lowest_final_score():
    base = point(0, 0.0, [1, 1, 1, 1])
    full = report.Run(
        "full", 3e-5, 0, 10, 10, "done", 1.0, {}, [base, point(10, 0.8, [1, 1, 0, 0]), point(20, 0.9, [1, 0, 0, 0])]
    )
    grow = report.Run(
        "g-freeze", 3e-5, 0, 5, 15, "done", 1.0, {}, [base, point(10, 0.4, [1, 1, 1, 1]), point(20, 0.6, [1, 1, 1, 0])]
    )
    rows, level, full_drop, methods = report.equal_score(
        {"full": full, "g-freeze": grow}, base, ["copa"], lambda p: (p.score, 0.0), 100.0
    )
    assert level == 0.6  # growth's final score, the lower one
    assert full_drop[0] == pytest.approx(-0.375)  # full fine-tuning first reaches 0.6 at step 7.5
    assert methods["g-freeze"]["drop_at_level"][0] == pytest.approx(-0.25)
    assert methods["g-freeze"]["share_of_full_drop"] == report.ratio(methods["g-freeze"]["drop_at_level"], full_drop)
    assert [row[0] for row in rows] == ["full FT", "G-Freeze all"] and rows[1][4] == "20"


def test_the_reading_at_a_level_names_the_evaluations_it_rests_on():
    def point(step, score, correct):
        return report.Point(step, score, 10, {"copa": correct})

    base = point(0, 0.0, [1.0] * 10)
    run = report.Run("full", 1e-4, 0, 1, 1, "done", 1.0, {}, [base, point(50, 0.4, [1.0] * 8 + [0.0] * 2)])
    run.curve.append(point(100, 0.8, [1.0] * 6 + [0.0] * 4))
    assert run.bracket(0.6) == (run.curve[1], run.curve[2])
    assert report.around(run, 0.6, base, ["copa"]) == "-20.0 to -40.0 (steps 50-100)"
    assert report.around(run, 0.4, base, ["copa"]) == "-20.0 (step 50, measured)"
    assert run.bracket(0.9) is None


def test_seeds_are_read_at_90_percent_of_full_fine_tunings_mean_score_against_the_same_seed():
    def point(step, score, kept):  # 100 questions, the first `kept` answered right
        return report.Point(step, score, 100, {"copa": [1.0] * kept + [0.0] * (100 - kept)})

    base = point(0, 0.0, 100)

    def run(method, seed, kept, final=1.0):
        return report.Run(method, 1e-4, seed, 1, 1, "done", 1.0, {}, [base, point(100, final, kept)])

    runs = [
        run("full", 0, 60),
        run("full", 1, 80),
        run("g-freeze", 0, 80),
        run("g-freeze", 1, 90),
        run("g-freeze", 2, 90),
    ]
    best = {"full": runs[0], "g-freeze": runs[2]}
    rows, found = report.over_seeds(runs, best, base, ["copa"], 100.0)
    assert found["level"] == 0.9
    assert found["full"]["drops"] == pytest.approx([-0.36, -0.18])  # at 90% of the way to step 100
    # g-freeze seeds 0 and 1 have a full fine-tuning run of the same seed: shares 0.5 and 0.5; seed 2 has none
    assert found["g-freeze"]["shares"] == pytest.approx([0.5, 0.5])
    assert rows[1][:3] == ["G-Freeze all", "1e-04", "3 (3 reach it)"] and rows[1][6] == "0.5 ± 0.0"
    assert rows[0][4] == "70.0 ± 10.0"  # full fine-tuning's final retention over its two seeds
    one = report.over_seeds(runs[:2] + runs[2:3], best, base, ["copa"], 100.0)[0][1]  # a method with one seed
    assert one[3:] == ["100.0 (one seed)", "80.0 (one seed)", "-18.0 (one seed)", "0.5 (one seed)"]
    assert report.over_seeds(runs[:1] + runs[2:3], best, base, ["copa"], 100.0) == ([], {})  # one seed each
    # a seed where full fine-tuning loses less than two standard errors gives no share (a ratio to noise: here
    # growth's 9 points would read as 5 times a drop of 1.8), as in the single-seed tables
    with_noise = runs + [run("full", 3, 98), run("g-freeze", 3, 90)]
    rows, found = report.over_seeds(with_noise, best, base, ["copa"], 100.0)
    assert found["full"]["drops"] == pytest.approx([-0.36, -0.18, -0.018])
    assert found["g-freeze"]["drops"] == pytest.approx([-0.18, -0.09, -0.09, -0.09])
    assert found["g-freeze"]["shares"] == pytest.approx([0.5, 0.5])
    assert rows[0][6] == "1 (clear drop on 2 of 3 seeds)"  # the reference cell says which seeds give shares


def test_each_seed_is_read_alone_at_the_lowest_final_score_of_its_own_runs_then_over_seeds():
    def point(step, score, kept):
        return report.Point(step, score, 10, {"copa": [1.0] * kept + [0.0] * (10 - kept)})

    base = point(0, 0.0, 10)

    def run(method, seed, final, kept, lr=1e-4):
        return report.Run(method, lr, seed, 1, 1, "done", 1.0, {}, [base, point(100, final, kept)])

    runs = [run("full", 0, 1.0, 6), run("g-freeze", 0, 1.0, 8), run("full", 1, 1.0, 6), run("g-freeze", 1, 0.5, 9)]
    runs.append(run("g-freeze", 1, 0.9, 9, lr=1e-3))  # not at the method's best rate: left out
    runs.append(run("full", 2, 1.0, 6))  # a seed with full fine-tuning alone: nothing to compare
    best = {"full": runs[0], "g-freeze": runs[1]}
    reading = report.Reading(base, ["copa"], 100.0, "EM %", "exact_match")
    summary = {}
    lines = report.per_seed(runs, best, reading, summary)
    assert list(summary["per_seed"]) == [0, 1]  # seed 2 has full fine-tuning alone
    assert lines[0].startswith("**Seed 0 alone**") and "100.0 EM %" in lines[0]
    assert any(line.startswith("**Seed 1 alone**") and "50.0 EM %" in line for line in lines)
    # at 0.5: full fine-tuning, halfway to step 100, has lost 20 points; growth, at its end, 10
    assert summary["per_seed"][1]["full"]["drop_at_level"][0] == pytest.approx(-0.2)
    assert summary["per_seed"][1]["g-freeze"]["share_of_full_drop"][0] == pytest.approx(0.5)
    # over the two seeds, each at its own level: growth lost 20 (seed 0) and 10 (seed 1) points, half of full's
    assert "| G-Freeze all | 2 | -15.0 ± 5.0 | 0.5 ± 0.0 |" in "\n".join(lines)
    assert "| full FT | 2 | -30.0 ± 10.0 | 1 (clear drop on 2 of 2 seeds) |" in "\n".join(lines)
    summary = {}
    assert report.per_seed([r for r in runs if r.method == "full" or r.seed == 0], best, reading, summary) == []


def test_a_bleu_task_where_full_fine_tuning_does_not_forget_claims_no_error_bar_and_no_share():
    def point(step, score, kept):
        return report.Point(step, score, 48, {"copa": [1.0] * kept + [0.0] * (10 - kept)})

    base = point(0, 8.0, 8)
    full = report.Run("full", 3e-5, 0, 10, 10, "done", 1.0, {}, [base, point(100, 20.0, 9)])
    grow = report.Run("g-freeze", 1e-4, 0, 5, 15, "done", 1.0, {}, [base, point(100, 15.0, 7)])
    reading = report.Reading(base, ["copa"], 1.0, "BLEU", "bleu")
    rows = report.equal_score({"full": full, "g-freeze": grow}, base, ["copa"], reading.score_se, 1.0)[0]
    assert rows[0][2] == "20.0" and rows[1][2] == "15.0"  # corpus BLEU: the score alone, no binomial error
    assert rows[0][6] == "reference; no clear drop, so no shares" and rows[1][6] == "n/a"
    assert report.paper_protocol([full, grow], reading)[2] == "(no finished run at lr 0.001 yet)"
