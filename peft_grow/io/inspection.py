"""Check a saved grown adapter against its own config, reading only the safetensors header.

Used by `peft-grow inspect`: no base model is needed, no tensor data is read, nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field

from ..tuner.architectures import ARCHITECTURES, STRUCTURES, split_module_name
from ..tuner.config import INITS, MODES
from ..tuner.stores import DOWN, EXPERTS, ROLES, UP, filled_stores
from .checkpoint import ADAPTER_WEIGHTS, GrowCheckpointError, check_adapter_weights

ADAPTER_CONFIG = "adapter_config.json"


def format_indices(indices: list[int] | tuple[int, ...]) -> str:
    """`0-3,7,9` from [0, 1, 2, 3, 7, 9]."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


_STATE_PREFIX = "base_model.model."


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass
class AdapterReport:
    """What `inspect` found in an adapter folder; `problems` is empty when the adapter is consistent."""

    folder: str
    config: dict
    tensors: list[TensorInfo]
    file_bytes: int
    roles: dict[str, str] = field(default_factory=dict)  # target module -> "up" | "down" | "?"
    extra_tensors: list[str] = field(default_factory=list)  # modules_to_save / trainable tokens
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def read_safetensors_header(path: str) -> list[TensorInfo]:
    """Names, dtypes, shapes and byte sizes from a safetensors header; no tensor data is read, nothing is
    unpickled. Call `check_adapter_weights` first: it reports damaged files clearly."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        infos.append(TensorInfo(name=name, dtype=entry["dtype"], shape=tuple(entry["shape"]), nbytes=end - start))
    return sorted(infos, key=lambda info: info.name)


def load_adapter(folder: str) -> AdapterReport:
    """Read an adapter folder's config and weights header; GrowCheckpointError / OSError if unreadable."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder (expected an adapter folder written by save_pretrained).")
    config_path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(config_path):
        raise GrowCheckpointError(f"{folder} has no {ADAPTER_CONFIG}; it is not a PEFT adapter folder.")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GrowCheckpointError(f"{config_path} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise GrowCheckpointError(f"{config_path} holds a JSON {type(config).__name__}, expected an object.")
    check_adapter_weights(folder)
    weights = os.path.join(folder, ADAPTER_WEIGHTS)
    return AdapterReport(
        folder=folder, config=config, tensors=read_safetensors_header(weights), file_bytes=os.path.getsize(weights)
    )


def inspect_adapter(folder: str) -> AdapterReport:
    """Load an adapter folder and check it against its own config (see `check_adapter`)."""
    report = load_adapter(folder)
    check_adapter(report)
    return report


def _role_patterns(config: dict) -> list[tuple[str, str, int]]:
    """(regex, role, fused chunks) from the config's up/down_modules, else from every known architecture."""
    if config.get("up_modules") and config.get("down_modules"):
        chunks = config.get("fused_up_chunks") or 1
        return [(p, UP, chunks) for p in config["up_modules"]] + [(p, DOWN, 1) for p in config["down_modules"]]
    patterns = []
    for layout in (*ARCHITECTURES.values(), *STRUCTURES):  # table lines, then the shapes detected by name
        patterns += [(p, UP, layout.fused_up_chunks) for p in layout.up] + [(p, DOWN, 1) for p in layout.down]
    return patterns


def _role(module: str, patterns: list[tuple[str, str, int]]) -> tuple[str, int] | None:
    split = split_module_name(module)
    if split is None:
        return None
    for pattern, role, chunks in patterns:
        if re.fullmatch(pattern, split[2]):
            return role, chunks
    return None


def _tensor_module(name: str, targets: list[str]) -> tuple[str | None, str]:
    """(target module, grow kind) of a tensor name; the module is None when no target matches."""
    module, _, kind = name.rpartition(".grow_")
    module = module.removeprefix(_STATE_PREFIX)
    if module in targets:
        return module, kind
    matches = [t for t in targets if module.endswith("." + t) or t.endswith("." + module)]
    return (matches[0] if len(matches) == 1 else None), kind


@dataclass(frozen=True)
class _Settings:
    """The config fields that decide which tensors each grown module holds, as read (possibly invalid)."""

    k: object
    mode: object
    init: object
    noise: bool  # G-Train from copies with symmetry noise: the down projection stores grow_noise

    @property
    def valid_k(self) -> bool:
        return isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 2

    @property
    def known(self) -> bool:
        """Whether mode and init are valid, so that the expected tensors are known."""
        return self.mode in MODES and self.init in INITS

    @property
    def label(self) -> str:
        return f"mode={self.mode!r}, init={self.init!r}"

    def expected_kinds(self, role: str) -> tuple[set[str], set[str]]:
        """(required, allowed) grow tensor kinds of a module of `role`: the stores its layer fills without and with
        a bias on the up side (`filled_stores`); the adapter does not record whether the base has one."""
        required, allowed = (
            {_kind(store) for store in filled_stores(role, self.mode, self.init, noise=self.noise, bias=bias)}
            for bias in (False, True)
        )
        return required, allowed


@dataclass
class _GrownModules:
    """The grown modules by role: MLPs by layer (up-side and down projections), and fused experts modules."""

    mlps: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    chunks: dict[str, int] = field(default_factory=dict)  # up-side / down projection -> fused up chunks
    experts: set[str] = field(default_factory=set)

    def layers(self) -> set[tuple[str, int]]:
        """(layer stack, index) of every grown layer, experts included."""
        experts = (split_module_name(module) for module in self.experts)
        return set(self.mlps) | {(split[0], split[1]) for split in experts if split is not None}


def _kind(store: str) -> str:
    """The tensor kind a layer store saves under: grow_new_weight -> new_weight."""
    return store.removeprefix("grow_")


#: every grow tensor kind that some grown layer saves for some settings
GROW_KINDS = frozenset(
    _kind(store)
    for role in ROLES
    for mode in MODES
    for init in INITS
    for store in filled_stores(role, mode, init, noise=True, bias=True)
)


def check_adapter(report: AdapterReport) -> None:
    """Check that the adapter's tensors are those its config produces, with shapes consistent with k.

    Checked without the base model: peft_type is GROW and k, mode, init are valid; every tensor belongs to a
    grown module (`target_modules`) and is a grow tensor (other tensors only with modules_to_save or
    trainable_token_indices); each grown module holds the tensors its role requires (G-Freeze: grow_new_weight on
    every module; G-Train: grow_delta_weight and grow_new_weight on the up side, nothing on the down projection
    but the symmetry noise, or grow_new_weight with init="zero"); and the shapes fit together: within one MLP a
    common hidden size, new up-side rows a multiple of k-1 that matches the fused chunks times the down block
    width, G-Train new rows exactly (k-1) times the delta's, biases as long as their rows. Linear ([out, in]) and
    GPT-2 Conv1D ([in, out]) layouts are both accepted. G-Freeze files hold only the new blocks, so there k is
    checked by divisibility by k-1 alone.
    """
    settings = _read_settings(report.config, report.problems)
    targets = _read_targets(report.config, report.problems)
    modules = _assign_roles(report, targets)
    tensors = _tensors_by_module(report, targets)
    if not settings.known:
        return
    _check_mlps(report, modules, tensors, settings)
    _check_experts(report, modules.experts, tensors, settings)
    _check_layers(report.config, modules.layers(), report.problems)
    if settings.mode == "freeze" and settings.valid_k and settings.k > 2:
        report.notes.append(
            "G-Freeze files hold only the new blocks, so k is checked by divisibility by k-1 (their width is "
            "(k-1)*p with p unknown without the base model)."
        )


def _read_settings(config: dict, problems: list[str]) -> _Settings:
    """peft_type, k, mode and init, each reported if invalid."""
    peft_type = config.get("peft_type")
    if peft_type != "GROW":
        problems.append(f"peft_type is {peft_type!r}, expected 'GROW': this is not a peft-grow adapter config.")
    k, mode, init = config.get("k"), config.get("mode", "freeze"), config.get("init", "copy")
    # symmetry noise has a store of its own only where the down blocks are frozen (filled_stores says where)
    noise = bool(config.get("symmetry_noise"))
    noise = mode in MODES and init in INITS and "grow_noise" in filled_stores(DOWN, mode, init, noise=noise)
    settings = _Settings(k=k, mode=mode, init=init, noise=noise)
    if not settings.valid_k:
        problems.append(f"k is {k!r}, expected an integer >= 2.")
    if mode not in MODES:
        problems.append(f"mode is {mode!r}, expected one of {MODES}.")
    if init not in INITS:
        problems.append(f"init is {init!r}, expected one of {tuple(INITS)}.")
    return settings


def _read_targets(config: dict, problems: list[str]) -> list[str]:
    """target_modules, or [] (reported) when it is not a non-empty list of names."""
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        problems.append(
            f"target_modules is {targets!r}, expected the list of grown modules that save_pretrained writes."
        )
        return []
    return targets


def _assign_roles(report: AdapterReport, targets: list[str]) -> _GrownModules:
    """The role of every target module (fused experts modules hold 3-D tensors), recorded in `report.roles`."""
    patterns = _role_patterns(report.config)
    modules = _GrownModules()
    modules.experts = {_tensor_module(info.name, targets)[0] for info in report.tensors if len(info.shape) == 3}
    modules.experts.discard(None)
    for target in targets:
        if target in modules.experts:  # a fused experts module: 3-D tensors, up and down side in one module
            report.roles[target] = EXPERTS
            continue
        found = _role(target, patterns)
        if found is None:
            report.roles[target] = "?"
            report.problems.append(
                f"{target} is not an up-side or down projection of any known architecture, and the config names no "
                "up_modules/down_modules that match it."
            )
            continue
        report.roles[target], modules.chunks[target] = found
        stack, index, _ = split_module_name(target)
        modules.mlps[(stack, index)].append(target)
    return modules


def _tensors_by_module(report: AdapterReport, targets: list[str]) -> dict[str, dict[str, TensorInfo]]:
    """target module -> grow tensor kind -> tensor; tensors that fit nowhere are reported (or, with
    modules_to_save or trainable tokens, listed as extra)."""
    tensors: dict[str, dict[str, TensorInfo]] = defaultdict(dict)
    allow_extra = bool(report.config.get("modules_to_save") or report.config.get("trainable_token_indices"))
    for info in report.tensors:
        if ".grow_" not in info.name:
            if allow_extra:
                report.extra_tensors.append(info.name)
            else:
                report.problems.append(
                    f"{info.name} is not a grow tensor (its name lacks '.grow_') and the config saves no "
                    "modules_to_save or trainable tokens."
                )
            continue
        module, kind = _tensor_module(info.name, targets)
        if kind not in GROW_KINDS:
            report.problems.append(f"{info.name}: unknown grow tensor kind 'grow_{kind}'.")
        elif module is None:
            report.problems.append(f"{info.name} belongs to no module listed in target_modules.")
        elif kind in tensors[module]:
            report.problems.append(f"{info.name}: a second grow_{kind} tensor for {module}.")
        else:
            tensors[module][kind] = info
    return tensors


def _check_kinds(
    module: str, role: str, present: set[str], settings: _Settings, label: str, problems: list[str]
) -> bool:
    """Report the grow tensors that `module` lacks or should not have; True when none it requires is missing."""
    required, allowed = settings.expected_kinds(role)
    problems.extend(f"{module} lacks grow_{kind}, which {label} requires." for kind in sorted(required - present))
    problems.extend(f"{module} has grow_{kind}, which {label} does not produce." for kind in sorted(present - allowed))
    return required <= present


def _check_mlps(
    report: AdapterReport, modules: _GrownModules, tensors: dict[str, dict[str, TensorInfo]], settings: _Settings
) -> None:
    """Per grown MLP: up-side projections and one down projection, each with its tensors, whose shapes agree."""
    problems = report.problems
    label = settings.label + (", symmetry_noise" if settings.noise else "")
    for (stack, index), members in sorted(modules.mlps.items()):
        where = f"layer {index} of {stack}"
        ups = [m for m in members if report.roles[m] == UP]
        downs = [m for m in members if report.roles[m] == DOWN]
        if not ups or len(downs) != 1:
            problems.append(f"{where}: expected up-side projections and one down projection, found {sorted(members)}.")
            continue
        complete = True
        for module in members:
            present = set(tensors[module])
            complete &= _check_kinds(module, report.roles[module], present, settings, label, problems)
            if (
                settings.mode == "train"
                and report.roles[module] == UP
                and ("new_bias" in present) != ("delta_bias" in present)
            ):
                problems.append(f"{module}: grow_new_bias and grow_delta_bias come together (a biased up side).")
        if complete and settings.valid_k:
            issues = _shape_issues(ups, downs[0], tensors, modules.chunks, settings.k)
            problems.extend(f"{where}: {issue}" for issue in issues)


def _check_experts(
    report: AdapterReport, experts: set[str], tensors: dict[str, dict[str, TensorInfo]], settings: _Settings
) -> None:
    """Per fused experts module: the tensors of both sides, whose shapes agree."""
    for module in sorted(experts):
        complete = _check_kinds(module, EXPERTS, set(tensors[module]), settings, settings.label, report.problems)
        if settings.valid_k and complete:
            report.problems.extend(f"{module}: {issue}" for issue in _experts_shape_issues(tensors[module], settings.k))


def _experts_shape_issues(tensors: dict[str, TensorInfo], k: int) -> list[str]:
    """Shape problems of a fused experts module's tensors (stored [experts, out, in]: new up rows
    [E, c(k-1)p, h], G-Train delta [E, cp, h], new down columns [E, h, (k-1)p], noise [E, h, kp], up biases
    [E, rows]), with c = 1 or 2 (a gate and an up half)."""
    shapes = {kind: info.shape for kind, info in tensors.items()}
    issues = [
        f"grow_{kind} has shape {list(shape)}, expected 3 dimensions."
        for kind, shape in shapes.items()
        if len(shape) != (2 if kind.endswith("bias") else 3)
    ]
    if issues:
        return issues
    counts = {shape[0] for shape in shapes.values()}
    if len(counts) > 1:
        issues.append(f"the tensors disagree on the number of experts: {sorted(counts)}.")
    new_rows, hidden = shapes["new_weight"][1:]
    issues.extend(_experts_up_issues(shapes, new_rows, k))
    issues.extend(_experts_down_issues(shapes, new_rows, hidden, k))
    return issues


def _experts_up_issues(shapes: dict[str, tuple[int, ...]], new_rows: int, k: int) -> list[str]:
    """The up side of `_experts_shape_issues`: new rows, the G-Train delta and the biases against their rows."""
    issues = []
    if new_rows % (k - 1):
        issues.append(f"grow_new_weight has {new_rows} new rows per expert, not a multiple of k-1={k - 1}.")
    if "delta_weight" in shapes and shapes["delta_weight"][1] * (k - 1) != new_rows:
        issues.append(f"grow_delta_weight has {shapes['delta_weight'][1]} rows for {new_rows} new rows (k={k}).")
    for kind in ("new_bias", "delta_bias"):
        rows_of = shapes["new_weight" if kind == "new_bias" else "delta_weight"][1] if kind in shapes else None
        if rows_of is not None and shapes[kind][1] != rows_of:
            issues.append(f"grow_{kind} has {shapes[kind][1]} entries per expert for {rows_of} rows.")
    return issues


def _experts_down_issues(shapes: dict[str, tuple[int, ...]], new_rows: int, hidden: int, k: int) -> list[str]:
    """The down side of `_experts_shape_issues`: new down columns and the G-Train noise against the up side."""
    issues = []
    for kind, blocks in (("new_down_weight", k - 1), ("noise", k)):
        if kind not in shapes:
            continue
        down_hidden, columns = shapes[kind][1:]
        if down_hidden != hidden:
            issues.append(f"grow_{kind} maps to {down_hidden} hidden features, the up side reads {hidden}.")
        if (
            columns % blocks
            or (new_rows * blocks) % ((k - 1) * columns)
            or new_rows * blocks // ((k - 1) * columns) not in (1, 2)
        ):
            issues.append(f"grow_{kind} has {columns} columns, which do not pair with {new_rows} new up rows (k={k}).")
    return issues


_HIDDEN_MISMATCH = "the tensors disagree on the hidden size"


def _shape_issues(
    ups: list[str], down: str, tensors: dict[str, dict[str, TensorInfo]], chunks_of: dict[str, int], k: int
) -> list[str]:
    """Shape problems of one MLP in the Linear layout or in Conv1D's (transposed), whichever fits better: first
    the one in which the tensors agree on the hidden size, then the one with fewer problems."""
    results = [_shape_issues_in_layout(ups, down, tensors, chunks_of, k, conv1d) for conv1d in (False, True)]
    return min(results, key=lambda issues: (any(_HIDDEN_MISMATCH in issue for issue in issues), len(issues)))


def _shape_issues_in_layout(
    ups: list[str],
    down: str,
    tensors: dict[str, dict[str, TensorInfo]],
    chunks_of: dict[str, int],
    k: int,
    conv1d: bool,
) -> list[str]:
    # Every tensor implies p, the width of one block of one projection: a G-Train delta has chunks*p rows (exact,
    # whatever k), new up rows (k-1)*chunks*p, new down columns (k-1)*p, the G-Train noise k*p. All must agree.
    shapes = _LayoutShapes(tensors, k, conv1d)
    for up in ups:
        shapes.check_delta(up, chunks_of[up])
    shapes.estimate(shapes.width_of(down, "new_weight", "down"), k - 1, "(k-1)", f"{down}.grow_new_weight")
    for up in ups:
        shapes.check_new(up, chunks_of[up])
    shapes.estimate(shapes.width_of(down, "noise", "down"), k, "k", f"{down}.grow_noise")
    shapes.check_agreement()
    return shapes.issues


@dataclass
class _LayoutShapes:
    """The widths one MLP's tensors give when read in one layout (Linear, or Conv1D's transposed), the estimates
    of p they imply, and the issues found on the way (`_shape_issues_in_layout`)."""

    tensors: dict[str, dict[str, TensorInfo]]
    k: int
    conv1d: bool
    issues: list[str] = field(default_factory=list)
    hidden: set[int] = field(default_factory=set)
    estimates: list[tuple[int, str]] = field(default_factory=list)

    def width_of(self, module: str, kind: str, role: str) -> int | None:
        """The MLP-side width of a tensor (entries of a bias); records its hidden size. None if absent or of the
        wrong rank (an issue)."""
        info = self.tensors[module].get(kind)
        if info is None:
            return None
        if kind.endswith("bias"):
            if len(info.shape) != 1:
                self.issues.append(f"{info.name} has shape {list(info.shape)}, expected a vector.")
                return None
            return info.shape[0]
        if len(info.shape) != 2:
            self.issues.append(f"{info.name} has shape {list(info.shape)}, expected a matrix.")
            return None
        rows, cols = info.shape
        out_dim, in_dim = (cols, rows) if self.conv1d else (rows, cols)
        width, h = (out_dim, in_dim) if role == "up" else (in_dim, out_dim)
        self.hidden.add(h)
        return width

    def estimate(self, width: int | None, factor: int, formula: str, source: str) -> None:
        """Record the p that `width` = `formula`*p implies, or the issue that it is not a multiple."""
        if width is None:
            return
        if width % factor:
            self.issues.append(f"{source} is {width} wide, not a multiple of {formula}={factor} (k={self.k}).")
        else:
            self.estimates.append((width // factor, f"{source} ({width} = {formula}*p)"))

    def check_delta(self, up: str, chunks: int) -> None:
        """G-Train's delta on an up-side module's original rows (chunks*p of them) and its bias."""
        rows = self.width_of(up, "delta_weight", "up")
        self.estimate(rows, chunks, "chunks", f"{up}.grow_delta_weight")
        self.check_bias(up, "delta_bias", rows, "rows")

    def check_new(self, up: str, chunks: int) -> None:
        """An up-side module's new rows ((k-1)*chunks*p of them) and their bias."""
        rows = self.width_of(up, "new_weight", "up")
        self.estimate(rows, (self.k - 1) * chunks, "(k-1)*chunks", f"{up}.grow_new_weight")
        self.check_bias(up, "new_bias", rows, "new rows")

    def check_bias(self, up: str, kind: str, rows: int | None, what: str) -> None:
        """A bias of an up-side module, one entry per row of its weight."""
        entries = self.width_of(up, kind, "up")
        if entries is not None and rows is not None and entries != rows:
            self.issues.append(f"{up}.grow_{kind} has {entries} entries for {rows} {what}.")

    def check_agreement(self) -> None:
        """Every estimate of p against the first, and one hidden size."""
        if self.estimates:
            block, reference = self.estimates[0]
            for value, source in self.estimates[1:]:
                if value != block:
                    self.issues.append(f"{source} gives p={value}, but {reference} gives p={block}.")
        if len(self.hidden) > 1:
            self.issues.append(f"{_HIDDEN_MISMATCH}: {sorted(self.hidden)}.")


def _check_layers(config: dict, grown: set[tuple[str, int]], problems: list[str]) -> None:
    """target_modules (their layers: (stack, index)) against `layers`, where the config's indices can be checked
    (non-negative)."""
    layers = config.get("layers")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, list) or not grown or not all(isinstance(i, int) and i >= 0 for i in layers):
        return
    indices = {index for _, index in grown}
    outside = sorted(indices - set(layers))
    if outside:
        problems.append(f"target_modules grow layers {format_indices(outside)}, which layers={layers} does not list.")
    missing = sorted(set(layers) - indices)
    if missing and not config.get("exclude_modules"):
        problems.append(f"layers={layers} lists {format_indices(missing)}, but no module of those layers is grown.")
