"""Where the MLP of each architecture lives: its up-side and down projections, per `model_type`.

A module name splits at its first all-digit segment into the layer stack, the layer index and the path
inside the layer: `model.layers.3.mlp.up_proj` -> (`model.layers`, 3, `mlp.up_proj`). Each architecture is
one `MLPLayout` line naming, by regular expressions on that inner path, the up-side projections (all that
map hidden -> width and feed only elementwise work) and the down projection (width -> hidden).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .experts import experts_layout, experts_shape
from .paths import run_watching
from .quantization import unsupported_quantization
from .tensors import PROJECTIONS, linear_shape

ANY_STACK = r".+"  # any layer list


@dataclass(frozen=True)
class MLPLayout:
    """Regexes (relative to a decoder layer) of an MLP's projections."""

    up: tuple[str, ...]
    down: tuple[str, ...]
    fused_up_chunks: int = 1  # a fused up module whose output the model splits with chunk(n)
    stack: str = ANY_STACK  # regex the path to the layer list must match (to skip e.g. a vision tower)
    width_key: str | None = "intermediate_size"  # the config attribute holding the width p (dotted if nested)


GATED = MLPLayout(up=(r"mlp\.gate_proj", r"mlp\.up_proj"), down=(r"mlp\.down_proj",))
UP_DOWN = MLPLayout(up=(r"mlp\.up_proj",), down=(r"mlp\.down_proj",))
FUSED_GATE_UP = MLPLayout(up=(r"mlp\.gate_up_proj",), down=(r"mlp\.down_proj",), fused_up_chunks=2)
C_FC = MLPLayout(up=(r"mlp\.c_fc",), down=(r"mlp\.c_proj",), width_key="n_inner")
FC_IN_OUT = MLPLayout(up=(r"mlp\.fc_in",), down=(r"mlp\.fc_out",), width_key="n_inner")

ARCHITECTURES: dict[str, MLPLayout] = {
    # gate_proj / up_proj -> act(gate) * up -> down_proj
    "llama": GATED,
    "mistral": GATED,
    "qwen2": GATED,
    "qwen3": GATED,
    "gemma": GATED,
    "gemma2": GATED,
    "gemma3_text": GATED,
    "gemma3": MLPLayout(
        up=GATED.up,
        down=GATED.down,
        stack=r"(.+\.)?language_model\.layers",
        width_key="text_config.intermediate_size",
    ),
    "olmo": GATED,
    "olmo2": GATED,
    "stablelm": GATED,
    "granite": GATED,
    "cohere": GATED,
    "cohere2": GATED,
    "helium": GATED,
    # up_proj -> act -> down_proj
    "nemotron": UP_DOWN,
    "arcee": UP_DOWN,
    # fused gate_up_proj, split with chunk(2)
    "phi3": FUSED_GATE_UP,
    "glm": FUSED_GATE_UP,
    "glm4": FUSED_GATE_UP,
    # single up projection under other names
    "gpt2": C_FC,  # Conv1D
    "gpt_bigcode": C_FC,
    "starcoder2": MLPLayout(up=C_FC.up, down=C_FC.down),
    "gpt_neox": MLPLayout(up=(r"mlp\.dense_h_to_4h",), down=(r"mlp\.dense_4h_to_h",)),
    "opt": MLPLayout(up=(r"fc1",), down=(r"fc2",), width_key="ffn_dim"),
    "phi": MLPLayout(up=(r"mlp\.fc1",), down=(r"mlp\.fc2",)),
    "gptj": FC_IN_OUT,
    "codegen": FC_IN_OUT,
    # single up projection in a Sequential (Linear, ReLU, Linear), or in a stack of its own
    "ctrl": MLPLayout(up=(r"ffn\.0",), down=(r"ffn\.2",), width_key="dff"),
    "xlm": MLPLayout(up=(r"lin1",), down=(r"lin2",), stack=r"transformer\.ffns", width_key=None),
    # fused input/gate projection: input, gate = Wi(x).chunk(2)
    "modernbert-decoder": MLPLayout(up=(r"mlp\.Wi",), down=(r"mlp\.Wo",), fused_up_chunks=2),
    # encoders: intermediate.dense -> act; output.dense -> dropout -> LayerNorm(residual + ...)
    "bert": MLPLayout(up=(r"intermediate\.dense",), down=(r"output\.dense",)),
    "roberta": MLPLayout(up=(r"intermediate\.dense",), down=(r"output\.dense",)),
    # T5 (wi) and gated T5 v1.1 (wi_0, wi_1), in both the encoder and the decoder stack
    "t5": MLPLayout(
        up=(r"layer\.\d+\.DenseReluDense\.wi(_[01])?",),
        down=(r"layer\.\d+\.DenseReluDense\.wo",),
        width_key="d_ff",
    ),
}

