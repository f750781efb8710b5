"""The GROW tuner: what would go into PEFT as `src/peft/tuners/grow/`.

`config.py` (GrowConfig), `layer.py` (the grown projections), `experts.py` (grown mixture-of-experts modules),
`model.py` (GrowModel: find, wrap, merge, unload), `architectures.py` (where each architecture's MLP is),
`checking.py` (the numerical check that growth preserves the function), `merged.py` (the merged model's config),
`tensors.py` (weight layouts), `_fast_paths.py` (decode fast paths) and `_peft_registry.py` (the one place that
touches PEFT internals). Importing this package registers GROW with PEFT.
"""

from ._peft_registry import PeftRegistrationError, register_grow_method
from .architectures import ARCHITECTURES, REFUSED, MLPLayout, UnsupportedArchitectureError, find_mlps
from .config import GrowConfig
from .experts import GrowExpertsLayer
from .layer import GrowDownLayer, GrowLayer, GrowUpLayer
from .model import GrowCheckpointError, GrowModel, GrowthSummary

register_grow_method(GrowConfig, GrowModel)

__all__ = [
    "ARCHITECTURES",
    "REFUSED",
    "GrowCheckpointError",
    "GrowConfig",
    "GrowDownLayer",
    "GrowExpertsLayer",
    "GrowLayer",
    "GrowModel",
    "GrowUpLayer",
    "GrowthSummary",
    "MLPLayout",
    "PeftRegistrationError",
    "UnsupportedArchitectureError",
    "find_mlps",
]
