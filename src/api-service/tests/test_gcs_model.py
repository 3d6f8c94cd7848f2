"""Serving a model whose registry lives on gs:// (the storage emulator)."""

from pathlib import Path

import pytest
from support import TinyPipeline

from api_service.model import load_served_model
from api_service.settings import ServingSettings as Settings
from common import storage
from common.registry import ModelRegistry


@pytest.mark.integration
def test_a_gs_registry_is_downloaded_once_and_served(
    storage_emulator: str, tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    root = f"{storage_emulator}/models"
    local = ModelRegistry(tiny_pipeline.models, "digits-cnn")
    version_dir = Path(local.version_uri(local.resolve("production")))
    storage.upload_tree(version_dir, f"{root}/digits-cnn/1")
    ModelRegistry(root, "digits-cnn").set_alias("production", "1")

    cache = tmp_path / "cache"
    settings = Settings(models_root=root, model_cache_dir=str(cache))
    served = load_served_model(settings)
    assert served.version == "1"
    [copy] = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert (copy / "model.tflite").is_file() and (copy / "version.json").is_file()
    assert not (copy / "saved_model").exists()  # serving does not need it

    # A copy cut short (no version.json) is fetched again whole, not trusted.
    (copy / "version.json").unlink()
    (copy / "labels.json").unlink()
    again = load_served_model(settings)
    assert (copy / "labels.json").is_file()
    assert again.labels == served.labels


def test_object_names_leading_outside_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "list_files", lambda _: iter(["gs://b/p/../../escape.txt"]))
    monkeypatch.setattr(storage, "read_bytes", lambda _: b"x")
    with pytest.raises(ValueError, match="outside"):
        storage.download_tree("gs://b/p", tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()
