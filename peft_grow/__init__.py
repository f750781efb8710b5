"""peft-grow: *Grow, Don't Overwrite* (arXiv 2603.08647) as a PEFT tuner.

Importing this package registers the GROW method with PEFT, so that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModel*` accept `GrowConfig` adapters.
"""

from ._peft_registry import PeftRegistrationError, register_grow_method
from .architectures import ARCHITECTURES, REFUSED, MLPLayout, UnsupportedArchitectureError
from .checkpoint import GrowCheckpointError
from .config import GrowConfig
from .export import load_merged, save_adapter, save_merged
from .hub import push_adapter_to_hub, push_folder_to_hub
from .layer import GrowDownLayer, GrowLayer, GrowUpLayer
from .model import GrowModel, GrowthSummary

__version__ = "0.1.0"

register_grow_method(GrowConfig, GrowModel)

__all__ = [
    "ARCHITECTURES",
    "REFUSED",
    "GrowCheckpointError",
    "GrowConfig",
    "GrowDownLayer",
    "GrowLayer",
    "GrowModel",
    "GrowUpLayer",
    "GrowthSummary",
    "MLPLayout",
    "PeftRegistrationError",
    "UnsupportedArchitectureError",
    "load_merged",
    "push_adapter_to_hub",
    "push_folder_to_hub",
    "save_adapter",
    "save_merged",
]
