"""peft-grow: *Grow, Don't Overwrite* (arXiv 2603.08647) as a PEFT tuner.

Importing this package registers the GROW method with PEFT, so that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModel*` accept `GrowConfig` adapters.

The package is laid out as: `tuner/` (the method, as PEFT would hold it), `io/` (saving, merged checkpoints,
cards, Hub upload, adapter checks), `analysis/` (costs, layer selection, update ranks, function vectors),
`evaluation/` (data readers, metrics, generation, lm-eval tasks) and `cli/` (the `peft-grow` command). Only
the tuner and io are imported here; they need torch, peft, transformers and safetensors alone.
"""

import logging

# bitsandbytes, which peft imports when it is installed, logs a warning at import (an optional CPU kernel package
# is missing) with no handler of its own, so Python's last-resort handler printed it on every start of every
# command. A NullHandler keeps the record for applications that configure logging and off a bare stderr. On CPUs
# with AVX512-BF16 bitsandbytes also asks the `kernels` package for a CPU kernel at import, which warns the same
# way when the Hub is offline.
logging.getLogger("bitsandbytes").addHandler(logging.NullHandler())
logging.getLogger("kernels").addHandler(logging.NullHandler())

from .io import load_merged, push_adapter_to_hub, push_folder_to_hub, save_adapter, save_merged  # noqa: E402
from .tuner import (  # noqa: E402  (importing the tuner registers GROW with PEFT)
    ARCHITECTURES,
    REFUSED,
    GrowCheckpointError,
    GrowConfig,
    GrowDownLayer,
    GrowExpertsLayer,
    GrowLayer,
    GrowModel,
    GrowthSummary,
    GrowUpLayer,
    MLPLayout,
    PeftRegistrationError,
    UnsupportedArchitectureError,
    find_mlps,
)

__version__ = "0.1.0"

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
    "load_merged",
    "push_adapter_to_hub",
    "push_folder_to_hub",
    "save_adapter",
    "save_merged",
]