# Shapes recognised by name inside a layer for model types without a table line, tried in this order; the first that
# finds a well-formed MLP (shapes that pair up) in every layer it touches is used, and growth's self-check
# (peft_grow.tuner.checking) guards what names cannot show. Anything may precede the names inside a layer ("mlp.",
# "feed_forward.", "ffn."), except where the name alone would also match an attention module.
_ANY = r"(?:.+\.)?"
STRUCTURES: tuple[MLPLayout, ...] = (
    MLPLayout(up=(_ANY + "gate_proj", _ANY + "up_proj"), down=(_ANY + "down_proj",)),
    MLPLayout(up=(_ANY + "gate_up_proj",), down=(_ANY + "down_proj",), fused_up_chunks=2),
    MLPLayout(up=(_ANY + "up_proj",), down=(_ANY + "down_proj",)),
    MLPLayout(up=(_ANY + "w1", _ANY + "w3"), down=(_ANY + "w2",)),
    MLPLayout(up=(_ANY + r"c_fc",), down=(_ANY + r"mlp\.c_proj",)),
    MLPLayout(up=(_ANY + "fc_in",), down=(_ANY + "fc_out",)),
    MLPLayout(up=(_ANY + "fc1",), down=(_ANY + "fc2",)),
    MLPLayout(up=(_ANY + "dense_h_to_4h",), down=(_ANY + "dense_4h_to_h",)),
    MLPLayout(up=(r"intermediate\.dense",), down=(r"output\.dense",)),
    MLPLayout(up=(_ANY + r"wi(_[01])?",), down=(_ANY + "wo",)),
)
WIDTH_KEYS = ("intermediate_size", "ffn_hidden_size", "ffn_dim", "d_ff", "n_inner", "decoder_ffn_dim")

_MOE = (
    "its experts are stored in a layout of their own, not in transformers' standard fused experts module "
    "(gate_up_proj / down_proj marked by use_experts_implementation), which is what peft-grow widens"
)
REFUSED: dict[str, str] = {
    **{
        name: _MOE
        for name in (
            "dbrx",
            "jetmoe",
        )
    },
    **{
        name: "its MLP applies activation sparsity (a cut-off computed across the whole width) between up and "
        "down, which is not elementwise, so copies of units would not stay equivalent"
        for name in ("gemma3n", "gemma3n_text")  # gemma3n_text: what AutoModelForCausalLM builds
    },
}


class UnsupportedArchitectureError(ValueError):
    """The model's MLPs cannot be grown as configured."""


@dataclass(frozen=True)
class GrownMLP:
    """One MLP to grow: its module names, hidden size h and width p. A fused experts module (`experts` > 0, the
    number of experts) is one MLP whose up and down names are both the module's; p is each expert's width."""

    stack: str
    index: int
    up: tuple[str, ...]
    down: str
    hidden: int
    width: int
    chunks: int
    experts: int = 0


UNNUMBERED = -1  # the layer index of an MLP outside any numbered stack (custom models); grown only with layers=None


