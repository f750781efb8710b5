"""Growth over bitsandbytes 4-bit and 8-bit bases (QLoRA-style), on the CPU: the quantized layer computes the
original rows, float copies of its dequantized weights the new ones. Checked: the function at initialisation
(within the quantized kernels' own rounding), training of the new weights only, reload, merging into a
dequantized wider checkpoint that plain transformers loads, and clear refusals of other quantized layers."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from peft_grow import GrowConfig, GrowLayer, UnsupportedArchitectureError

pytest.importorskip("bitsandbytes")  # a dependency of the test extra; this only guards partial installs

QUANTIZATION = {
    "4bit": BitsAndBytesConfig(load_in_4bit=True),
    "8bit": BitsAndBytesConfig(load_in_8bit=True),
}
# The quantized kernels round differently from a float matmul on their own dequantized weights (LLM.int8 also
# quantizes activations), and growth mixes both: measured up to 0.6% of the largest logit, allowed 2%.
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny llama whose widths suit bitsandbytes' CPU kernels (multiples of 32)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def quantized(path, kind):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=QUANTIZATION[kind], device_map="cpu")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def repacked(model):
    """bitsandbytes' 4-bit layers whose weights were repacked for its CPU inference kernel (a first forward in eval
    mode without gradients on CPUs with AVX512-BF16 does it, for good; training through them then breaks)."""
    return [
        n
        for n, m in model.named_modules()
        if getattr(getattr(m, "weight", None), "quant_state", None) is not None
        and getattr(m.weight.quant_state, "packing_format_for_cpu", False)
    ]


IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", QUANTIZATION)
@pytest.mark.parametrize("mode", ["freeze", "train"])
def test_growth_over_a_quantized_base_trains_reloads_and_merges(checkpoint, tmp_path, kind, mode):
    expected = logits(quantized(checkpoint, kind), IDS)
    # train mode throughout: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights for its inference
    # kernel at the first forward in eval mode without gradients; the layer then passes no gradient to its input,
    # and state_dict() (save_pretrained) unpacks them with a small loss (about 0.2% of a layer's output), for LoRA
    # alike. The model has no dropout, so train mode computes the same function. Growth's own check forward, run on
    # the base as loaded (eval mode), must not repack them.
    model = get_peft_model(quantized(checkpoint, kind), GrowConfig(k=2, mode=mode))
    assert not repacked(model)
    model.train()
    scale = expected.abs().max().item()
    assert (logits(model, IDS) - expected).abs().max().item() <= TOLERANCE * scale
    assert all(m.quantized for m in model.modules() if isinstance(m, GrowLayer))
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".grow_" in n and p.dtype == torch.float32 for n, p in trained.items())
    packed = {n: p.detach().clone() for n, p in model.named_parameters() if not p.dtype.is_floating_point}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, packed[n]) for n, p in model.named_parameters() if n in packed)  # quantized: as loaded
    unmoved = [n for n, p in model.named_parameters() if n in trained and torch.equal(p, trained[n])]
    assert not unmoved, unmoved
    after = logits(model, IDS)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(quantized(checkpoint, kind), tmp_path / "adapter", is_trainable=True)
    assert not repacked(reloaded)
    assert torch.equal(logits(reloaded.train(), IDS), after)
    merged = model.merge_and_unload()
    up = merged.model.layers[0].mlp.up_proj
    assert type(up) is nn.Linear and up.out_features == 256 and merged.config.intermediate_size == 256
    assert (logits(merged, IDS) - after).abs().max().item() <= TOLERANCE * scale
    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # a dequantized, wider, standard checkpoint
    assert torch.equal(logits(plain, IDS), logits(merged, IDS))


class PackedLinear(nn.Module):
    """Stands in for GPTQ's / AWQ's packed layers: integer `qweight`, no float weight."""

    def __init__(self, features_in, features_out):
        super().__init__()
        self.register_buffer("qweight", torch.zeros(features_in // 8, features_out, dtype=torch.int32))


def test_other_quantized_layers_are_refused_naming_the_type(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    model.model.layers[0].mlp.up_proj = PackedLinear(64, 128)
    with pytest.raises(UnsupportedArchitectureError, match=r"PackedLinear\) holds packed quantized.*BitsAndBytes"):
        get_peft_model(model, GrowConfig())
