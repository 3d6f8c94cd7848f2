import json
import shutil
from pathlib import Path

import pytest

from common.registry import ModelRegistry, RegistryError


def model_folder(tmp_path: Path, content: str) -> Path:
    folder = tmp_path / f"model-{content}"
    folder.mkdir()
    (folder / "model.tflite").write_text(content)
    (folder / "labels.json").write_text('["a", "b"]')
    return folder


def test_publish_numbers_versions_and_is_idempotent(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry", "m")
    first = registry.publish(model_folder(tmp_path, "one"))
    assert first == "1"
    assert registry.publish(tmp_path / "model-one") == "1"
    assert registry.publish(model_folder(tmp_path, "two")) == "2"
    assert registry.versions() == ["1", "2"]
    info = registry.version_info("2")
    assert info["version"] == "2" and len(info["content_hash"]) == 64
    assert (tmp_path / "registry/m/2/model.tflite").read_text() == "two"
    # Nothing but the versions: no staging folder is left beside them.
    assert sorted(p.name for p in (tmp_path / "registry/m").iterdir()) == ["1", "2"]


def test_aliases_are_set_and_resolved(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, "m")
    registry.publish(model_folder(tmp_path, "one"))
    registry.publish(model_folder(tmp_path, "two"))
    registry.set_alias("production", "1")
    registry.set_alias("candidate", "2")
    assert registry.resolve("production") == "1"
    assert registry.resolve("2") == "2"
    assert json.loads((tmp_path / "m/aliases.json").read_text()) == {
        "candidate": "2",
        "production": "1",
    }


def test_alias_to_a_missing_version_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, "m")
    with pytest.raises(RegistryError, match="no complete version"):
        registry.set_alias("production", "7")


def test_resolving_a_missing_alias_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="mega run"):
        ModelRegistry(tmp_path, "m").resolve("production")


def test_incomplete_version_is_ignored(tmp_path: Path) -> None:
    # A crash mid-copy leaves a folder without version.json: never a version.
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.tflite").write_text("partial")
    registry = ModelRegistry(tmp_path, "m")
    assert registry.versions() == []
    assert registry.publish(model_folder(tmp_path, "one")) == "2"


def test_a_publish_that_fails_mid_copy_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path / "registry", "m")
    registry.publish(model_folder(tmp_path, "one"))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", disk_full)
    with pytest.raises(OSError, match="disk full"):
        registry.publish(model_folder(tmp_path, "two"))
    assert registry.versions() == ["1"]
    assert sorted(p.name for p in (tmp_path / "registry/m").iterdir()) == ["1"]


@pytest.mark.integration
def test_registry_on_gcs(storage_emulator: str, tmp_path: Path) -> None:
    registry = ModelRegistry(f"{storage_emulator}/models", "m")
    assert registry.publish(model_folder(tmp_path, "one")) == "1"
    assert registry.publish(tmp_path / "model-one") == "1"
    assert registry.publish(model_folder(tmp_path, "two")) == "2"
    registry.set_alias("production", "2")
    assert registry.resolve("production") == "2"
    assert registry.versions() == ["1", "2"]