def split_module_name(name: str) -> tuple[str, int, str] | None:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]), int(part), ".".join(parts[i + 1 :])
    return None


def _projections(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear/Conv1D by name, seen through tuner wrappers (a wrapped module counts as its base layer)."""
    found = {}
    for name, module in model.named_modules():
        if name.endswith(".base_layer") or ".base_layer." in name:
            continue
        message = unsupported_quantization(module, name)
        if message is not None:
            raise UnsupportedArchitectureError(message)
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if isinstance(base, PROJECTIONS):
            _refuse_merged(name, module)
            found[name] = base
    return found


def _refuse_merged(name: str, module: nn.Module) -> None:
    """A module with a merged adapter is already wide: its shapes are not the base model's."""
    if getattr(module, "merged", False):
        raise UnsupportedArchitectureError(
            f"{name} has a merged adapter, so its width is not the base model's. Call unmerge_adapter() before "
            "adding another grown adapter."
        )


def resolve_layout(model: nn.Module, layout: MLPLayout | None = None) -> MLPLayout:
    """`layout` if given (GrowConfig.up_modules/down_modules), else the model's: from its `model_type`, or
    detected from its module names."""
    if layout is not None:
        return layout
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in REFUSED:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} cannot be grown: {REFUSED[model_type]}. Growing it would silently "
            "change the model's function; fine-tune this model with another PEFT method, such as LoRA."
        )
    if model_type not in ARCHITECTURES and (detected := detect_layout(model)) is not None:
        return detected
    if model_type not in ARCHITECTURES and _experts_modules(model, ANY_STACK):
        return MLPLayout(up=(), down=(), width_key=None)  # experts only (Mixtral, OLMoE, ...): no dense MLP
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"peft-grow does not know the MLP layout of model_type {model_type!r}. "
            + _linear_names_hint(model)
            + " Pass GrowConfig(up_modules=[...], down_modules=[...]) with regexes of the up-side and down "
            "projections relative to a layer, e.g. up_modules=['mlp.fc_in'], down_modules=['mlp.fc_out'] "
            "(and fused_up_chunks=2 for a fused gate/up projection), or add a line to "
            "peft_grow.tuner.architectures.ARCHITECTURES."
        )
    return ARCHITECTURES[model_type]


def detect_layout(model: nn.Module) -> MLPLayout | None:
    """The first of STRUCTURES that finds well-formed MLPs in the model's numbered layers, or None. In a model with
    several stacks of layers, only those a text input reaches count (the language model, not a vision or audio
    tower), and the layout's `stack` names them."""
    modules = _projections(model)
    language = _language_stacks(model, modules)
    for layout in STRUCTURES:
        groups = [group for group in _group(modules, layout, False) if language is None or group[0] in language]
        if groups and all(_well_formed(names, modules, layout.fused_up_chunks) for _, _, names in groups):
            stacks = sorted({stack for stack, _, _ in groups})
            return MLPLayout(
                layout.up,
                layout.down,
                layout.fused_up_chunks,
                stack=ANY_STACK if language is None else "|".join(map(re.escape, stacks)),
                width_key=_width_key(model, linear_shape(modules[groups[0][2]["down"][0]])[0]),
            )
    return None


def _language_stacks(model: nn.Module, modules: dict[str, nn.Module]) -> set[str] | None:
    """The numbered stacks of projections that run on a text input, where the model has several (None where it has
    one: nothing to tell apart). Refuses, listing them, where the model cannot be run to tell."""
    stacks = defaultdict(list)
    for name in modules:
        if (split := split_module_name(name)) is not None:
            stacks[split[0]].append(name)
    if len(stacks) < 2:
        return None
    run = run_watching(model, modules)
    if run is None:
        raise UnsupportedArchitectureError(
            f"The model has {len(stacks)} stacks of layers ({', '.join(sorted(stacks))}) and peft-grow could not "
            "run it on a text input to tell which belong to the language model (its weights are on the meta "
            "device, sharded, or its forward needs more than token ids). Load it with its weights, or name the MLPs "
            "to grow with GrowConfig(up_modules=[...], down_modules=[...]) and leave the other stacks out with "
            "exclude_modules (a regex such as '.*vision.*')."
        )
    return {stack for stack, names in stacks.items() if run.reached.intersection(names)}


