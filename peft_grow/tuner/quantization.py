"""The weights growth can read, and the refusals of those it cannot.

Growth copies pretrained rows, so it needs whole weights it can read row by row: float weights, or bitsandbytes
4-bit / 8-bit layers, which it dequantizes (the original rows keep computing in the quantized layer; the new ones
are float copies). Other quantization schemes (GPTQ, AWQ, HQQ, torchao, ...), weights that accelerate has
offloaded (meta placeholders) and weights that DeepSpeed ZeRO-3 has partitioned are refused with the way out.
"""

from __future__ import annotations

import torch
from torch import nn

from .tensors import BNB_WEIGHTS

OFFLOADING_UNSUPPORTED = (
    "Grown layers compute with the base weights and the new weights directly, so accelerate's offloading, which "
    "keeps weights elsewhere and puts them in place only around a module's own forward (meta placeholders "
    "otherwise), cannot serve them. "
    "Load the model without offloading (device_map=None, or a device_map with no 'cpu' or 'disk' entries), grow it, "
    "and do not offload the grown model (cpu_offload, disk_offload, dispatch_model with an offloading device_map)."
)


# -- bitsandbytes: the quantized layers growth supports --
def is_bnb_quantized(module: nn.Module) -> bool:
    return type(getattr(module, "weight", None)).__name__ in BNB_WEIGHTS


def is_bnb_4bit(module: nn.Module) -> bool:
    return type(getattr(module, "weight", None)).__name__ == "Params4bit"


def bnb_dequantized(module: nn.Module) -> torch.Tensor:
    """The float weight [out, in] of a bitsandbytes 4-bit or 8-bit layer, without changing the layer.

    (PEFT's dequantize_module_weight resets an 8-bit layer's scales on CPU, after which it no longer runs.)
    """
    import bitsandbytes as bnb

    weight = module.weight
    if is_bnb_4bit(module):
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights for its CPU kernel at the first forward and cannot unpack them
            # exactly; the kernel applied to the identity gives the weight it computes with, bias aside
            with torch.no_grad():
                eye = torch.eye(module.in_features, dtype=quantized_compute_dtype(module), device=weight.device)
                transposed = module(eye)
                return (transposed if module.bias is None else transposed - module.bias).T.contiguous()
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    scales = getattr(weight, "SCB", None)
    scales = scales if scales is not None else module.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def quantized_compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a bitsandbytes layer computes in (its float copies are made in it)."""
    dtype = getattr(module, "compute_dtype", None)
    return dtype if dtype is not None else (module.bias.dtype if module.bias is not None else torch.float32)


def dequantized_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain nn.Linear holding `weight` and `bias` (merged, dequantized), on the quantized module's device."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone().to(weight.dtype), requires_grad=False)
    return linear


# -- refusals --
def refuse_unsupported_quantization(module: nn.Module) -> None:
    """Quantized weights other than bitsandbytes' cannot be copied row by row: refuse them with the way out."""
    message = unsupported_quantization(module)
    if message is not None:
        raise TypeError(message)


def unsupported_quantization(module: nn.Module, name: str | None = None) -> str | None:
    """Why growth cannot serve this quantized layer (GPTQ, AWQ, HQQ, torchao, ...) and what to do, else None."""
    kind = quantization_kind(module)
    if kind is None:
        return None
    layer = type(module).__name__ if name is None else f"{name} ({type(module).__name__})"
    return (
        f"{layer} holds {kind} weights, which peft-grow cannot copy row by row. Growth supports "
        "float weights and bitsandbytes 4-bit / 8-bit bases (BitsAndBytesConfig): load the base that way, or "
        "dequantize it first."
    )


def quantization_kind(module: nn.Module) -> str | None:
    """The quantization scheme of a layer that growth cannot serve (GPTQ, AWQ, HQQ, torchao, ...), else None."""
    if hasattr(module, "qweight"):  # GPTQ / AWQ / EETQ-style packed layers
        return f"packed quantized ({type(module).__module__.split('.')[0]})"
    if hasattr(module, "W_q"):
        return "HQQ-quantized"
    weight_type = type(getattr(module, "weight", None))
    if weight_type.__module__.startswith("torchao."):
        return f"torchao-quantized ({weight_type.__name__})"
    return None


def refuse_offloaded(module: nn.Module, weight: torch.Tensor | None = None) -> None:
    """Growth copies pretrained rows: refuse a module whose weight (`module.weight`, or the `weight` given: each 3-D
    tensor of an experts module) accelerate has offloaded (a meta placeholder)."""
    weight = module.weight if weight is None else weight
    if weight.is_meta and "_hf_hook" in module.__dict__:
        raise RuntimeError(
            f"Cannot grow a {type(module).__name__} {tuple(weight.shape)} whose weights are offloaded by "
            "accelerate: the module holds a meta placeholder, and growth copies the pretrained rows. "
            + OFFLOADING_UNSUPPORTED
        )


def refuse_placeholders(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Called when a weight is on the meta device: raise unless the input is too (a forward on the meta device,
    for shape inference, is fine). Mixed with real inputs, F.linear and out= matmuls return uninitialised
    memory rather than fail; accelerate's offloading leaves such placeholders."""
    if not x.is_meta:
        raise RuntimeError(
            f"A grown layer over a weight of shape {tuple(weight.shape)} holds meta placeholders instead of "
            "weights, as accelerate's offloading leaves them. " + OFFLOADING_UNSUPPORTED
        )


def refuse_partitioned(module: nn.Module, weight: torch.Tensor | None = None) -> None:
    """Growth copies pretrained rows, so it needs whole weights: refuse a DeepSpeed ZeRO-3 partitioned one
    (`module.weight`, or the `weight` given: each 3-D tensor of an experts module)."""
    weight = module.weight if weight is None else weight
    if getattr(weight, "ds_id", None) is None:  # the attribute DeepSpeed gives every ZeRO-3 parameter
        return
    raise RuntimeError(
        f"Cannot grow a {type(module).__name__} whose weight (full shape {tuple(getattr(weight, 'ds_shape', ()))}) "
        f"is partitioned by DeepSpeed ZeRO-3: this process holds {weight.numel()} of its values, and growth copies "
        "whole rows. Grow the model before DeepSpeed partitions it: load it and call get_peft_model before creating "
        "the TrainingArguments / SFTConfig that name the ZeRO-3 config (transformers then loads without zero.Init), "
        "and pass the grown model to the trainer; DeepSpeed partitions the new weights with the rest. Or use FSDP2."
    )
