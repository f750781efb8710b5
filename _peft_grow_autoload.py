"""Registers peft-grow's GROW method with PEFT in every Python process, without `import peft_grow` in user code.

`peft_grow_autoload.pth`, installed at the root of site-packages (setup.py puts it in wheels and editable
installs), runs at interpreter start-up:

    import os; os.environ.get("PEFT_GROW_NO_AUTOLOAD", "") in ("", "0") and __import__("_peft_grow_autoload").install()

`install()` puts one finder at the front of `sys.meta_path` and does nothing else: no torch, no peft, no
peft_grow. The first time `peft` itself is imported, the finder hands the import to the finders behind it,
lets peft's own `__init__` run to the end, then imports `peft_grow` (whose import registers GROW) and leaves
`sys.meta_path`. From then on `PeftModel.from_pretrained`, `AutoPeftModel*`, lm-eval's `peft=` and TRL load
grown adapters. If `peft_grow` cannot be imported, `import peft` still succeeds and a RuntimeWarning says why.

This module sits outside the `peft_grow` package on purpose: importing `peft_grow.anything` would run
`peft_grow/__init__.py`, which imports torch and peft, in every interpreter. It imports only `os`, `sys` (both
already imported by `site`) and the built-in `_thread`. Turn it off with PEFT_GROW_NO_AUTOLOAD=1 (any value
but "" or "0"). See docs/sharing.md, "Loading without `import peft_grow`".
"""

from __future__ import annotations

import os
import sys
from _thread import get_ident

ENV_OFF = "PEFT_GROW_NO_AUTOLOAD"
TRIGGER = "peft"
PACKAGE = "peft_grow"


def disabled() -> bool:
    """Whether the environment turns the hook off (PEFT_GROW_NO_AUTOLOAD set to anything but "" or "0")."""
    return os.environ.get(ENV_OFF, "") not in ("", "0")


class _RegisterAfterPeft:
    """Loader for the one `import peft`: peft's own loader runs first, then `import peft_grow`.

    The wrapper is visible only while peft's `__init__` runs: afterwards the module's `__loader__` and
    `__spec__.loader` are peft's own loader again (importlib.resources, inspect and reload see no difference).
    """

    def __init__(self, finder: PeftGrowAutoload, loader) -> None:
        self._finder = finder
        self._loader = loader

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        self._finder.uninstall()
        _register()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class PeftGrowAutoload:
    """A `sys.meta_path` finder that answers only for the top-level module `peft`, and only until it is loaded."""

    def __init__(self) -> None:
        self._searching: set[int] = set()  # threads inside find_spec: a finder that asks the whole meta path
        # again (importlib.util.find_spec) must not bring the question back here

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != TRIGGER or get_ident() in self._searching:
            return None
        self._searching.add(get_ident())
        try:
            spec = self._find_elsewhere(fullname, path, target)
        finally:
            self._searching.discard(get_ident())
        if spec is None:
            return None  # peft is not installed: the usual ModuleNotFoundError follows
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # not a loader we know how to follow: leave the import alone
        spec.loader = _RegisterAfterPeft(self, spec.loader)
        return spec

    def _find_elsewhere(self, fullname: str, path, target):
        for finder in list(sys.meta_path):
            if isinstance(finder, PeftGrowAutoload):
                continue
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


def _register() -> None:
    """Import peft_grow (its import registers GROW with PEFT); never let a failure break `import peft`."""
    if PACKAGE in sys.modules:
        return  # peft is being imported by peft_grow itself, which registers GROW when its import ends
    try:
        __import__(PACKAGE)
    except Exception as error:  # any failure must leave `import peft` working
        import warnings

        warnings.warn(
            f"peft-grow could not register the GROW adapter type with PEFT when peft was imported "
            f"({type(error).__name__}: {error}). Grown adapters will not load in this process; "
            f"`import peft_grow` shows the full error. Set {ENV_OFF}=1 to turn this start-up hook off.",
            RuntimeWarning,
            stacklevel=2,
        )


def install() -> PeftGrowAutoload | None:
    """Put the finder at the front of `sys.meta_path`, once; None if turned off or peft is already imported."""
    if disabled():
        return None
    for finder in sys.meta_path:
        if isinstance(finder, PeftGrowAutoload):
            return finder
    if TRIGGER in sys.modules:  # too late to follow the import: register now
        _register()
        return None
    finder = PeftGrowAutoload()
    sys.meta_path.insert(0, finder)
    return finder