def _well_formed(names: dict[str, list[str]], modules: dict, chunks: int) -> bool:
    try:
        _check_mlp("", 0, names, modules, chunks)
    except UnsupportedArchitectureError:
        return False
    return True


def _width_key(model: nn.Module, width: int) -> str | None:
    """The config attribute that holds the MLP width (for merged checkpoints' configs): one equal to `width` if
    any, else the first of WIDTH_KEYS the config sets (a merged model's MLPs are already wider); None if none."""
    config = getattr(model, "config", None)
    found = [
        (prefix + key, getattr(node, key))
        for prefix, node in (("", config), ("text_config.", getattr(config, "text_config", None)))
        for key in WIDTH_KEYS
        if node is not None and isinstance(getattr(node, key, None), int)
    ]
    return next((key for key, value in found if value == width), found[0][0] if found else None)


def _linear_names_hint(model: nn.Module) -> str:
    per_layer = defaultdict(list)
    for name in _projections(model):
        split = split_module_name(name)
        if split is not None:
            per_layer[(split[0], split[1])].append(split[2])
    if not per_layer:
        return "It has no numbered layers with Linear modules."
    (stack, index), names = next(iter(per_layer.items()))
    return f"Linear layers found in layer {index} of {stack!r}: {', '.join(names)}."


def _group(modules: dict[str, nn.Module], layout: MLPLayout, explicit: bool) -> list[tuple[str, int, dict]]:
    """Up-side and down projection names of each MLP, as (layer stack, index, names); with `explicit` (regexes from
    the user), also MLPs outside numbered layers, matched by full name and keyed by their parent module. A layer
    with several MLPs (LongCat-Flash's `mlps.0` and `mlps.1`) gives one entry per MLP."""
    groups: dict[tuple[str, int], dict[str, list[str]]] = defaultdict(lambda: {"up": [], "down": []})
    for name in modules:
        split = split_module_name(name)
        if split is None and explicit:  # a custom model's MLP outside any numbered stack: regexes of full names
            split = (name.rpartition(".")[0], UNNUMBERED, name)
        elif split is None or not re.fullmatch(layout.stack, split[0]):
            continue
        stack, index, inner = split
        if any(re.fullmatch(p, inner) for p in layout.up):
            groups[(stack, index)]["up"].append(name)
        elif any(re.fullmatch(p, inner) for p in layout.down):
            groups[(stack, index)]["down"].append(name)
    if not explicit:  # names alone also match e.g. an attention output gate (`self_attn.gate_proj`) beside the MLP
        for names in groups.values():  # an MLP's projections are siblings where any are (not in BERT)
            down = names["down"][0] if len(names["down"]) == 1 else None
            names["up"] = [up for up in names["up"] if _parent(up) == _parent(down or "")] or names["up"]
    return [(stack, index, mlp) for (stack, index), names in groups.items() for mlp in _sibling_mlps(names)]


