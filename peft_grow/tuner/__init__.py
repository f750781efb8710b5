"""The GROW tuner: what would go into PEFT as `src/peft/tuners/grow/`.

- `config.py`: GrowConfig, the adapter's settings and their validation.
- `layer.py`: the grown projections (GrowUpLayer, GrowDownLayer); a diagram of what growth does to W_up and
  W_down heads the module. `_fast_paths.py`: their decode fast paths. `stores.py`: which tensors each layer
  fills for a mode and init (also read by `peft-grow inspect`).
- `experts.py`: grown mixture-of-experts modules (3-D expert weights).
- `model.py`: GrowModel, the BaseTuner that finds the MLPs, wraps them, merges and unloads.
- `architectures.py`: where each architecture's MLP is (`ARCHITECTURES`, `STRUCTURES`, `find_mlps`).
- `checking.py`: the numerical check that growth preserves the function. `paths.py`: which modules a text input
  reaches (the language model's stacks, grown modules on the path). `merged.py`: the merged model's
  config. `tensors.py`: weight layouts (nn.Linear, Conv1D). `quantization.py`: bitsandbytes bases and refusals.
- `_peft_registry.py`: the one place that touches PEFT internals.

Importing this package registers GROW with PEFT.
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
