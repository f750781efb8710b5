"""GrowConfig: which MLP layers to grow, by how much, and what to train."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from peft.config import PeftConfig

from ._peft_registry import grow_peft_type
from .architectures import MLPLayout
from .growth import INITS  # the init modes, by name

MODES = ("freeze", "train")


@dataclass
class GrowConfig(PeftConfig):
    """Configuration of a grown adapter (*Grow, Don't Overwrite*, arXiv 2603.08647).

    Each chosen MLP is widened k times: the up-side projections gain k-1 copies of their rows and the down
    projection's k column blocks each hold W_down / k, so the grown model starts out computing exactly the
    original function. The experts of a mixture-of-experts block grow the same way, each expert on its own.

    Args:
        layers (`list[int]`, `int` or `None`, defaults to `None`):
            Indices of the decoder layers to grow (negative ones count from the end); `None` grows every layer.
            In an encoder-decoder model an index selects that layer in every stack; use `exclude_modules` to
            leave a stack alone.
        k (`int`, defaults to `2`):
            Growth factor, an integer >= 2: the MLP width becomes k * p.
        mode (`"freeze"` or `"train"`, defaults to `"freeze"`):
            `"freeze"` (G-Freeze, the paper's default) trains only the new rows and columns; `"train"` (G-Train)
            trains the whole up side and freezes the down projection.
        init (`"copy"` or `"zero"`, defaults to `"copy"`):
            `"copy"` (the paper's) copies the pretrained rows; `"zero"` is the Appendix C.2 baseline: fresh new up
            rows, zero new down columns, the original down block unscaled.
        symmetry_noise (`float`, defaults to `0.0`):
            If > 0, the down blocks that start equal get a perturbation whose blocks sum to zero, with this
            standard deviation relative to the blocks' own. It keeps the function at initialisation and lets
            copies that would otherwise stay identical separate (docs/method.md).
        up_modules (`list[str]`, *optional*):
            Regular expressions of the up-side projections, relative to a decoder layer (e.g. `["mlp.fc_in"]`),
            for architectures that are not auto-detected; full module names for an MLP outside numbered layers.
            Give it with `down_modules`.
        down_modules (`list[str]`, *optional*):
            Regular expressions of the down projection, as `up_modules` (e.g. `["mlp.fc_out"]`).
        fused_up_chunks (`int`, *optional*):
            How many projections a fused up-side module stacks (2 for a `gate_up_proj` that the model splits with
            `chunk(2)`); only with `up_modules`.
        exclude_modules (`list[str]` or `str`, *optional*):
            Modules not to grow, with PEFT's semantics (a list of names or name suffixes, or a regex); excluding
            any module of an MLP leaves that whole MLP alone.
        modules_to_save (`list[str]`, *optional*):
            As in PEFT: modules trained in full and saved with the adapter (a classification head, say).
        trainable_token_indices (`list[int]` or `dict[str, list[int]]`, *optional*):
            As in PEFT: embedding rows to train (added special tokens); TRL reads it too.
        init_weights (`bool`, defaults to `True`):
            `True` for the function-preserving start; `False` perturbs the new weights so that the adapter is not
            an identity (for tests, as other PEFT tuners do).
        check_function (`bool`, defaults to `True`):
            Before growing, run each MLP (and each experts module) on a small random input as it is and as grown
            at its function-preserving start, and refuse the adapter if the outputs differ beyond rounding (work
            between up and down that is not elementwise). `False` skips it, for users who know their model.
        target_modules (`list[str]`, *optional*):
            Filled in by the tuner with the exact names of the grown modules; do not set it.
    """

    layers: list[int] | int | None = field(
        default=None,
        metadata={"help": "Indices of the decoder layers to grow (negative from the end); None grows every layer."},
    )
    k: int = field(default=2, metadata={"help": "Growth factor, an integer >= 2: the MLP width becomes k times p."})
    mode: Literal["freeze", "train"] = field(
        default="freeze",
        metadata={"help": "'freeze' trains only the new rows and columns; 'train' trains the whole up side."},
    )
    init: Literal["copy", "zero"] = field(
        default="copy",
        metadata={"help": "'copy' copies the pretrained rows; 'zero' starts new down columns at zero."},
    )
    symmetry_noise: float = field(
        default=0.0,
        metadata={"help": "Scale of a zero-sum perturbation of the down blocks that start equal (0 for none)."},
    )
    up_modules: list[str] | None = field(
        default=None, metadata={"help": "Regexes of the up-side projections, relative to a decoder layer."}
    )
    down_modules: list[str] | None = field(
        default=None, metadata={"help": "Regexes of the down projection, relative to a decoder layer."}
    )
    fused_up_chunks: int | None = field(
        default=None, metadata={"help": "How many projections a fused up-side module stacks (with up_modules)."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules not to grow: names or name suffixes, or a regex."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter, as in PEFT."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None, metadata={"help": "Embedding rows to train, as in PEFT's trainable tokens."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "False perturbs the new weights so that the adapter is not an identity."}
    )
    check_function: bool = field(
        default=True, metadata={"help": "Check numerically that each grown MLP starts out computing its function."}
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Filled in by the tuner with the grown modules' names; do not set it."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = grow_peft_type()
        self._validate()

    def _validate(self) -> None:
        """Check every field, normalising the shorthand forms (an int for `layers`, a string for a module list)."""
        self._validate_layers()
        self._validate_growth()
        self._validate_symmetry_noise()
        self._validate_mlp_modules()
        self._validate_fused_up_chunks()
        self._warn_if_noise_has_no_effect()

    def _validate_layers(self) -> None:
        """None, or a non-empty list of distinct ints (an int or a tuple becomes a list)."""
        layers = self.layers
        if isinstance(layers, bool) or not (
            layers is None
            or isinstance(layers, int)
            or (isinstance(layers, (list, tuple)) and all(_is_int(i) for i in layers))
        ):
            raise ValueError(f"GrowConfig.layers must be None (all layers), an int or a list of ints, got {layers!r}.")
        if layers is None:
            return
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        if not self.layers:
            raise ValueError("GrowConfig.layers is an empty list; pass None to grow every layer.")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"GrowConfig.layers has repeated indices: {self.layers}; list each layer once.")

    def _validate_growth(self) -> None:
        """k, mode and init."""
        if not _is_int(self.k) or self.k < 2:
            raise ValueError(f"GrowConfig.k must be an integer >= 2 (the width becomes k*p), got {self.k!r}.")
        if self.mode not in MODES:
            raise ValueError(f"GrowConfig.mode must be one of {MODES}, got {self.mode!r}.")
        if self.init not in INITS:
            raise ValueError(f"GrowConfig.init must be one of {tuple(INITS)}, got {self.init!r}.")

    def _validate_symmetry_noise(self) -> None:
        if isinstance(self.symmetry_noise, bool) or not isinstance(self.symmetry_noise, (int, float)):
            raise ValueError(f"GrowConfig.symmetry_noise must be a number >= 0, got {self.symmetry_noise!r}.")
        if not self.symmetry_noise >= 0:
            raise ValueError(f"GrowConfig.symmetry_noise must be >= 0, got {self.symmetry_noise!r}.")

    def _validate_mlp_modules(self) -> None:
        """up_modules and down_modules: both or neither, each a non-empty list of strings (a string becomes one)."""
        if (self.up_modules is None) != (self.down_modules is None):
            raise ValueError(
                "GrowConfig.up_modules and down_modules go together: got "
                f"up_modules={self.up_modules!r}, down_modules={self.down_modules!r}. Pass both or neither."
            )
        for name in ("up_modules", "down_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif value is not None and (not value or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"GrowConfig.{name} must be a non-empty list of strings, got {value!r}.")

    def _validate_fused_up_chunks(self) -> None:
        if self.fused_up_chunks is None:
            return
        if self.up_modules is None:
            raise ValueError(
                "GrowConfig.fused_up_chunks only applies with up_modules/down_modules; auto-detected "
                "architectures know their own layout."
            )
        if not _is_int(self.fused_up_chunks) or self.fused_up_chunks < 1:
            raise ValueError(f"GrowConfig.fused_up_chunks must be an int >= 1, got {self.fused_up_chunks!r}.")

    def _warn_if_noise_has_no_effect(self) -> None:
        if self.symmetry_noise > 0 and not self.has_equal_down_blocks:
            warnings.warn(
                f"GrowConfig.symmetry_noise={self.symmetry_noise} has no effect with mode={self.mode!r}, "
                f"init={self.init!r}, k={self.k}: no trained copies start out equal there.",
                stacklevel=4,  # the caller of GrowConfig(...)
            )

    @property
    def mlp_layout(self) -> MLPLayout | None:
        """The MLP layout that up_modules/down_modules name, or None for the model's own."""
        if self.up_modules is None:
            return None
        return MLPLayout(
            up=tuple(self.up_modules), down=tuple(self.down_modules), fused_up_chunks=self.fused_up_chunks or 1
        )

    @property
    def has_equal_down_blocks(self) -> bool:
        """True where several copies start equal and would stay equal under training (docs/method.md)."""
        if not INITS[self.init].equal_down_blocks:
            return False
        return self.mode == "train" or self.k >= 3

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write adapter_config.json, then run `FOLDER_HOOKS.after_save` (peft_grow.io: the model card)."""
        super().save_pretrained(save_directory, **kwargs)
        if FOLDER_HOOKS.after_save is not None:
            FOLDER_HOOKS.after_save(save_directory, self)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> GrowConfig:
        """Load the config, then run `FOLDER_HOOKS.before_load` (peft_grow.io: a missing or damaged weights file is
        refused here; PEFT would take a local folder without one for a Hub id, and fail on a damaged one with a bare
        deserialisation error)."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if FOLDER_HOOKS.before_load is not None:
            FOLDER_HOOKS.before_load(pretrained_model_name_or_path, subfolder)
        return config


@dataclass
class FolderHooks:
    """What runs beside GrowConfig's save_pretrained and from_pretrained, registered from above the tuner.

    When PEFT saves or loads an adapter folder, the only code of a tuner's it calls with the folder is its config's
    save_pretrained (after PeftModel writes the model card) and from_pretrained (between reading
    adapter_config.json and reading the weights). peft_grow.io, which imports the tuner, registers the model
    card and the check of the weights file here; the tuner alone imports nothing above it and saves and loads
    as any PeftConfig.
    """

    after_save: Callable[[str, GrowConfig], None] | None = None  # (folder, config)
    before_load: Callable[[str, str | None], None] | None = None  # (path or Hub id, subfolder)


FOLDER_HOOKS = FolderHooks()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