def _sibling_mlps(names: dict[str, list[str]]) -> list[dict[str, list[str]]]:
    """A layer's projections as one MLP, or as one MLP per parent module where it has several down projections,
    each with sibling up-side projections (and no other up-side projection left over)."""
    downs = names["down"]
    parents = {_parent(down) for down in downs}
    if len(downs) < 2 or len(parents) < len(downs) or any(_parent(up) not in parents for up in names["up"]):
        return [names]
    return [{"up": [up for up in names["up"] if _parent(up) == _parent(down)], "down": [down]} for down in downs]


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def find_mlps(
    model: nn.Module,
    layout: MLPLayout | None = None,
    layers: list[int] | None = None,
    exclude: list[str] | str | None = None,
) -> list[GrownMLP]:
    """The MLPs of `model` that growth would widen, checking layer indices and shapes.

    `layout` is where the MLP's projections are (None: the model's own, from ARCHITECTURES or detected);
    `layers` the indices in each numbered stack (None: every layer, and MLPs outside numbered stacks);
    `exclude` PEFT-style module names or a regex to leave out. `GrowConfig` passes its `mlp_layout`, `layers`
    and `exclude_modules`. Raises UnsupportedArchitectureError (or ValueError for bad indices) with what was
    expected, what was found and what to do.
    """
    explicit = layout is not None
    layout = resolve_layout(model, layout)
    modules = _projections(model)
    groups = _group(modules, layout, explicit)
    experts = _experts_modules(model, layout.stack)
    if not groups and not experts:
        raise UnsupportedArchitectureError(
            f"No module matches up={list(layout.up)} / down={list(layout.down)} inside numbered layers"
            + (" or by its full name" if explicit else "")
            + ". "
            + _linear_names_hint(model)
            + " Check GrowConfig.up_modules / down_modules (regexes relative to a layer, or full module names for "
            "an MLP outside numbered layers)."
        )
    keys = [(stack, index) for stack, index, _ in groups] + list(experts)
    _refuse_fused_experts(model, {f"{s}.{i}" for s, i in keys}, set(experts.values()))

    layer_counts = _layer_counts(model, {stack for stack, index in keys if index != UNNUMBERED})
    if layers is not None and not layer_counts:
        where = groups[0][0] or "the model itself"
        raise ValueError(
            f"GrowConfig.layers={layers} selects numbered layers, but the MLPs found ({where}) are outside "
            "any numbered stack of layers. Use layers=None to grow them."
        )
    chosen = _choose_layers(layers, layer_counts)
    found = []
    for stack, index, names in sorted(groups, key=lambda group: (group[0], group[1], group[2]["down"])):
        selected = layers is None if index == UNNUMBERED else index in chosen[stack]
        if not selected or _is_excluded(exclude, names["up"] + names["down"]):
            continue
        found.append(_check_mlp(stack, index, names, modules, layout.fused_up_chunks))
    for (stack, index), name in sorted(experts.items()):
        if index in chosen[stack] and not _is_excluded(exclude, [name]):
            found.append(_experts_mlp(model, stack, index, name))
    if not found:
        unnumbered = " (MLPs outside numbered layers are grown only with layers=None)" if not layer_counts else ""
        raise ValueError(
            f"GrowConfig(layers={layers}, exclude_modules={exclude!r}) leaves no MLP to "
            f"grow{unnumbered}. Select at least one layer that is not excluded."
        )
    return found


def _experts_modules(model: nn.Module, stack: str) -> dict[tuple[str, int], str]:
    """The fused experts module (peft_grow.tuner.experts) of each numbered layer that has one, seen through a grown
    layer's wrapper, by (layer stack, index)."""
    found = {}
    for name, module in model.named_modules():
        if name.endswith(".base_layer") or ".base_layer." in name:
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        split = split_module_name(name)
        if split is None or experts_layout(base) is None or not re.fullmatch(stack, split[0]):
            continue
        _refuse_merged(name, module)
        if (split[0], split[1]) in found:
            raise UnsupportedArchitectureError(
                f"Layer {split[1]} of {split[0]!r} has two experts modules, {found[(split[0], split[1])]} and {name}; "
                "peft-grow grows one per layer. Leave one out with exclude_modules."
            )
        found[(split[0], split[1])] = name
    return found


def _experts_mlp(model: nn.Module, stack: str, index: int, name: str) -> GrownMLP:
    module = model.get_submodule(name)
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    layout = experts_layout(base)
    count, hidden, width = experts_shape(base, layout)
    return GrownMLP(stack, index, (name,), name, hidden, width, layout.chunks, experts=count)


