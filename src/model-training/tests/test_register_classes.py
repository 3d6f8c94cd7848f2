"""register writes the training class counts into the version, from the data the lineage names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.contracts import TrainingClasses
from common.params import RegistryParams
from trainer.register import register

COUNTS = {"train": {"a": 5, "b": 3}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}


def processed(folder: Path, data_hash: str) -> Path:
    folder.mkdir(parents=True)
    preprocess = {"image_size": 8, "color_mode": "grayscale"}
    stats = {
        "dataset": "d",
        "data_hash": data_hash,
        "labels": ["a", "b"],
        "preprocess": preprocess,
        "counts": COUNTS,
    }
    (folder / "stats.json").write_text(json.dumps(stats))
    return folder


def candidate(folder: Path, data: Path | None) -> Path:
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(["a", "b"]))
    (folder / "model.tflite").write_bytes(b"stand-in")
    lineage = {"data": str(data), "data_hash": "h" * 64} if data else {}
    (folder / "lineage.json").write_text(json.dumps({**lineage, "params": {}}))
    return folder


def publish(tmp_path: Path, data: Path | None) -> Path:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.95, "macro_f1": 0.95}}))
    params = RegistryParams(model_name="m", min_accuracy=0.5)
    record = register(candidate(tmp_path / "c", data), str(metrics), str(tmp_path / "r"), params)
    return Path(record.uri)


def test_the_version_carries_the_training_class_counts(tmp_path: Path) -> None:
    version = publish(tmp_path, processed(tmp_path / "data", "h" * 64))
    classes = TrainingClasses.read(version / "training_classes.json")
    assert classes.counts == {"a": 5, "b": 3} and classes.data_hash == "h" * 64


@pytest.mark.parametrize("case", ["processed again", "data gone", "no data in lineage"])
def test_no_counts_rather_than_wrong_ones(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Counts of other data would skew the drift gauge: the version goes without them."""
    data = {
        "processed again": lambda: processed(tmp_path / "data", "x" * 64),
        "data gone": lambda: tmp_path / "gone",
        "no data in lineage": lambda: None,
    }[case]()
    version = publish(tmp_path, data)
    assert (version / "version.json").is_file()
    assert not (version / "training_classes.json").exists()
    if data is not None:
        assert "no training class counts" in caplog.text


def test_registering_again_adds_the_counts_to_a_version_without_them(tmp_path: Path) -> None:
    """A version published before the counts were recorded (or while the data was away)."""
    first = publish(tmp_path, tmp_path / "data")  # the lineage names data not there yet
    assert not (first / "training_classes.json").exists()
    processed(tmp_path / "data", "h" * 64)
    metrics = tmp_path / "metrics.json"
    params = RegistryParams(model_name="m", min_accuracy=0.5)
    again = register(tmp_path / "c", str(metrics), str(tmp_path / "r"), params)
    assert Path(again.uri) == first, "the same model is the same version"
    assert TrainingClasses.read(first / "training_classes.json").counts == {"a": 5, "b": 3}
