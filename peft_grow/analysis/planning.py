"""What growing a model costs, computed from its config alone: parameter counts and training memory.

`plan_costs` builds the model on the meta device (no weights are read or allocated), applies `GrowConfig` with
`get_peft_model` exactly as training would, and reads the counts from `growth_summary()`. It then estimates the
memory of the parameter-related training state (weights, gradients, AdamW moments) for the grown adapter, for a
LoRA of comparable size and for full fine-tuning. Activations are *not* estimated: they depend on batch size,
sequence length and checkpointing, and a grown MLP's activations are k times wider.

Everything here is arithmetic on parameter counts; the assumptions are listed in `PlanCosts.assumptions`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from ..tuner.architectures import find_mlps, split_module_name
from ..tuner.config import GrowConfig
from ..tuner.model import GrowthSummary
from ..tuner.tensors import linear_shape

logger = logging.getLogger(__name__)

#: bytes per element of the dtypes a model can be trained in
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: AdamW keeps two moments (exp_avg, exp_avg_sq) per trained parameter, counted here as float32
ADAM_STATE_BYTES = 2 * 4
REFERENCE_LORA_RANK = 16


@dataclass(frozen=True)
class MethodCost:
    """Trainable parameters and training-state memory of one fine-tuning method.

    `added_params` are parameters that the method adds to the base model (0 for full fine-tuning); `weight_bytes`
    holds the base weights plus the added ones; `gradient_bytes` one gradient per trainable parameter, in that
    parameter's dtype; `optimizer_bytes` the two float32 AdamW moments per trainable parameter.
    """

    name: str
    trainable_params: int
    added_params: int
    trainable_share: float  # trainable parameters / base-model parameters (the paper's ratio)
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes


@dataclass(frozen=True)
class LoraShape:
    """The Linear layers a LoRA would target: `in_plus_out` = sum of (in + out) features, so r * in_plus_out
    parameters for rank r; `min_dim` = the smallest in or out among them (a rank above it cannot add capacity
    there)."""

    modules: int
    in_plus_out: int
    min_dim: int

    def params(self, rank: int) -> int:
        return rank * self.in_plus_out

    def closest_rank(self, target_params: int) -> int:
        """The rank r >= 1 whose r * in_plus_out is closest to `target_params` (the smaller one on a tie)."""
        low = max(1, math.floor(target_params / self.in_plus_out))
        return min((low, low + 1), key=lambda r: (abs(self.params(r) - target_params), r))


@dataclass(frozen=True)
class PlanCosts:
    """Costs of growing a model as configured, next to LoRA and full fine-tuning (see `plan_costs`)."""

    source: str
    model_type: str
    model_class: str
    dtype: str
    adapter_dtype: str  # dtype of the added (and LoRA) weights: float32 under PEFT's autocast_adapter_dtype
    k: int
    mode: str
    init: str
    base_params: int
    added_params: int  # new grown parameters (growth_summary); in G-Train this includes the delta on the up side
    added_buffer_elements: int  # frozen adapter tensors (symmetry noise in G-Train), counted in weight memory
    trainable_params: int
    grown_mlps: int  # MLPs grown; an experts module counts as one
    grown_layers: dict[str, tuple[int, ...]]  # layer stack -> grown layer indices
    stack_sizes: dict[str, int]  # layer stack -> number of layers
    # distinct (hidden h, width p, fused up chunks, experts: 0 for a dense MLP) of the grown MLPs
    mlp_shapes: tuple[tuple[int, int, int, int], ...]
    grow: MethodCost
    lora: MethodCost  # the rank whose trainable count is closest to the grown adapter's
    lora_reference: MethodCost  # rank 16, for reference
    full: MethodCost
    lora_shape: LoraShape
    lora_rank: int
    lora_reference_rank: int
    assumptions: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    @property
    def trainable_share(self) -> float:
        """Trainable parameters relative to the base model, as the paper counts (`GrowthSummary.trainable_share`)."""
        return self.trainable_params / self.base_params

    @property
    def methods(self) -> tuple[MethodCost, ...]:
        return (self.grow, self.lora, self.lora_reference, self.full)


def normalize_dtype(dtype: str | torch.dtype) -> str:
    """'bfloat16', 'float16' or 'float32' from a name or a torch dtype; ValueError for anything else."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}.")
    return name