def _refuse_fused_experts(model: nn.Module, layer_prefixes: set[str], known: set[str]) -> None:
    """Mixture-of-experts weights stored as 3-D parameters outside transformers' standard experts module (`known`,
    grown by peft_grow.tuner.experts) cannot be widened; other 3-D parameters (a Mamba block's conv1d) are not part of
    any MLP."""
    for name, param in model.named_parameters():
        if ".grow_" in name:  # a grown adapter's own tensors (a second adapter is being added)
            continue
        split = split_module_name(name)
        inside = split is not None and f"{split[0]}.{split[1]}" in layer_prefixes
        owner = name.rpartition(".")[0].removesuffix(".base_layer")
        if param.ndim == 3 and inside and "expert" in split[2].lower() and owner not in known:
            raise UnsupportedArchitectureError(
                f"{name} is a 3-D parameter of shape {tuple(param.shape)} holding mixture-of-experts weights outside "
                "transformers' standard fused experts module (gate_up_proj / down_proj marked by "
                "use_experts_implementation), which is what peft-grow widens; growing experts stored this way is not "
                "supported. Fine-tune this model with another PEFT method (LoRA's target_parameters reaches 3-D "
                "expert weights)."
            )


def _layer_counts(model: nn.Module, stacks: set[str]) -> dict[str, int]:
    counts = {}
    for stack in stacks:
        container = model.get_submodule(stack)
        counts[stack] = len(container) if isinstance(container, (nn.ModuleList, nn.Sequential)) else 0
    return counts


def _choose_layers(layers: list[int] | None, counts: dict[str, int]) -> dict[str, set[int]]:
    if layers is None:
        return {stack: set(range(n)) for stack, n in counts.items()}
    chosen = {stack: {i % n for i in layers if -n <= i < n} for stack, n in counts.items()}
    outside = [i for i in layers if not any(-n <= i < n for n in counts.values())]
    if outside:
        sizes = ", ".join(f"{stack!r} has {n} (indices 0..{n - 1})" for stack, n in sorted(counts.items()))
        raise ValueError(
            f"GrowConfig.layers={layers}: index {outside} is out of range; {sizes}. Use indices inside that range "
            "(negative ones count from the end), or layers=None to grow every layer."
        )
    return chosen


def _is_excluded(exclude: list[str] | str | None, names: list[str]) -> bool:
    """PEFT's `exclude_modules` semantics: a regex (fullmatch) or a list of names or name suffixes."""
    if not exclude:
        return False
    if isinstance(exclude, str):
        return any(re.fullmatch(exclude, name) for name in names)
    return any(name == e or name.endswith(f".{e}") for name in names for e in exclude)


def _check_mlp(stack: str, index: int, names: dict, modules: dict, chunks: int) -> GrownMLP:
    where = f"layer {index} of {stack!r}"
    if not names["up"] or len(names["down"]) != 1:
        raise UnsupportedArchitectureError(
            f"Expected one or more up-side projections and exactly one down projection in {where}, found "
            f"up={names['up']}, down={names['down']}. Check GrowConfig.up_modules / down_modules."
        )
    down = names["down"][0]
    width, _ = linear_shape(modules[down])
    inputs = {linear_shape(modules[up])[0] for up in names["up"]}
    for up in names["up"]:
        up_in, up_out = linear_shape(modules[up])
        if up_out != chunks * width or len(inputs) > 1:
            raise UnsupportedArchitectureError(
                f"{up} maps {up_in} -> {up_out} but the down projection {down} takes {width} features; expected "
                f"every up-side projection to map the same input to {chunks}*{width}. The modules named are not "
                "one MLP's up and down projections"
                + (" (or set fused_up_chunks for a fused gate/up projection)." if up_out % width == 0 else ".")
            )
    hidden = inputs.pop()  # the MLP's input width; its output width (the down projection's) may differ
    return GrownMLP(stack, index, tuple(names["up"]), down, hidden, width, chunks)
