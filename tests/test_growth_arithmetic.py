"""The growth arithmetic (peft_grow.tuner.growth): its functions, and an init mode added in one edit."""

import copy
import os

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_grow import GrowConfig
from peft_grow.testing import logits, sample_inputs, tiny_model
from peft_grow.tuner import growth
from peft_grow.tuner.growth import INITS, CopyInit, ZeroInit, chunk_copies, merged_down, merged_up

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_chunk_copies_groups_the_copies_of_each_chunk():
    rows = torch.arange(4.0).reshape(4, 1)  # two chunks of two rows: [0, 1 | 2, 3]
    assert chunk_copies(rows, chunks=2, k=3, dim=0).flatten().tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    stacked = torch.stack([rows, rows + 10])  # experts: the same per leading index
    assert chunk_copies(stacked, chunks=2, k=2, dim=-2)[1].flatten().tolist() == [10, 11, 12, 13]


@pytest.mark.parametrize("init", sorted(INITS))
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_merged_weights_compute_the_original_mlp(init, chunks, k):
    """For every init, the merged wide MLP equals the narrow one (the definition of a function-preserving start)."""
    torch.manual_seed(0)
    h, p = 6, 4
    up, down = torch.randn(chunks * p, h, dtype=torch.float64), torch.randn(h, p, dtype=torch.float64)
    x = torch.randn(5, h, dtype=torch.float64)
    mode = INITS[init]

    def mlp(up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
        hidden = x @ up_weight.T
        if chunks == 2:
            gate, value = hidden.chunk(2, dim=-1)
            hidden = torch.nn.functional.silu(gate) * value
        else:
            hidden = torch.nn.functional.gelu(hidden)
        return hidden @ down_weight.T

    wide_up = merged_up(up, mode.new_rows(up, chunks, k), chunks)
    wide_down = merged_down(down, k, init, mode.new_columns(down, k))
    assert wide_up.shape == (chunks * k * p, h) and wide_down.shape == (h, k * p)
    torch.testing.assert_close(mlp(wide_up, wide_down), mlp(up, down), rtol=1e-12, atol=1e-12)


def test_symmetry_noise_sums_to_zero_over_the_blocks():
    torch.manual_seed(0)
    down = torch.randn(3, 6, 4, dtype=torch.float64)  # three experts
    columns = CopyInit().new_columns(down, k=4, symmetry_noise=0.5)
    blocks = columns.unflatten(-1, (3, 4))
    assert not torch.allclose(blocks[..., 0, :], blocks[..., 1, :])
    torch.testing.assert_close(blocks.sum(dim=-2), 3 * down / 4)


class CopyRowsZeroColumns(ZeroInit):
    """The module docstring's example: new rows copy the originals, new down columns start at zero."""

    def new_rows(self, up, chunks, k, generator=None):  # noqa: ANN001, ANN201
        return chunk_copies(up, chunks, k, dim=-2)

    def new_bias(self, bias, chunks, k):  # noqa: ANN001, ANN201
        return chunk_copies(bias, chunks, k, dim=-1)

    def new_outputs(self, x, out, up, chunks, k, generator):  # noqa: ANN001, ANN201
        return chunk_copies(out, chunks, k, dim=-1)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_an_init_mode_added_in_one_edit_grows_saves_and_merges(architecture, monkeypatch, tmp_path):
    """Registering the docstring's example in INITS is all it takes: config, self-check, layers, save/load, merge."""
    monkeypatch.setitem(growth.INITS, "copy-rows", CopyRowsZeroColumns())
    base = tiny_model(architecture)
    inputs = sample_inputs(base)
    expected = logits(base, inputs)
    model = get_peft_model(copy.deepcopy(base), GrowConfig(init="copy-rows", k=3))
    torch.testing.assert_close(logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
    layer = next(m for m in model.modules() if type(m).__name__ == "GrowUpLayer")
    rows = layer.grow_new_weight["default"]  # the new mode's rows, not ZeroInit's random ones
    base_rows = layer.get_base_layer().weight
    assert torch.equal(rows, base_rows.repeat(2, 1) if not layer.conv1d else base_rows.repeat(1, 2))
    with torch.no_grad():  # train the new down columns a little: the model changes, and must survive the round trips
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    trained = logits(model, inputs)
    assert not torch.allclose(trained, expected, atol=1e-4)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits(reloaded, inputs), trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(reloaded.merge_and_unload(), inputs), trained, rtol=1e-4, atol=1e-4)


def test_an_unregistered_init_mode_is_refused_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"GrowConfig.init must be one of \('copy', 'zero'\), got 'copy-rows'"):
        GrowConfig(init="copy-rows")
