"""GROW is a first-class PEFT method after `import peft_grow`, registered once."""

import importlib.metadata

import peft
import pytest
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_grow
from peft_grow import GrowConfig, GrowModel, PeftRegistrationError
from peft_grow.tuner._peft_registry import grow_peft_type, register_grow_method


def test_grow_is_a_peft_type():
    assert PeftType("GROW") is PeftType.GROW is PeftType["GROW"] is grow_peft_type()
    assert PeftType.GROW.value == "GROW" and PeftType.GROW in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GROW] is GrowConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GROW] is GrowModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.GROW] == "grow_"
    assert GrowConfig().peft_type is PeftType.GROW


def test_registration_is_idempotent():
    register_grow_method(GrowConfig, GrowModel)
    register_grow_method(GrowConfig, GrowModel)
    assert sum(member.value == "GROW" for member in PeftType) == 1


def test_config_from_peft_type_string():
    config = PeftConfig.from_peft_type(peft_type="GROW", k=3)
    assert isinstance(config, GrowConfig) and config.k == 3


def test_an_incompatible_registration_is_refused():
    class OtherConfig(GrowConfig):
        pass

    with pytest.raises(PeftRegistrationError, match="another package registered a GROW method"):
        register_grow_method(OtherConfig, GrowModel)


def test_too_old_peft_is_refused(monkeypatch):
    monkeypatch.setattr(peft, "__version__", "0.17.1")
    with pytest.raises(PeftRegistrationError, match=r"needs peft>=0.21.0, found peft==0.17.1"):
        grow_peft_type()


def test_public_api():
    assert peft_grow.__version__ == importlib.metadata.version("peft-grow")  # one version, from the package metadata
    assert {"GrowConfig", "GrowModel", "GrowCheckpointError", "UnsupportedArchitectureError"} <= set(peft_grow.__all__)
