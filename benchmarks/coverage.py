"""Which causal-LM model types of the installed transformers growth handles: grown exactly, refused, or wrong.

Every model type `AutoModelForCausalLM` knows is built tiny from its default config (size attributes shrunk; a type
whose config cannot be shrunk this way is reported as not buildable), then grown with `GrowConfig()` (k=2,
G-Freeze) and `GrowConfig(k=3, mode="train")`, and once more with the same MLPs named explicitly
(`up_modules` / `down_modules`, the path for types peft-grow does not know). A type's verdict is that of the two
`GrowConfig` settings; a wrong result on any path is reported. Each outcome is one of:

  exact     the grown model's logits equal the base's (float32, within 1e-5 of the largest logit); and, for a type
            grown exactly, GrowConfig(init_weights=False) (an adapter that is not an identity) moves them: what
            grows is on the path from the tokens to the logits (column "moves")
  refused   get_peft_model raised with its reason (a mixture-of-experts table line, a failed self-check, ...)
  WRONG     the adapter was accepted but the logits moved (or an init_weights=False adapter left them where they
            were), or the forward failed: a bug, never expected
  unbuilt   the tiny model could not be built or run (a limit of this script, not of growth)

    python -m benchmarks.coverage                     # all types: a few minutes on 2 CPU cores
    python -m benchmarks.coverage llama falcon bloom  # some
    python -m benchmarks.coverage --markdown          # the table for docs/configuration.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from peft_grow import GrowConfig, UnsupportedArchitectureError  # noqa: E402
from peft_grow.tuner.architectures import resolve_layout  # noqa: E402

# size attributes set where a default config has them; small but with room for heads, groups and experts
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "ffn_hidden_size": 96,
    "ffn_dim": 96,
    "d_ff": 96,
    "dff": 96,
    "n_inner": 96,
    "inner_hidden_size": 96,
    "moe_intermediate_size": 48,
    "shared_expert_intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "decoder_layers": 2,
    "encoder_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "n_embd": 64,
    "d_model": 64,
    "d_kv": 16,
    "vocab_size": 128,
    "max_position_embeddings": 128,
    "n_positions": 128,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "decoder_ffn_dim": 96,
    "encoder_ffn_dim": 96,
    "rotary_dim": 8,  # GPT-J, CodeGen: a part of head_dim
    "kv_lora_rank": 16,  # multi-head latent attention (DeepSeek V2/V3, MiniCPM3, ...)
    "q_lora_rank": 16,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 16,  # = head_dim, which rotary embeddings read
    "qk_head_dim": 32,
    "v_head_dim": 16,
}
# set even where the default config leaves them None (derived from other sizes, which the shrinking changed)
DERIVED = ("head_dim", "num_key_value_heads")
MAX_PARAMETERS = 20_000_000  # a tiny model above this kept some default size: reported unbuilt, not built


@dataclass
class Outcome:
    model_type: str
    setting: str
    result: str  # exact | refused | WRONG | unbuilt
    detail: str


def tiny_config(model_type: str):
    config = AutoConfig.for_model(model_type)
    targets = [config] + [value for value in vars(config).values() if isinstance(value, PretrainedConfig)]
    for target in targets:
        _shrink_sizes(target)
        _fit_heads(target)
        _fit_token_ids(target)
        _fit_layers(target)
    return config


def _shrink_sizes(target: PretrainedConfig) -> None:
    """The TINY sizes, where the config has them (DERIVED ones even where it leaves them None)."""
    for key, value in TINY.items():
        if getattr(target, key, None) is not None:
            with contextlib.suppress(AttributeError):  # a property computed from other sizes
                setattr(target, key, value)
    for key in DERIVED:
        if key in getattr(target, "__dict__", {}) and getattr(target, key) is None:
            with contextlib.suppress(AttributeError):
                setattr(target, key, TINY[key])


def _fit_heads(target: PretrainedConfig) -> None:
    """Head counts that must agree with the shrunk widths: Mamba's heads, latent attention's key/value heads."""
    inner = getattr(target, "mamba_d_ssm", None) or (
        getattr(target, "mamba_expand", getattr(target, "expand", 2)) * TINY["hidden_size"]
    )
    heads, width = getattr(target, "mamba_n_heads", None), getattr(target, "mamba_d_head", None)
    if isinstance(heads, int) and isinstance(width, int) and heads * width != inner:  # heads tile the width
        target.mamba_n_heads, target.mamba_d_head = inner // 16, 16
    if getattr(target, "kv_lora_rank", None) and getattr(target, "num_key_value_heads", None):
        target.num_key_value_heads = TINY["num_attention_heads"]  # latent attention: one key/value per head
    if getattr(target, "model_type", "") == "mamba2":
        target.num_heads = inner // TINY["head_dim"]
    if getattr(target, "model_type", "") == "zamba2":  # sizes its __post_init__ derived from the default width
        target.attention_hidden_size = 2 * TINY["hidden_size"]
        target.attention_head_dim = target.attention_hidden_size // TINY["num_attention_heads"]
        target.mamba_headdim = inner // target.n_mamba_heads
        target.kv_channels = TINY["hidden_size"] // TINY["num_attention_heads"]
        target.num_query_groups = TINY["num_attention_heads"]


def _fit_token_ids(target: PretrainedConfig) -> None:
    """Special token ids inside the shrunk vocabulary."""
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token = getattr(target, key, None)
        if isinstance(token, int) and token >= TINY["vocab_size"]:
            setattr(target, key, 0)


def _fit_layers(target: PretrainedConfig) -> None:
    """Per-layer settings for the shrunk layer count: one MoE layer and one group, no shared key/value layers,
    per-layer type lists cut to the layers."""
    for key in ("first_k_dense_replace", "first_k_dense", "num_dense_layers", "n_group", "topk_group"):
        if isinstance(getattr(target, key, None), int) and getattr(target, key) > 1:  # one MoE layer, 1 group
            setattr(target, key, 1)
    if getattr(target, "num_kv_shared_layers", None):
        target.num_kv_shared_layers = 0
    layers = getattr(target, "num_hidden_layers", None)
    for key in ("layer_types", "block_types", "layers_block_type", "attn_layer_indices"):
        found = getattr(target, key, None)
        if isinstance(found, list) and layers is not None and len(found) > layers:
            setattr(target, key, found[:layers])
    if getattr(target, "hybrid_layer_ids", None) is not None:  # Zamba2: one Mamba and one hybrid (MLP) layer
        target.layers_block_type = ["linear_attention", "hybrid"][:layers]
        target.hybrid_layer_ids = [1]


def parameters_on_meta(config) -> int:
    """The model's size, built on the meta device: sizes the shrinking missed (sub-configs of other names) would
    otherwise build gigabytes. 0 for a model that cannot be built there (it is then built for real)."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    except Exception:  # noqa: BLE001
        return 0


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def census(model_type: str) -> list[Outcome]:
    try:
        config = tiny_config(model_type)
        size = parameters_on_meta(config)
        if size > MAX_PARAMETERS:
            return [Outcome(model_type, "-", "unbuilt", f"still {size / 1e6:.0f}M parameters after shrinking")]
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config).eval()
        ids = torch.randint(3, min(config.get_text_config().vocab_size or 128, 128), (2, 7))
        expected = logits(base, ids)
    except Exception as error:  # noqa: BLE001  (any failure to build or run the tiny base)
        return [Outcome(model_type, "-", "unbuilt", _line(error))]
    outcomes = []
    settings = [("k=2 freeze", GrowConfig()), ("k=3 train", GrowConfig(k=3, mode="train"))]
    explicit = explicit_config(base)
    if explicit is not None:
        settings.append(("explicit", explicit))
    for setting, config in settings:
        try:
            grown = get_peft_model(copy.deepcopy(base), config)
        except Exception as error:  # noqa: BLE001
            outcomes.append(Outcome(model_type, setting, "refused", _line(error)))
            continue
        try:
            difference = (logits(grown, ids) - expected).abs().max().item()
        except Exception as error:  # noqa: BLE001
            outcomes.append(Outcome(model_type, setting, "WRONG", "forward failed: " + _line(error)))
            continue
        exact = difference <= 1e-5 * max(1.0, expected.abs().max().item())
        outcomes.append(Outcome(model_type, setting, "exact" if exact else "WRONG", f"max |diff| {difference:.2e}"))
    if outcomes and outcomes[0].result == "exact":
        outcomes.append(on_path(model_type, base, ids, expected))
    return outcomes