def load_model_config(model_config_or_path: str | os.PathLike | PretrainedConfig) -> PretrainedConfig:
    """A transformers config from a config object, a local model folder, a local JSON file or a Hub id.

    A string that does not exist locally but looks like a path (absolute, relative with `.`, `~`, or ending in
    `.json`) raises FileNotFoundError instead of being sent to the Hub as a repository id.
    """
    if isinstance(model_config_or_path, PretrainedConfig):
        return model_config_or_path
    source = os.fspath(model_config_or_path)
    path = os.path.expanduser(source)
    looks_like_path = (
        os.path.isabs(path) or source.startswith((".", "~")) or source.endswith(".json") or source.count("/") > 1
    )
    if not os.path.exists(path) and looks_like_path:
        raise FileNotFoundError(f"{source}: no such file or folder (expected a model folder or its config.json).")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{source} has no config.json; pass a model folder or its config file.")
    try:
        return AutoConfig.from_pretrained(path if os.path.exists(path) else source)
    except OSError as exc:  # transformers' messages do not always name what was asked for
        raise OSError(f"{source}: {exc}") from exc


def build_meta_model(config: PretrainedConfig) -> nn.Module:
    """The model of `config` on the meta device: shapes only, no memory, no weights read.

    Decoder configs use AutoModelForCausalLM and encoder-decoder ones AutoModelForSeq2SeqLM (falling back to
    the other, then to AutoModel, where transformers has no such class): heads, hence base parameter counts,
    are those of that class.
    """
    autos = [AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModel]
    if getattr(config, "is_encoder_decoder", False):
        autos[:2] = autos[1::-1]
    for auto in autos:
        if type(config) in auto._model_mapping:
            with torch.device("meta"):
                return auto.from_config(config)
    raise ValueError(
        f"transformers has no model class for config {type(config).__name__} (model_type "
        f"{getattr(config, 'model_type', None)!r}); peft-grow cannot build it to count its parameters."
    )


def lora_shape(model: nn.Module, stacks: set[str]) -> LoraShape:
    """The Linear (and GPT-2 Conv1D) layers of every block in `stacks`: attention and MLP projections of all
    layers, not only the grown ones; embeddings and the LM head are outside the blocks and not counted."""
    modules, in_plus_out, min_dim = 0, 0, None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or _layer_stack(name) not in stacks:
            continue
        fan_in, fan_out = linear_shape(module)
        modules += 1
        in_plus_out += fan_in + fan_out
        min_dim = min(fan_in, fan_out) if min_dim is None else min(min_dim, fan_in, fan_out)
    if not modules:
        raise ValueError(f"No Linear layer found inside the layer stacks {sorted(stacks)}; cannot size a LoRA.")
    return LoraShape(modules=modules, in_plus_out=in_plus_out, min_dim=min_dim)


def _layer_stack(name: str) -> str | None:
    """The layer-stack path of a module name: `model.layers.3.mlp.up_proj` -> `model.layers`."""
    split = split_module_name(name)
    return None if split is None else split[0]


def _adapter_dtype_reason(dtype: str, autocast_adapter_dtype: bool) -> str:
    if dtype == "float32":
        return ""
    if autocast_adapter_dtype:
        return " (PEFT's default autocast_adapter_dtype=True upcasts 16-bit adapter weights)"
    return " (autocast_adapter_dtype=False)"


def _adapter_counts(model: nn.Module) -> int:
    """Elements of frozen adapter buffers (`grow_noise`), which are saved with the adapter and take memory."""
    return sum(buffer.numel() for name, buffer in model.named_buffers() if ".grow_" in name)


