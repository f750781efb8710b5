"""Custom torch models, as PEFT users grow them: an MLP outside any numbered stack of layers, addressed by its
full module names, and an MLP whose output width differs from its input width (10 -> 20 -> 2)."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from peft_grow import GrowConfig


class MLP(nn.Module):
    def __init__(self, sizes=(10, 20, 2)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(sizes[1], sizes[2])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_a, self.block_b = MLP((10, 20, 10)), MLP((10, 30, 3))

    def forward(self, x):
        return self.block_b(self.block_a(x))


def test_a_top_level_mlp_with_another_output_width_grows_exactly_trains_saves_and_merges(tmp_path):
    torch.manual_seed(0)
    base, x = MLP(), torch.randn(8, 10)
    expected = base(x)
    for k in (2, 3):
        for mode in ("freeze", "train"):
            config = GrowConfig(up_modules=["fc1"], down_modules=["fc2"], k=k, mode=mode)
            grown = get_peft_model(copy.deepcopy(base), config)
            assert (grown(x) - expected).abs().max() <= 1e-6, (k, mode)
    model = get_peft_model(copy.deepcopy(base), GrowConfig(up_modules=["fc1"], down_modules=["fc2"]))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("grow_new" in n for n in trained)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model(x).detach()
    assert (after - expected).abs().max() > 1e-3  # it trained
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    assert torch.equal(reloaded(x), after)
    merged = model.merge_and_unload()
    assert isinstance(merged.fc1, nn.Linear) and merged.fc1.out_features == 40
    assert (merged(x) - after).abs().max() <= 1e-5


def test_mlps_in_unnumbered_blocks_are_grouped_by_their_parent_module():
    torch.manual_seed(0)
    base, x = TwoBlocks(), torch.randn(4, 10)
    config = GrowConfig(up_modules=[r"block_.\.fc1"], down_modules=[r"block_.\.fc2"])
    model = get_peft_model(copy.deepcopy(base), config)
    assert sorted(config.target_modules) == ["block_a.fc1", "block_a.fc2", "block_b.fc1", "block_b.fc2"]
    assert (model(x) - base(x)).abs().max() <= 1e-6
    assert model.base_model.model.block_b.fc1.out_features == 60


def test_layers_cannot_select_an_mlp_outside_numbered_layers():
    with pytest.raises(ValueError, match=r"selects numbered layers.*outside any numbered stack.*layers=None"):
        get_peft_model(MLP(), GrowConfig(up_modules=["fc1"], down_modules=["fc2"], layers=[0]))


def test_modules_that_are_not_one_mlp_are_refused():
    with pytest.raises(ValueError, match=r"fc2 maps 20 -> 2 but the down projection fc1 takes 10 features"):
        get_peft_model(MLP(), GrowConfig(up_modules=["fc2"], down_modules=["fc1"]))
