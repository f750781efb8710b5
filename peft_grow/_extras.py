"""Optional dependencies: `import peft_grow` needs only torch, peft, transformers and safetensors; the rest
come with extras (pyproject.toml), imported only where used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {  # top-level module -> (the extra that installs it, the distribution's name)
    "typer": ("cli", "typer"),
    "rich": ("cli", "rich"),
    "lm_eval": ("eval", "lm-eval"),
    "sacrebleu": ("eval", "sacrebleu"),
    "datasets": ("eval", "datasets"),
    "matplotlib": ("plots", "matplotlib"),
    "trl": ("trl", "trl"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def missing_extra_message(module: str, needed_for: str) -> str:
    extra, distribution = EXTRAS[module.partition(".")[0]]
    return (
        f"{needed_for} needs {distribution}, which is not installed: pip install 'peft-grow[{extra}]' "
        "(or 'peft-grow[all]' for every optional feature)."
    )


def require(module: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtraError(missing_extra_message(module, needed_for), name=error.name) from error