def plan_costs(
    model_config_or_path: str | os.PathLike | PretrainedConfig,
    layers: list[int] | int | None = None,
    k: int = 2,
    mode: str = "freeze",
    dtype: str | torch.dtype = "bfloat16",
    *,
    init: str = "copy",
    autocast_adapter_dtype: bool = True,
    reference_lora_rank: int = REFERENCE_LORA_RANK,
    **grow_kwargs: Any,
) -> PlanCosts:
    """Parameter counts and training memory of growing a model, without loading its weights.

    Args:
        model_config_or_path: a `PretrainedConfig`, a local model folder, a local config JSON file, or a Hub
            id (fetched with `AutoConfig.from_pretrained`, so it needs network access or the Hub cache).
        layers, k, mode, init: as in `GrowConfig`; `grow_kwargs` go to `GrowConfig` too (e.g. `symmetry_noise`,
            `exclude_modules`, `up_modules` / `down_modules` for architectures that are not auto-detected).
        dtype: the dtype the base model is trained in: "bfloat16", "float16" or "float32".
        autocast_adapter_dtype: as in `get_peft_model` (default True): new weights are kept in float32 when the
            base is in a 16-bit dtype; False keeps them in `dtype`. The LoRA rows use the same rule.
        reference_lora_rank: the second, fixed LoRA rank shown for reference.

    Counts (exact, from the model built on the meta device):
        * base parameters, tied tensors counted once;
        * parameters added and trained by the grown adapter, from `growth_summary()`; the trainable share is
          relative to the base model, as the paper counts it;
        * LoRA: every Linear layer inside the transformer blocks (attention and MLP projections, every layer;
          not embeddings, not the LM head) gets r * (in + out) parameters, biases untrained (PEFT's
          `bias="none"`); the rank shown is the one whose count is closest to the grown adapter's trainable count;
        * full fine-tuning trains every base parameter.

    Memory, per method (estimates of the parameter-related training state only):
        * weights: base parameters in `dtype`, plus added parameters (and the frozen G-Train noise buffers) in
          the adapter dtype;
        * gradients: one per trainable parameter, in that parameter's dtype;
        * optimizer: AdamW's two moments per trainable parameter, in float32 (8 bytes). That is what
          `torch.optim.AdamW` keeps for float32 adapter weights. For full fine-tuning it assumes a mixed-precision
          optimizer with float32 moments, and does *not* count a float32 master copy of the weights (4 more bytes
          per parameter where one is kept); plain `torch.optim.AdamW` on 16-bit weights keeps its moments in the
          weights' dtype instead (4 bytes per parameter, not 8).
        * not counted: activations (batch- and sequence-dependent; k times wider in the grown MLPs), temporary
          buffers, the CUDA context, allocator fragmentation, 8-bit or paged optimizers.

    Raises:
        ValueError for a bad `GrowConfig` field, dtype or layer index; UnsupportedArchitectureError for a model
        that cannot be grown; OSError (FileNotFoundError) when the config cannot be found or read.
    """
    dtype = normalize_dtype(dtype)
    grow_config = GrowConfig(layers=layers, k=k, mode=mode, init=init, **grow_kwargs)  # validates first, cheaply
    if not isinstance(reference_lora_rank, int) or reference_lora_rank < 1:
        raise ValueError(f"reference_lora_rank must be an integer >= 1, got {reference_lora_rank!r}.")
    source = _source_name(model_config_or_path)
    growth = _grow_on_meta(load_model_config(model_config_or_path), grow_config, autocast_adapter_dtype)
    logger.debug("plan_costs(%s): %s, %d adapter buffer elements", source, growth.summary, growth.buffers)
    prices = _Prices(dtype, _adapter_dtype(dtype, autocast_adapter_dtype), growth.summary.base_params)
    return _plan(source, growth, prices, grow_config, reference_lora_rank, autocast_adapter_dtype)


