"""Grown models on disk and on the Hub: atomic saving, merged checkpoints, model cards, upload, and checks of
adapter folders (`checkpoint.py` before PEFT reads them, `inspection.py` for `peft-grow inspect`)."""

from ..tuner.config import FOLDER_HOOKS
from .cards import write_adapter_card
from .checkpoint import check_adapter_folder
from .export import load_merged, save_adapter, save_merged
from .hub import push_adapter_to_hub, push_folder_to_hub

# the card and the weights check run where PEFT saves and loads adapter folders (GrowConfig's FolderHooks)
FOLDER_HOOKS.after_save = write_adapter_card
FOLDER_HOOKS.before_load = check_adapter_folder

__all__ = ["load_merged", "push_adapter_to_hub", "push_folder_to_hub", "save_adapter", "save_merged"]
