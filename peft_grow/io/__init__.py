"""Grown models on disk and on the Hub: atomic saving, merged checkpoints, model cards, upload, and checks of
adapter folders (`checkpoint.py` before PEFT reads them, `inspection.py` for `peft-grow inspect`)."""

from .export import load_merged, save_adapter, save_merged
from .hub import push_adapter_to_hub, push_folder_to_hub

__all__ = ["load_merged", "push_adapter_to_hub", "push_folder_to_hub", "save_adapter", "save_merged"]
