"""The one module that touches PEFT internals: teaching PEFT's closed `PeftType` enum about GROW.

PEFT (0.21) only registers methods whose name is already a member of `PeftType`, and that enum is closed.
We add the member through CPython's own member-creation path (`enum._proto_member`), the same code that
runs when the enum class body is executed, so the new member is indistinguishable from a built-in one
(`PeftType("GROW")`, `PeftType["GROW"]`, iteration, JSON round trip). Everything here is idempotent, and
every process that loads a grown adapter must import `peft_grow` first.
"""

from __future__ import annotations

import enum

import peft
from packaging.version import Version
from peft.utils import PeftType

GROW = "GROW"
MIN_PEFT_VERSION = "0.21.0"


class PeftRegistrationError(RuntimeError):
    """The installed PEFT cannot host the GROW method."""


def _check_peft_version() -> None:
    found = Version(peft.__version__)
    if found < Version(MIN_PEFT_VERSION):
        raise PeftRegistrationError(
            f"peft-grow needs peft>={MIN_PEFT_VERSION}, found peft=={peft.__version__}. "
            f"Upgrade it: pip install -U 'peft>={MIN_PEFT_VERSION}'."
        )


def grow_peft_type() -> PeftType:
    """Return `PeftType.GROW`, adding the member to PEFT's enum on first use."""
    _check_peft_version()
    existing = PeftType.__members__.get(GROW)
    if existing is not None:
        if existing.value != GROW:
            raise PeftRegistrationError(
                f"PeftType.GROW already exists with value {existing.value!r}, expected {GROW!r}: another "
                "package defines an incompatible GROW method. Uninstall it or import peft_grow in a separate "
                "process."
            )
        return existing
    # `_proto_member.__set_name__` is what `EnumType.__new__` calls for each name in a class body: it builds the
    # member and fills `_member_map_`, `_value2member_map_` and `_member_names_`. The member's name equals its value
    # so that `PeftType(value)` and `PeftType[name]` agree, as for every built-in member.
    proto = enum._proto_member(GROW)
    setattr(PeftType, GROW, proto)
    proto.__set_name__(PeftType, GROW)
    return PeftType[GROW]


def register_grow_method(config_cls: type, model_cls: type) -> None:
    """Register GrowConfig / GrowModel with PEFT once; a second call with the same classes is a no-op."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    peft_type = grow_peft_type()
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is not None:
        if registered is config_cls and PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is model_cls:
            return
        raise PeftRegistrationError(
            f"PEFT already maps GROW to {registered.__module__}.{registered.__qualname__}, expected "
            f"{config_cls.__module__}.{config_cls.__qualname__}: another package registered a GROW method. "
            "Uninstall it or import peft_grow in a separate process."
        )
    register_peft_method(name=GROW.lower(), config_cls=config_cls, model_cls=model_cls, prefix="grow_")
