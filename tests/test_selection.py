"""Layer selection and update analysis on tiny models with known answers."""

import copy

import pytest
import torch
from helpers import sample_inputs, tiny_model

from peft_grow.analysis import effective_rank
from peft_grow.analysis.selection import (
    LayerScores,
    gradient_ranking,
    pilot_ranking,
    rank_agreement,
    snapshot,
    top_layers,
    update_magnitudes,
)


def batches(model, count=3):
    out = []
    for seed in range(count):
        inputs = sample_inputs(model, batch=4, length=9, seed=seed)
        out.append({**inputs, "labels": inputs["input_ids"]})
    return out


def test_the_layer_given_the_largest_update_ranks_first():
    model = tiny_model("llama")
    before = snapshot(model)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.add_(1.0)
        model.model.layers[0].mlp.up_proj.weight.add_(0.1)
    scores = update_magnitudes(before, model)
    assert [index for _, index in scores.ranked()] == [2, 0, 1]
    assert scores.scores[("model.layers", 1)] == 0.0
    assert top_layers(scores, 1) == [2] and top_layers(scores, 2) == [0, 2]


def test_pilot_ranking_restores_the_model():
    model = tiny_model("gpt2")
    state = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.transformer.wte.weight.requires_grad_(False)
    flags["transformer.wte.weight"] = False
    scores = pilot_ranking(model, batches(model), steps=3, lr=1e-2)
    assert len(scores.scores) == 3 and all(value > 0 for value in scores.scores.values())
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_gradient_ranking_keeps_no_state():
    model = tiny_model("llama")
    scores = gradient_ranking(model, batches(model))
    assert len(scores.scores) == 3 and all(value > 0 for value in scores.scores.values())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_rank_agreement():
    a = LayerScores({("s", i): float(i) for i in range(5)})
    reverse = LayerScores({("s", i): float(-i) for i in range(5)})
    assert rank_agreement(a, a, 2) == (1.0, 1.0)
    correlation, overlap = rank_agreement(a, reverse, 2)
    assert correlation == pytest.approx(-1.0) and overlap == 0.0
    with pytest.raises(ValueError, match="different layers"):
        rank_agreement(a, LayerScores({("s", 0): 1.0}), 1)
    with pytest.raises(ValueError, match="at least 1"):
        top_layers(a, 0)


def test_effective_rank_known_answers():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    for r in (1, 3, 7):
        equal_spectrum = q[:, :r] @ q[:, :r].T * 5.0  # r equal singular values
        assert effective_rank(equal_spectrum) == pytest.approx(r, rel=1e-9)
    low_rank = torch.randn(20, 3) @ torch.randn(3, 30)
    assert 1.0 < effective_rank(low_rank) <= 3.0 + 1e-9
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_gradient_ranking_statistics():
    model = tiny_model("llama")
    norm = gradient_ranking(model, batches(model), statistic="norm")
    assert len(norm.scores) == 3 and all(value > 0 for value in norm.scores.values())
    with pytest.raises(ValueError, match="statistic must be"):
        gradient_ranking(model, batches(model), statistic="fisher")


def test_update_ranks_between_a_base_and_its_fine_tune():
    import copy

    from peft_grow.analysis import update_ranks

    base = tiny_model("llama")
    tuned = copy.deepcopy(base)
    assert set(update_ranks(base, tuned).values()) == {0.0}
    up = tuned.model.layers[1].mlp.up_proj.weight
    with torch.no_grad():  # equal singular values along two orthogonal directions: effective rank 2
        up += torch.outer(torch.eye(up.shape[0])[0], torch.eye(up.shape[1])[0])
        up += torch.outer(torch.eye(up.shape[0])[1], torch.eye(up.shape[1])[1])
    assert update_ranks(base, tuned) == {"0": 0.0, "1": pytest.approx(2.0, abs=1e-4), "2": 0.0}
    differing = r"same dense MLPs; found 3 and 2, differing at \[\('model.layers', 2, 'mlp'\)\]"
    with pytest.raises(ValueError, match=differing):
        update_ranks(base, tiny_model("llama", num_hidden_layers=2))


def test_update_rank_recorder_and_heat_map(tmp_path):
    from transformers import Trainer, TrainingArguments

    from peft_grow.analysis import UpdateRankRecorder, update_rank_callback

    model = tiny_model("llama")
    recorder = UpdateRankRecorder()
    dataset = [{"input_ids": row, "labels": row} for row in sample_inputs(model, batch=8, length=9)["input_ids"].cpu()]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no",
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[update_rank_callback(recorder, every=2)]).train()
    assert recorder.steps == [2, 4] and len(recorder.layers) == 3
    p, h = model.model.layers[0].mlp.up_proj.weight.shape
    assert all(0 < rank <= min(p, h) for row in recorder.ranks for rank in row)
    assert all(norm > 0 for row in recorder.norms for norm in row)
    recorder.plot(tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
