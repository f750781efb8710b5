"""`peft-grow rank-layers` on the repository's real model and text."""

import re
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODEL = DATA / "stories260K"


@pytest.mark.parametrize("method", ["pilot", "gradient"])
def test_rank_layers_prints_a_ranking_and_a_config(capsys, method):
    args = ["--top", "2", "--steps", "2", "--batch", "2", "--seq-len", "32", "--method", method, "--lr", "1e-3"]
    code, out, _ = run(capsys, "rank-layers", MODEL, DATA / "tinyshakespeare.txt", *args)
    assert code == 0
    layers = re.search(r"GrowConfig\(layers=\[(\d+), (\d+)\]\)", out)
    assert layers and int(layers[1]) < int(layers[2]) <= 4
    assert len(re.findall(r"^\s+\d+\s+\d+\s+model\.layers\s+", out, flags=re.M)) == 5


def test_rank_layers_refuses_missing_or_short_text(capsys, tmp_path):
    code, _, err = run(capsys, "rank-layers", MODEL, tmp_path / "none.txt")
    assert_one_line_error(code, err)
    (tmp_path / "short.txt").write_text("To be.")
    code, _, err = run(capsys, "rank-layers", MODEL, tmp_path / "short.txt")
    assert_one_line_error(code, err)
    assert "fewer than one batch" in err