def on_path(model_type: str, base, ids: torch.Tensor, expected: torch.Tensor) -> Outcome:
    """GrowConfig(init_weights=False), an adapter that is not an identity, must move the logits of a text input:
    if they stay put, what was grown is not on the path from the tokens to the logits (a vision tower, say)."""
    try:
        moved = (logits(get_peft_model(copy.deepcopy(base), GrowConfig(init_weights=False)), ids) - expected).abs()
    except Exception as error:  # noqa: BLE001
        return Outcome(model_type, "moves", "WRONG", "init_weights=False failed: " + _line(error))
    difference = moved.max().item()
    result = "exact" if difference > 1e-5 * max(1.0, expected.abs().max().item()) else "WRONG"
    return Outcome(model_type, "moves", result, f"init_weights=False moves the logits by up to {difference:.2e}")


def explicit_config(model) -> GrowConfig | None:
    """The path a user takes for a type peft-grow does not know: the same MLP named with up_modules /
    down_modules (the layout the table or the detection finds), or None where there is none to name."""
    try:
        layout = resolve_layout(model)
    except UnsupportedArchitectureError:
        return None
    if not layout.up:  # experts only: nothing dense to name
        return None
    chunks = layout.fused_up_chunks if layout.fused_up_chunks > 1 else None
    return GrowConfig(up_modules=list(layout.up), down_modules=list(layout.down), fused_up_chunks=chunks)


