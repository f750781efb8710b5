"""peft_grow.sequences: the windows and the mean next-token loss that the demo and the stories benchmarks share."""

import torch

from peft_grow.sequences import mean_token_loss, token_windows
from peft_grow.testing import tiny_model


def test_token_windows_cut_a_stream_and_drop_the_short_tail():
    windows = token_windows(torch.arange(10), 4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_windows(torch.arange(3), 4).shape == (0, 4)


def test_mean_token_loss_is_the_mean_over_windows_in_any_batching_and_leaves_train_mode():
    model = tiny_model("llama")
    windows = torch.randint(3, 96, (5, 8), generator=torch.Generator().manual_seed(0)).to(model.device)
    with torch.no_grad():
        expected = model(input_ids=windows, labels=windows).loss.item()  # one batch: the mean over all windows
    assert abs(mean_token_loss(model, windows, batch_size=2) - expected) < 1e-5  # batches of 2, 2 and 1
    assert model.training
