"""The forgetting benchmark (benchmarks/forgetting.py) end to end in its --tiny setting, on in-repository material
only, and its bookkeeping: every method and domain run, curves ordered by step, the equal-loss interpolation on
hand-made curves, the summary recomputed from the runs, and trainable-parameter counts checked against the models."""

import contextlib
import copy
import io
import json

import pytest
import torch
from peft import get_peft_model

from benchmarks import forgetting, methods, stories


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("forgetting")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = forgetting.main(["--tiny", "--out", str(out), "--figures", str(out)])
    return results, out, printed.getvalue()


def test_tiny_mode_writes_the_table_json_and_figures(tiny):
    results, out, printed = tiny
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in ("forgetting_curves.png", "forgetting_pareto.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    for text in (printed, table):
        for title in forgetting.DOMAINS.values():
            assert title in text
        for method in forgetting.METHODS.values():
            assert text.count(method.label + " ") >= len(forgetting.DOMAINS)  # one row per domain
    # a fresh clone has no shared folder: --tiny reads only the repository's material
    assert all("shared" not in d["source"] for d in results["domains"].values())


def test_every_method_and_domain_is_run_and_summarised(tiny):
    results, _, _ = tiny
    expected = {(d, m) for d in forgetting.DOMAINS for m in forgetting.METHODS}
    assert {(r["domain"], r["method"]) for r in results["runs"]} == expected
    assert len(results["runs"]) == len(expected)  # --tiny: one seed, one rate per method
    for domain in forgetting.DOMAINS:
        assert set(results["summary"][domain]["methods"]) == set(forgetting.METHODS)
        assert len(results["context"][domain]["layers"]) == 2


def test_curves_are_ordered_by_step_and_start_from_the_base_model(tiny):
    results, _, _ = tiny
    settings = results["settings"]
    for run in results["runs"]:
        steps = [step for step, _, _ in run["curve"]]
        assert steps[0] == 0 and steps[-1] == settings["steps"] and steps == sorted(set(steps))
        assert all(torch.isfinite(torch.tensor(point)).all() for point in run["curve"])
    for domain in forgetting.DOMAINS:
        starts = torch.tensor([r["curve"][0][1:] for r in results["runs"] if r["domain"] == domain])
        # every method starts from the base function (growth and LoRA preserve it), so the losses agree
        assert (starts - starts[0]).abs().max() < 1e-4


def test_original_loss_at_equal_new_loss_on_hand_made_curves():
    curve = [(0, 4.0, 1.0), (10, 3.0, 2.0), (20, 2.0, 2.5)]
    assert forgetting.original_at(curve, 4.0) == 1.0  # the start
    assert forgetting.original_at(curve, 3.5) == pytest.approx(1.5)
    assert forgetting.original_at(curve, 3.0) == pytest.approx(2.0)  # an evaluation point
    assert forgetting.original_at(curve, 2.5) == pytest.approx(2.25)
    assert forgetting.original_at(curve, 2.0) == pytest.approx(2.5)  # the end
    assert forgetting.original_at(curve, 1.9) is None  # never reached
    assert forgetting.original_at(curve, 4.1) is None  # above the start: not reached by learning
    # not monotone: the first time the curve gets there counts
    bumpy = [(0, 4.0, 1.0), (5, 3.0, 3.0), (10, 3.5, 3.5), (15, 2.0, 5.0)]
    assert forgetting.original_at(bumpy, 3.2) == pytest.approx(2.6)


def test_without_shared_data_the_full_modes_read_the_repository_material(capsys):
    """No data folder outside the repository by default: without --shared-data the slices in benchmarks/data and
    the demo's Shakespeare are read, and each domain says so."""
    assert forgetting.parse_args(["--quick"]).shared_data is None
    tokenizer = forgetting.AutoTokenizer.from_pretrained(stories.MODEL_DIR)
    domains = forgetting.load_domains(tokenizer, ["qasc"], 32, 2, shared=None, announce=True)
    assert domains[0].source.startswith("benchmarks/data/qasc_train_every32.json")
    assert "notice: qasc: no --shared-data" in capsys.readouterr().out


def test_pareto_front_and_mean_std():
    points = [(3.0, 2.0), (2.0, 3.0), (2.5, 2.5), (3.0, 2.6), (4.0, 1.0), (2.1, 3.5)]
    assert methods.pareto_front(points) == [(2.0, 3.0), (2.5, 2.5), (3.0, 2.0), (4.0, 1.0)]
    assert forgetting.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert forgetting.mean_std([1.0]) == (1.0, None)
    assert forgetting.mean_std([1.0, None]) is None


def test_summary_follows_from_the_runs(tiny):
    results, _, _ = tiny
    for domain, summary in results["summary"].items():
        runs = {r["method"]: r for r in results["runs"] if r["domain"] == domain}
        finals = {m: r["curve"][-1][1] for m, r in runs.items()}
        assert summary["level_equal"] == max(finals.values())
        assert summary["level_equal_set_by"] == max(finals, key=finals.get)
        assert summary["level_full_ft"] == finals["full"]
        for method, row in summary["methods"].items():
            run = runs[method]
            assert row["lr"] == run["lr"] == forgetting.METHODS[method].lrs[1]  # --tiny: the middle rate
            assert row["new_end"][0] == run["curve"][-1][1] and row["original_end"][0] == run["curve"][-1][2]
            at_equal = forgetting.original_at([tuple(p) for p in run["curve"]], summary["level_equal"])
            assert at_equal is not None and row["original_at_equal_new"][0] == pytest.approx(at_equal)


def test_trainable_parameter_counts_match_the_models(tiny):
    results, _, _ = tiny
    base = stories.load_base()
    base_params = sum(p.numel() for p in base.parameters())
    assert results["base_params"] == base_params
    h, p, layers = base.config.hidden_size, base.config.intermediate_size, base.config.num_hidden_layers
    per_mlp = 3 * h * p  # gate, up and down weights (no biases in LLaMA)
    counted = {}
    for run in results["runs"]:
        torch.manual_seed(0)
        model = forgetting.METHODS[run["method"]].build(copy.deepcopy(base), results["context"][run["domain"]])
        assert run["trainable"] == methods.trainable(model), run["method"]
        counted[run["method"]] = run["trainable"]
        if run["method"] == "g-freeze":
            summary = model.base_model.growth_summary()
            assert summary.trainable_params == summary.added_params == run["trainable"]
    assert counted["full"] == base_params
    assert counted["g-freeze"] == counted["zero-init"] == layers * per_mlp  # k=2: (k-1)(U + D) per layer
    assert counted["g-freeze-top"] == 2 * per_mlp
    assert counted["g-train"] == counted["g-train-noise"] == layers * 2 * (2 * h * p)  # k * U per layer
    per_rank = methods.trainable(get_peft_model(copy.deepcopy(base), methods.lora(1)))
    assert counted["lora-r4"] == 4 * per_rank
    assert abs(counted["lora"] - counted["g-freeze"]) <= per_rank / 2  # the closest rank


def test_replot_redraws_the_figures_from_a_saved_run(tiny, tmp_path):
    results, out, _ = tiny
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        forgetting.main(["--replot", str(out / "results.json"), "--figures", str(tmp_path)])
    for name in ("forgetting_curves.png", "forgetting_pareto.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the printed fronts are the saved ones: the runs no other run beats on both final losses
    for domain, front in results["pareto_front"].items():
        finals = {
            (r["method"], r["lr"], r["seed"]): tuple(r["curve"][-1][1:])
            for r in results["runs"]
            if r["domain"] == domain
        }
        assert sorted(finals[tuple(key)] for key in front) == methods.pareto_front(list(finals.values()))
        assert all(forgetting.METHODS[method].label in printed.getvalue() for method, _, _ in front)
