"""Shared test helpers: the tiny model zoo (from peft_grow.testing), Gemma3-1B's shape, a few training steps, and
the command line run in-process. Tests import them from here; conftest.py only sets the environment and holds
fixtures."""

from __future__ import annotations

import pytest
import torch

from peft_grow.cli import main
from peft_grow.testing import (  # noqa: F401  (the tests import the zoo from here)
    ALL_ARCHITECTURES,
    DEVICE,
    GEMMA3_1B,
    HEADS,
    LAYERS,
    TINY_CONFIGS,
    VARIANTS,
    VOCAB,
    H,
    P,
    logits,
    sample_inputs,
    tiny_model,
)


def train(model, steps: int = 5, lr: float = 1e-2, weight_decay: float = 0.1, seed: int = 0) -> list[float]:
    """A few AdamW steps of next-token (or seq2seq / classification) loss, fitting one fixed random batch."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        inputs = sample_inputs(model, batch=4, length=9, seed=seed)
        if model.config.model_type in ("bert", "roberta"):
            inputs["labels"] = inputs["input_ids"][:, 0] % 3
        else:
            inputs["labels"] = inputs["input_ids"]
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def run(capsys, *args) -> tuple[int, str, str]:
    """`peft-grow ARGS` through `main`, in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code, err, expected_code=2):
    assert code == expected_code
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
