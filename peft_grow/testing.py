"""Tiny models of every architecture the test suite grows, built offline from small configs, with sample inputs
and logits, and Gemma3-1B's published shape for figures computed on the meta device: for tests of code built
on peft-grow, and for benchmarks that measure on the same models and shapes.

    from peft_grow.testing import ALL_ARCHITECTURES, logits, sample_inputs, tiny_model
    model = tiny_model("gpt2")  # randomly initialised, eval mode, on CUDA when there is one

Nothing here is imported by `import peft_grow`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB = 96
H, P, LAYERS, HEADS = 32, 40, 3, 4

_DECODER = dict(
    hidden_size=H, intermediate_size=P, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB
)
_GQA = dict(_DECODER, num_key_value_heads=2)
_GPT = dict(n_embd=H, n_inner=P, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=64)
_NO_SPECIAL_TOKENS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)

# model_type -> (config kwargs, auto class); one entry per key of peft_grow.ARCHITECTURES
TINY_CONFIGS: dict[str, tuple[dict, type]] = {
    **{
        name: (_GQA, AutoModelForCausalLM)
        for name in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "stablelm",
            "granite",
            "cohere",
            "cohere2",
            "nemotron",
            "arcee",
        )
    },
    **{name: (dict(_GQA, pad_token_id=0), AutoModelForCausalLM) for name in ("phi3", "glm", "glm4")},
    "helium": (dict(_GQA, head_dim=H // HEADS), AutoModelForCausalLM),
    "gpt2": (_GPT, AutoModelForCausalLM),
    "gpt_bigcode": (dict(_GPT, **_NO_SPECIAL_TOKENS), AutoModelForCausalLM),
    "starcoder2": (dict(_GQA, **_NO_SPECIAL_TOKENS), AutoModelForCausalLM),
    "gpt_neox": (_DECODER, AutoModelForCausalLM),
    "opt": (
        dict(
            hidden_size=H,
            ffn_dim=P,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            vocab_size=VOCAB,
            word_embed_proj_dim=H,
            max_position_embeddings=64,
            **_NO_SPECIAL_TOKENS,
        ),
        AutoModelForCausalLM,
    ),
    "phi": (_DECODER, AutoModelForCausalLM),
    "gptj": (dict(_GPT, rotary_dim=4, **_NO_SPECIAL_TOKENS), AutoModelForCausalLM),
    "codegen": (dict(_GPT, rotary_dim=4, n_ctx=64, **_NO_SPECIAL_TOKENS), AutoModelForCausalLM),
    "ctrl": (
        dict(n_embd=H, dff=P, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=64),
        AutoModelForCausalLM,
    ),
    "xlm": (
        dict(emb_dim=H, n_layers=LAYERS, n_heads=HEADS, vocab_size=VOCAB, max_position_embeddings=64),
        AutoModelForCausalLM,
    ),
    "modernbert-decoder": (dict(_DECODER, pad_token_id=0, bos_token_id=1, eos_token_id=2), AutoModelForCausalLM),
    "bert": (dict(_DECODER, num_labels=3), AutoModelForSequenceClassification),
    "roberta": (
        dict(_DECODER, num_labels=3, pad_token_id=1, max_position_embeddings=70),
        AutoModelForSequenceClassification,
    ),
    "t5": (
        dict(d_model=H, d_ff=P, num_layers=2, num_decoder_layers=LAYERS, num_heads=HEADS, d_kv=8, vocab_size=VOCAB),
        AutoModelForSeq2SeqLM,
    ),
}
# variants of an architecture that take another path through the code
VARIANTS: dict[str, tuple[str, dict]] = {
    "t5-gated": ("t5", dict(feed_forward_proj="gated-gelu")),
    "gemma3": ("gemma3", {}),
}


def _config(name: str, overrides: dict) -> tuple[PretrainedConfig, type]:
    if name == "gemma3":  # multimodal: only the language model grows, never the vision tower
        return AutoConfig.for_model(
            "gemma3",
            text_config=dict(_GQA, model_type="gemma3_text"),
            vision_config=dict(
                hidden_size=H,
                intermediate_size=P,
                num_hidden_layers=2,
                num_attention_heads=HEADS,
                image_size=28,
                patch_size=14,
            ),
            mm_tokens_per_image=4,
        ), AutoModelForCausalLM
    model_type, extra = VARIANTS.get(name, (name, {}))
    kwargs, auto = TINY_CONFIGS[model_type]
    return AutoConfig.for_model(model_type, **{**kwargs, **extra, **overrides}), auto


ALL_ARCHITECTURES = sorted(TINY_CONFIGS) + sorted(VARIANTS)


def tiny_model(
    name: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any
) -> torch.nn.Module:
    """A randomly initialised tiny model of architecture `name`, with config `overrides`, in eval mode on DEVICE."""
    config, auto = _config(name, overrides)
    torch.manual_seed(seed)
    model = auto.from_config(config)
    return model.to(device=DEVICE, dtype=dtype).eval()


def sample_inputs(model: torch.nn.Module, batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    """Random token ids (and decoder ids for an encoder-decoder) on DEVICE, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator).to(DEVICE)
    inputs = {"input_ids": ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids
    return inputs


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The model's logits on `inputs`, without gradients."""
    with torch.no_grad():
        return model(**inputs).logits


# Gemma3-1B's published shape (DESIGN.md), for figures computed on the meta device
GEMMA3_1B = dict(
    hidden_size=1152,
    intermediate_size=6912,
    num_hidden_layers=26,
    vocab_size=262144,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
)
