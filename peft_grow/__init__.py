"""peft-grow: *Grow, Don't Overwrite* (arXiv 2603.08647) as a PEFT tuner.

Importing this package registers the GROW method with PEFT, so that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModel*` accept `GrowConfig` adapters.
"""

import logging

# bitsandbytes, which peft imports when it is installed, logs a warning at import (an optional CPU kernel package
# is missing) with no handler of its own, so Python's last-resort handler printed it on every start of every
# command. A NullHandler keeps the record for applications that configure logging and off a bare stderr.
logging.getLogger("bitsandbytes").addHandler(logging.NullHandler())

from ._peft_registry import PeftRegistrationError, register_grow_method  # noqa: E402
from .architectures import ARCHITECTURES, REFUSED, MLPLayout, UnsupportedArchitectureError  # noqa: E402
from .checkpoint import GrowCheckpointError  # noqa: E402
from .config import GrowConfig  # noqa: E402
from .export import load_merged, save_adapter, save_merged  # noqa: E402
from .hub import push_adapter_to_hub, push_folder_to_hub  # noqa: E402
from .layer import GrowDownLayer, GrowLayer, GrowUpLayer  # noqa: E402
from .model import GrowModel, GrowthSummary  # noqa: E402

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
