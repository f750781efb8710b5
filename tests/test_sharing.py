"""Adapter cards and Hub uploads, offline: the card says how to load, the upload is the saved folder itself."""

from pathlib import Path

import pytest
from helpers import tiny_model
from huggingface_hub import HfApi, ModelCard
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import peft_grow
from peft_grow import GrowConfig


@pytest.fixture
def adapter(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    return get_peft_model(base, GrowConfig(layers=[0, 2], k=3, mode="train", task_type="CAUSAL_LM"))


def test_adapter_card_has_front_matter_and_loading_lines(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "adapter")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft"
    assert {"peft-grow", "grow-dont-overwrite"} <= set(card.data.tags)
    assert card.data.base_model == str(tmp_path / "base")
    assert "import peft_grow" in card.text and "PeftModel.from_pretrained(base" in card.text
    assert "| layers | 0, 2 |" in card.text and "G-Train" in card.text
    adapter.save_pretrained(tmp_path / "adapter")  # saving again replaces the section, it does not pile up
    assert (tmp_path / "adapter" / "README.md").read_text().count("## Grown adapter") == 1


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_hub(monkeypatch):
    """Record what would be uploaded instead of reaching the network."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, folder_path, repo_id, **kwargs):
        uploads.append((repo_id, files(Path(folder_path)), kwargs))
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def test_the_tuner_alone_saves_and_loads_its_config_as_any_peft_config(tmp_path, monkeypatch):
    """The card and the weights check are peft_grow.io's, hung on GrowConfig's FolderHooks: without them the config
    writes adapter_config.json alone, and loads from a folder that holds nothing else, as LoraConfig does."""
    from peft import LoraConfig

    from peft_grow.tuner.config import FOLDER_HOOKS

    assert FOLDER_HOOKS.after_save is not None and FOLDER_HOOKS.before_load is not None  # `import peft_grow` set them
    for config, folder in ((GrowConfig(k=3), tmp_path / "grow"), (LoraConfig(r=2), tmp_path / "lora")):
        with monkeypatch.context() as patch:
            patch.setattr(FOLDER_HOOKS, "after_save", None)
            patch.setattr(FOLDER_HOOKS, "before_load", None)
            config.save_pretrained(folder)
            assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json"]
            assert type(config).from_pretrained(folder).to_dict() == config.to_dict()
    GrowConfig(k=3).save_pretrained(tmp_path / "with-io")  # with peft_grow.io's hooks: the card as well
    assert "## Grown adapter" in (tmp_path / "with-io" / "README.md").read_text()
    # and the check of the weights: PEFT itself would take a local folder without them for a Hub id
    with pytest.raises(peft_grow.GrowCheckpointError, match="no adapter_model.safetensors; the folder is incomplete"):
        GrowConfig.from_pretrained(tmp_path / "with-io")


def test_push_adapter_uploads_exactly_the_saved_folder(adapter, tmp_path, fake_hub):
    adapter.save_pretrained(tmp_path / "saved")
    assert peft_grow.push_adapter_to_hub(adapter, "me/grown", commit_message="hi") == "commit"
    [(repo_id, uploaded, kwargs)] = fake_hub
    assert repo_id == "me/grown" and kwargs == {"commit_message": "hi"}
    assert uploaded == files(tmp_path / "saved")
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(uploaded)


def test_push_merged_folder_as_written(adapter, tmp_path, fake_hub):
    peft_grow.save_merged(adapter, tmp_path / "merged")
    peft_grow.push_folder_to_hub(tmp_path / "merged", "me/merged")
    assert fake_hub[0][1] == files(tmp_path / "merged")


def test_push_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, fake_hub):
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json nor config.json"):
        peft_grow.push_folder_to_hub(tmp_path, "me/nothing")
    assert fake_hub == []


def test_save_adapter_is_atomic_and_refuses_an_existing_folder(adapter, tmp_path, monkeypatch):
    peft_grow.save_adapter(adapter, tmp_path / "a")
    assert files(tmp_path / "a").keys() >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        peft_grow.save_adapter(adapter, tmp_path / "a")
    before = files(tmp_path / "a")

    def crash(self, folder, **kwargs):
        (Path(folder) / "adapter_config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(adapter), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        peft_grow.save_adapter(adapter, tmp_path / "a", overwrite=True)
    assert files(tmp_path / "a") == before and sorted(p.name for p in tmp_path.iterdir()) == ["a", "base"]


@pytest.mark.parametrize("card_on_hub", [False, True])
def test_standard_push_to_hub_keeps_a_card_already_on_the_hub_and_tags_a_generic_one(
    adapter, tmp_path, fake_hub, monkeypatch, card_on_hub
):
    """What docs/sharing.md says of `model.push_to_hub`: transformers writes its card over the saved README.md, so
    the peft-grow card survives only where the Hub already has it (push_adapter_to_hub first); otherwise the
    generic card names peft-grow only through `tags`."""
    from huggingface_hub.utils import EntryNotFoundError

    commits = []

    def create_commit(self, repo_id, operations, **kwargs):
        commits.append({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})

    adapter.save_pretrained(tmp_path / "ours")
    ours = ModelCard.load(tmp_path / "ours" / "README.md")

    load_file_or_repo = ModelCard.load

    def load(repo_id_or_path, **kwargs):  # the Hub's card; local files (PEFT reads the saved README) as they are
        if Path(repo_id_or_path).exists():
            return load_file_or_repo(repo_id_or_path, **kwargs)
        if card_on_hub:
            return ours
        raise EntryNotFoundError("no README.md in the repository")

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(ModelCard, "load", staticmethod(load))
    adapter.push_to_hub("me/grown", tags=["peft-grow", "grow-dont-overwrite"])
    [uploaded] = commits
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(uploaded)
    card = uploaded["README.md"].decode()
    assert ("import peft_grow" in card) == card_on_hub  # the loading lines survive only from the Hub's card
    assert "peft-grow" in card
