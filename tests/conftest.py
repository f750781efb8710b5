"""The test environment (offline, quiet, one thread, GROW registered) and fixtures; helpers live in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the guard's tests compare with trl.experimental on purpose

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import DEVICE  # noqa: E402

import peft_grow  # noqa: E402,F401  (registers GROW with PEFT)

torch.set_num_threads(1)  # tiny shapes: threads only add contention


@pytest.fixture
def device() -> torch.device:
    return DEVICE
