"""Share grown adapters and merged checkpoints on the Hub, uploading exactly the folder that was written.

`model.push_to_hub` (transformers' PushToHubMixin) saves the model and then replaces README.md with the card
already on the Hub, or a generic one, so the peft-grow card with its loading lines would be lost. These
functions upload the saved folder as it is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi

if TYPE_CHECKING:
    from concurrent.futures import Future

    from huggingface_hub import CommitInfo
    from peft import PeftModel


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    **kwargs: Any,
) -> CommitInfo | Future[CommitInfo]:
    """Upload `folder` (an adapter folder or a merged checkpoint) to `repo_id` unchanged; `kwargs` go to
    `HfApi.upload_folder` (e.g. `commit_message`, `revision`, `create_pr`)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds neither adapter_config.json nor config.json: expected a folder written by "
            "save_pretrained or peft_grow.save_merged."
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, **kwargs)


def push_adapter_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    **kwargs: Any,
) -> CommitInfo | Future[CommitInfo]:
    """`model.save_pretrained` into a temporary folder, then upload that folder exactly as written."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return push_folder_to_hub(folder, repo_id, private=private, token=token, **kwargs)