def _plan(
    source: str,
    growth: _Growth,
    prices: _Prices,
    grow_config: GrowConfig,
    reference_lora_rank: int,
    autocast_adapter_dtype: bool,
) -> PlanCosts:
    """PlanCosts from the grown model's counts: the grown adapter, next to LoRA (the rank closest in size, and the
    reference rank) and full fine-tuning, priced by `prices`."""
    summary, buffers, shape = growth.summary, growth.buffers, growth.lora_shape
    k, mode, init = grow_config.k, grow_config.mode, grow_config.init
    rank = shape.closest_rank(summary.trainable_params)
    return PlanCosts(
        source=source,
        model_type=growth.model_type,
        model_class=growth.model_class,
        dtype=prices.dtype,
        adapter_dtype=prices.adapter_dtype,
        k=k,
        mode=mode,
        init=init,
        base_params=summary.base_params,
        added_params=summary.added_params,
        added_buffer_elements=buffers,
        trainable_params=summary.trainable_params,
        grown_mlps=growth.grown_mlps,
        grown_layers=growth.grown_layers,
        stack_sizes=growth.stack_sizes,
        mlp_shapes=growth.mlp_shapes,
        grow=prices.adapter(_grow_name(k, mode, init), summary.added_params, summary.trainable_params, buffers),
        lora=prices.lora(shape, rank),
        lora_reference=prices.lora(shape, reference_lora_rank),
        full=prices.full(),
        lora_shape=shape,
        lora_rank=rank,
        lora_reference_rank=reference_lora_rank,
        assumptions=_assumptions(prices, autocast_adapter_dtype, shape),
        notes=_notes(shape, rank, buffers),
    )


def _source_name(model_config_or_path: str | os.PathLike | PretrainedConfig) -> str:
    """What the plan was made from: the path or Hub id, or the config class's name."""
    if isinstance(model_config_or_path, PretrainedConfig):
        return type(model_config_or_path).__name__
    return os.fspath(model_config_or_path)


@dataclass(frozen=True)
class _Growth:
    """A model grown on the meta device: where its MLPs are, what `growth_summary()` counts, and the LoRA that
    `plan_costs` compares with it."""

    model_type: str
    model_class: str
    lora_shape: LoraShape  # over every layer of every stack that holds growable MLPs
    stack_sizes: dict[str, int]  # layer stack -> number of layers
    grown_layers: dict[str, tuple[int, ...]]  # layer stack -> grown layer indices
    mlp_shapes: tuple[tuple[int, int, int, int], ...]  # distinct (hidden, width, fused up chunks, experts)
    grown_mlps: int
    summary: GrowthSummary
    buffers: int  # elements of frozen adapter buffers (symmetry noise in G-Train)


def _grow_on_meta(config: PretrainedConfig, grow_config: GrowConfig, autocast_adapter_dtype: bool = True) -> _Growth:
    """Build the model of `config` on the meta device and grow it with `get_peft_model`, exactly as training would.

    Raises UnsupportedArchitectureError for a model that cannot be grown, ValueError for a layer index out of range.
    """
    model = build_meta_model(config)
    # The LoRA comparison targets the blocks of every stack that holds growable MLPs (all layers).
    stacks = {mlp.stack for mlp in find_mlps(model, grow_config.mlp_layout)}
    shape = lora_shape(model, stacks)
    stack_sizes = {stack: len(model.get_submodule(stack)) for stack in sorted(stacks)}
    plan = find_mlps(model, grow_config.mlp_layout, grow_config.layers, grow_config.exclude_modules)
    grown_layers = {
        stack: tuple(sorted({mlp.index for mlp in plan if mlp.stack == stack}))  # a layer may hold experts and an MLP
        for stack in sorted({mlp.stack for mlp in plan})
    }
    mlp_shapes = tuple(sorted({(mlp.hidden, mlp.width, mlp.chunks, mlp.experts) for mlp in plan}))
    peft_model = get_peft_model(model, grow_config, autocast_adapter_dtype=autocast_adapter_dtype)
    return _Growth(
        model_type=str(getattr(config, "model_type", "")),
        model_class=type(model).__name__,
        lora_shape=shape,
        stack_sizes=stack_sizes,
        grown_layers=grown_layers,
        mlp_shapes=mlp_shapes,
        grown_mlps=len(plan),
        summary=peft_model.base_model.growth_summary(),
        buffers=_adapter_counts(peft_model),
    )


