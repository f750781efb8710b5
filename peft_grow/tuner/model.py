"""GrowModel: the PEFT tuner that finds the MLPs to grow, wraps their projections, merges and unloads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import (
    BaseTuner,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
)
from torch import nn

from .architectures import find_mlps
from .checking import check_growth_preserves
from .config import GrowConfig
from .experts import GrowExpertsLayer
from .layer import GrowDownLayer, GrowLayer, GrowUpLayer
from .merged import LAYOUTS, make_merged_loadable
from .quantization import bnb_dequantized, dequantized_linear, is_bnb_quantized
from .stores import DOWN, EXPERTS, UP


class GrowCheckpointError(ValueError):
    """An adapter cannot be loaded as written: not safetensors, unreadable, or made for another base model."""


@dataclass(frozen=True)
class GrowthSummary:
    """Parameter counts of a grown model; `trainable_share` is relative to the base model, as in the paper."""

    base_params: int
    added_params: int
    trainable_params: int

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.base_params


def _refuse_saving_grown_modules(config: GrowConfig, grown: list[str]) -> None:
    """A projection that growth widens cannot also be a full trainable copy (modules_to_save): the copy keeps
    the old width, and the MLP around it would be half grown."""
    for entry in config.modules_to_save or []:
        clash = [name for name in grown if name == entry or name.endswith("." + entry)]
        if clash:
            raise ValueError(
                f"GrowConfig.modules_to_save names {entry!r}, which growth widens ({clash[0]}"
                + (f" and {len(clash) - 1} more" if len(clash) > 1 else "")
                + "): a module cannot be both grown and fully trained. Remove it from modules_to_save, or leave "
                "its MLP out of growth with exclude_modules or layers."
            )


class GrowModel(BaseTuner):
    """Grows the MLPs chosen by a `GrowConfig` (see `peft_grow.tuner.config`).

    Use it through PEFT: `get_peft_model(model, GrowConfig(...))`, `PeftModel.from_pretrained(model, path)`.
    """

    prefix = "grow_"
    tuner_layer_cls = GrowLayer
    target_module_mapping: dict[str, list[str]] = {}  # targets come from peft_grow.tuner.architectures instead

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        # The config alone determines which modules grow and in which role (up or down), so we resolve that here,
        # with the model at hand, and hand PEFT the exact module names. A state_dict cannot tell the roles (a
        # G-Train down projection has no tensor in it), so it is not used to pick targets.
        config = self.peft_config[adapter_name]
        # module name -> (role: UP, DOWN or EXPERTS, fused chunks of an up-side projection)
        self._roles: dict[str, tuple[str, int]] = {}
        mlps = find_mlps(model, config.mlp_layout, config.layers, config.exclude_modules)
        if config.check_function:
            check_growth_preserves(model, mlps, config)
        for mlp in mlps:
            if mlp.experts:
                self._roles[mlp.down] = (EXPERTS, 1)
                continue
            self._roles.update({name: (UP, mlp.chunks) for name in mlp.up})
            self._roles[mlp.down] = (DOWN, 1)
        config.target_modules = sorted(self._roles)
        _refuse_saving_grown_modules(config, config.target_modules)
        super().inject_adapter(
            model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, low_cpu_mem_usage=low_cpu_mem_usage
        )

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PEFT upcasts 16-bit adapter weights to float32 here, after injecting and again after loading weights.
        # Float32 copies are master weights for training; an adapter loaded for inference keeps the base's dtype.
        if self.peft_config[adapter_name].inference_mode:
            autocast_adapter_dtype = False
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)

    def _create_and_replace(
        self,
        config: GrowConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        role, chunks = self._roles[current_key]
        if isinstance(target, GrowLayer):
            target.update_layer(adapter_name, config, chunks=chunks)
            return
        layer = {UP: GrowUpLayer, DOWN: GrowDownLayer, EXPERTS: GrowExpertsLayer}[role]
        new_module = layer(target, adapter_name, config, chunks=chunks)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trained until it is activated
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # PEFT's version copies `weight` and `bias` from the wrapper onto the module put back on unloading; an
        # experts module has neither (its 3-D tensors stay on it throughout), so it is only put back in place.
        if isinstance(child, GrowExpertsLayer) and new_module is child.get_base_layer():
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        # PEFT takes the new active adapter from the first tuner layer; an adapter that grows other layers than
        # the deleted one is absent there, which would leave the model with none active. Use PEFT's own rule
        # (the first remaining name) on every layer instead.
        if not self.active_adapters and self.peft_config:
            self.set_adapter(sorted(self.peft_config)[0])

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        # PEFT merges layer by layer; check every layer first so that a broken adapter leaves nothing half-merged.
        if safe_merge:
            self._check_merge(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=False)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """PeftModel.forward and generate enter this, then drop `adapter_names`: without it a mixed batch would run
        every row with the active adapter, silently. Grown adapters give the MLPs their own widths: refuse."""
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                "Grown adapters cannot be mixed in one batch (adapter_names=...): each gives the MLPs its own width. "
                "Run one batch per adapter after set_adapter(name), or use disable_adapter() for the base model."
            )
        yield

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        layout: str | None = "pad",
    ) -> nn.Module:
        """PEFT's merge_and_unload, returning a model whose config describes its wider MLPs.

        layout="pad" (default) also widens the MLPs that were not grown with zero units (exact), so that
        `merged.save_pretrained(d)` reloads with plain `from_pretrained(d)`; "per-layer" keeps each MLP's width and
        records it for `peft_grow.load_merged`; None leaves model and config as merged (see peft_grow.io.export).
        """
        if layout not in (None, *LAYOUTS):  # before anything is merged
            raise ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}.")
        name = adapter_names[0] if adapter_names else self.active_adapters[0]
        config = self.peft_config[name]
        quantized = [n for n, m in self.model.named_modules() if isinstance(m, GrowLayer) and m.quantized]
        merged = super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        if quantized:  # dequantized layers take the dtype of the model's other float weights (its embeddings)
            embeddings = merged.get_input_embeddings() if hasattr(merged, "get_input_embeddings") else None
            dtype = embeddings.weight.dtype if embeddings is not None else torch.float32
            for module_name in quantized:
                merged.get_submodule(module_name).to(dtype)
        if quantized and getattr(merged, "hf_quantizer", None) is not None:
            # a checkpoint with float MLPs and quantized attention would not reload: dequantize the other layers
            # too, so that the merged model is one standard float checkpoint. transformers' dequantize() reads
            # 4-bit weights that bitsandbytes repacked for its CPU kernel wrongly, so the layers are replaced here
            # and only the quantizer's own clean-up of the config is used.
            for module_name, module in list(merged.named_modules()):
                if is_bnb_quantized(module):
                    weight = bnb_dequantized(module).to(dtype)
                    merged.set_submodule(module_name, dequantized_linear(module, weight, module.bias))
            merged.hf_quantizer.remove_quantization_config(merged)
        if layout is not None and isinstance(config, GrowConfig):
            make_merged_loadable(merged, config, layout)
        return merged

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge and safe_merge:
            self._check_merge(adapter_names)
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=False, adapter_names=adapter_names
        )

    def _check_merge(self, adapter_names: list[str] | None) -> None:
        for module in self.model.modules():
            if isinstance(module, GrowLayer):
                module.check_merge(adapter_names)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Map checkpoint keys to the model and refuse, with both shapes, an adapter made for another base."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        model_state = model.state_dict()
        expected = _filter_state_dict_by_key_prefixes(
            model_state, _get_tuner_state_dict_key_prefixes(model, adapter_name)
        )
        base = config.base_model_name_or_path or "the base model it was trained on"
        for key, tensor in remapped.items():
            if key in model_state and tensor.shape != model_state[key].shape:
                raise GrowCheckpointError(
                    f"The adapter does not fit this base model: {key} has shape {tuple(tensor.shape)} in the adapter "
                    f"file, but this model needs {tuple(model_state[key].shape)} (its MLP has another width or "
                    f"hidden size). Load the adapter onto {base}."
                )
        missing = sorted(set(expected) - set(remapped))
        if missing:
            raise GrowCheckpointError(
                f"The adapter file lacks {len(missing)} tensor(s) this model needs, e.g. {missing[0]} (the base has "
                f"more layers, or other module names, than the one the adapter was made for). Load it onto {base}."
            )
        return remapped

    def growth_summary(self) -> GrowthSummary:
        """Base, added and trainable parameter counts (shared tensors, e.g. tied embeddings, counted once)."""
        adapter_keys = _get_tuner_state_dict_key_prefixes(self.model)
        base, added, trainable = 0, 0, 0
        for name, param in self.model.named_parameters():  # each shared tensor once (tied embeddings)
            is_new = bool(_filter_state_dict_by_key_prefixes({name: None}, adapter_keys))
            added += param.numel() if is_new else 0
            base += 0 if is_new else param.numel()
            trainable += param.numel() if param.requires_grad else 0
        return GrowthSummary(base_params=base, added_params=added, trainable_params=trainable)