def _line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


def main(argv: list[str] | None = None) -> list[Outcome]:
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("types", nargs="*", help="model types (default: every causal-LM type)")
    parser.add_argument("--markdown", action="store_true", help="print the table for docs/configuration.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    outcomes = []
    for model_type in args.types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        for outcome in census(model_type):
            outcomes.append(outcome)
            if not args.markdown:
                print(
                    f"{outcome.model_type:<28} {outcome.setting:<11} {outcome.result:<8} {outcome.detail}", flush=True
                )
    per_type = {}  # the verdict is GrowConfig()'s: both default settings; a wrong explicit result counts too
    for outcome in outcomes:
        if outcome.setting != "explicit" or outcome.result == "WRONG":
            per_type.setdefault(outcome.model_type, set()).add(outcome.result)
    verdict = Counter(
        "WRONG"
        if "WRONG" in r
        else "unbuilt"
        if "unbuilt" in r
        else "exact"
        if r == {"exact"}
        else "refused"
        if r == {"refused"}
        else "mixed"
        for r in per_type.values()
    )
    if args.markdown:
        print(
            "| model type | k=2 freeze | k=3 train | up_modules / down_modules | init_weights=False moves the logits |"
            "\n|---|---|---|---|---|"
        )
        for model_type in per_type:
            row = {o.setting: o for o in outcomes if o.model_type == model_type}
            columns = ("k=2 freeze", "k=3 train", "explicit", "moves")
            cells = [_cell(row.get(s)) for s in columns] if "-" not in row else [_cell(row["-"])] * 2 + ["", ""]
            print(f"| {model_type} | {' | '.join(cells)} |")
    print(
        f"\n{len(per_type)} model types: "
        + ", ".join(f"{n} {k}" for k, n in sorted(verdict.items(), key=lambda kv: -kv[1]))
        + " (the verdict of GrowConfig()'s two settings; exact or refused when both are)",
        file=sys.stderr if args.markdown else sys.stdout,
    )
    return outcomes


def _cell(outcome: Outcome | None) -> str:
    if outcome is None:
        return ""
    if outcome.result == "exact":
        return "yes" if outcome.setting == "moves" else "exact"
    reason = outcome.detail.split(": ", 1)[-1].replace("|", "/")
    return f"{outcome.result}: {reason[:120]}"


if __name__ == "__main__":
    main()