def _adapter_dtype(dtype: str, autocast_adapter_dtype: bool) -> str:
    """The dtype of added (and LoRA) weights: float32 under PEFT's autocast_adapter_dtype when the base is 16-bit."""
    return "float32" if autocast_adapter_dtype and dtype != "float32" else dtype


@dataclass(frozen=True)
class _Prices:
    """Training-state memory of a method from its parameter counts: base weights in `dtype`, added ones in
    `adapter_dtype`, gradients in the trained parameters' dtype, two float32 AdamW moments per trained one."""

    dtype: str
    adapter_dtype: str
    base_params: int  # shared tensors (tied embeddings) counted once

    @property
    def base_weight_bytes(self) -> int:
        return self.base_params * DTYPE_BYTES[self.dtype]

    def adapter(self, name: str, added: int, trainable: int, frozen_added: int = 0) -> MethodCost:
        """A method that adds `added` parameters (and `frozen_added` frozen elements) and trains `trainable`."""
        adapter_bytes = DTYPE_BYTES[self.adapter_dtype]
        return MethodCost(
            name=name,
            trainable_params=trainable,
            added_params=added,
            trainable_share=trainable / self.base_params,
            weight_bytes=self.base_weight_bytes + (added + frozen_added) * adapter_bytes,
            gradient_bytes=trainable * adapter_bytes,
            optimizer_bytes=trainable * ADAM_STATE_BYTES,
        )

    def lora(self, shape: LoraShape, rank: int) -> MethodCost:
        return self.adapter(f"LoRA r={rank}", shape.params(rank), shape.params(rank))

    def full(self) -> MethodCost:
        """Full fine-tuning: every base parameter trained, nothing added."""
        return MethodCost(
            name="full fine-tuning",
            trainable_params=self.base_params,
            added_params=0,
            trainable_share=1.0,
            weight_bytes=self.base_weight_bytes,
            gradient_bytes=self.base_weight_bytes,
            optimizer_bytes=self.base_params * ADAM_STATE_BYTES,
        )


def _grow_name(k: int, mode: str, init: str) -> str:
    label = "G-Freeze" if mode == "freeze" else "G-Train"
    return f"{label} k={k}" + (" zero-init" if init == "zero" else "")


def _assumptions(prices: _Prices, autocast_adapter_dtype: bool, shape: LoraShape) -> tuple[str, ...]:
    dtype, adapter_dtype = prices.dtype, prices.adapter_dtype
    return (
        f"Weights: base parameters in {dtype} ({DTYPE_BYTES[dtype]} B each); added grown and LoRA parameters in "
        f"{adapter_dtype} ({DTYPE_BYTES[adapter_dtype]} B each){_adapter_dtype_reason(dtype, autocast_adapter_dtype)}.",
        "Gradients: one per trainable parameter, in that parameter's dtype; frozen weights have none.",
        "AdamW: two float32 moments per trainable parameter (8 B). For full fine-tuning this assumes a "
        "mixed-precision optimizer; a float32 master copy of the weights, where kept, adds 4 B per parameter "
        "(not counted); plain torch AdamW on 16-bit weights keeps 16-bit moments (4 B) instead.",
        f"LoRA: r*(in+out) parameters on each of the {shape.modules} Linear layers of the transformer blocks "
        "(attention and MLP, every layer; embeddings and LM head excluded; biases not trained).",
        "Not counted: activations (batch- and sequence-dependent; k times wider in grown MLPs), temporary "
        "buffers, CUDA context, allocator fragmentation.",
        "Tied parameters (e.g. embeddings shared with the LM head) are counted once.",
    )


def _notes(shape: LoraShape, rank: int, buffers: int) -> tuple[str, ...]:
    notes = []
    if rank > shape.min_dim:
        notes.append(
            f"LoRA r={rank} is above the smallest in/out dimension of some targeted layers ({shape.min_dim}); "
            "on those layers such a rank adds parameters without adding rank, so this row matches the grown "
            "adapter in size, not in expressiveness."
        )
    if buffers:
        notes.append(f"{buffers:,} frozen adapter elements (symmetry noise) are counted in the weights.")
    return tuple(notes)
