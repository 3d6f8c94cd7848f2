"""The registry gate judges class balance too: a model blind to a class never becomes production.

These tests build candidate folders and metrics files by hand (the gate only copies the
model), so they need no training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.params import RegistryParams
from common.registry import ModelRegistry
from trainer.evaluate import classification_metrics, confusion_matrix
from trainer.register import register


def candidate(tmp_path: Path, labels: list[str], name: str = "candidate") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "preprocess.json").write_text(
        json.dumps({"image_size": 16, "color_mode": "grayscale", "resize": "stretch"})
    )
    (folder / "lineage.json").write_text(json.dumps({"trained_at": "t", "params": {}}))
    (folder / "model.tflite").write_bytes(b"stand-in for the model: the gate only copies it")
    return folder


def metrics(tmp_path: Path, accuracy: float, macro_f1: float) -> str:
    path = tmp_path / f"metrics-{accuracy}-{macro_f1}.json"
    test = {"accuracy": accuracy, "macro_f1": macro_f1, "examples": 180}
    path.write_text(json.dumps({"test": test}))
    return str(path)


def gate_params() -> RegistryParams:
    return RegistryParams.model_validate(
        {"model_name": "gate", "min_accuracy": 0.9, "min_macro_f1": 0.85}
    )


def test_zero_recall_on_a_small_class_is_not_promoted(tmp_path: Path) -> None:
    """170 test images of one class, 10 of another, the small one never predicted."""
    true = np.array([0] * 170 + [1] * 10)
    matrix = confusion_matrix(true, np.zeros_like(true), 2)
    scores, details = classification_metrics(matrix, ["common", "rare"])
    assert details.per_class["rare"].recall == 0.0
    path = metrics(tmp_path, scores.accuracy, scores.macro_f1)
    record = register(
        candidate(tmp_path, ["common", "rare"]), path, str(tmp_path / "r"), gate_params()
    )
    assert not record.promoted
    assert "macro F1 0.4857 < threshold 0.8500" in record.reason
    assert "test accuracy 0.9444 ≥ threshold 0.9000" in record.reason
    assert ModelRegistry(tmp_path / "r", "gate").aliases() == {"candidate": "1"}


def test_balanced_model_is_promoted_and_the_reason_shows_both_checks(tmp_path: Path) -> None:
    path = metrics(tmp_path, 0.95, 0.94)
    record = register(candidate(tmp_path, ["a", "b"]), path, str(tmp_path / "r"), gate_params())
    assert record.promoted
    assert record.reason == (
        "test accuracy 0.9500 ≥ threshold 0.9000, macro F1 0.9400 ≥ threshold 0.8500; "
        "first production model"
    )


def test_macro_f1_below_the_floor_keeps_production(tmp_path: Path) -> None:
    root = str(tmp_path / "r")
    register(
        candidate(tmp_path, ["a", "b"], "one"), metrics(tmp_path, 0.95, 0.94), root, gate_params()
    )
    better_but_blind = metrics(tmp_path, 0.99, 0.6)
    record = register(candidate(tmp_path, ["a", "b"], "two"), better_but_blind, root, gate_params())
    assert not record.promoted and "macro F1 0.6000 < threshold 0.8500" in record.reason
    assert ModelRegistry(root, "gate").aliases() == {"production": "1", "candidate": "2"}


def test_a_one_class_model_is_never_promoted(tmp_path: Path) -> None:
    path = metrics(tmp_path, 1.0, 1.0)
    record = register(candidate(tmp_path, ["cat"]), path, str(tmp_path / "r"), gate_params())
    assert not record.promoted
    assert "1 class ('cat')" in record.reason and "production is unchanged" in record.reason


def test_metrics_without_macro_f1_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test": {"accuracy": 0.99}}))
    with pytest.raises(ValueError, match=r"test\.macro_f1.*evaluate"):
        register(candidate(tmp_path, ["a", "b"]), str(path), str(tmp_path / "r"), gate_params())


def register_cli(cwd: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m trainer register ARGS --registry r` in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", "register", *args, "--registry", "r"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_register_line_reports_macro_f1(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"registry": {"model_name": "gate", "min_macro_f1": 0.85}})
    )
    folder = candidate(tmp_path, ["common", "rare"])
    args = ["--model", str(folder), "--metrics", metrics(tmp_path, 0.9444, 0.4857)]
    result = register_cli(tmp_path, args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("register: gate version 1 kept as candidate (")
    assert "macro F1 0.4857 < threshold 0.8500; production is unchanged" in result.stdout


def test_registering_production_again_says_it_stays(tmp_path: Path) -> None:
    """Regression: the second line read "promoted to production (already production (…))"."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": "gate"}}))
    folder = candidate(tmp_path, ["common", "rare"])
    args = ["--model", str(folder), "--metrics", metrics(tmp_path, 0.98, 0.97)]
    first, again = register_cli(tmp_path, args), register_cli(tmp_path, args)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout.startswith("register: gate version 1 promoted to production (")
    assert again.stdout.startswith(
        "register: gate version 1 stays production "
        "(nothing changed since it was registered, test accuracy 0.9800); in "
    )
    assert ModelRegistry(tmp_path / "r", "gate").aliases() == {"production": "1"}


@pytest.mark.parametrize(
    ("raised", "verdict"),
    [
        ({"min_accuracy": 0.99}, "test accuracy 0.9800 < threshold 0.9900"),
        ({"min_macro_f1": 0.98}, "macro F1 0.9700 < threshold 0.9800"),
    ],
)
def test_production_registered_again_under_raised_thresholds_stays_production(
    tmp_path: Path, raised: dict[str, float], verdict: str
) -> None:
    """Regression: the line read "kept as candidate", and the production version got the
    candidate alias too, while it stayed production (the gate never demotes)."""
    folder = candidate(tmp_path, ["a", "b"])
    scores, root = metrics(tmp_path, 0.98, 0.97), str(tmp_path / "r")
    first = register(folder, scores, root, gate_params())
    stricter = gate_params().model_copy(update=raised)
    again = register(folder, scores, root, stricter)
    assert again.version == first.version
    assert again.promoted and again.was_production
    assert again.reason == (
        f"nothing changed since it was registered; now below a threshold: {verdict}; the gate "
        "never demotes, so it stays until a model meets the thresholds and beats its test "
        "accuracy by the margin 0.0050"
    )
    assert ModelRegistry(root, "gate").aliases() == {"production": first.version}


def test_a_one_class_production_version_registered_again_stays_production(tmp_path: Path) -> None:
    # Only a registry from before the one-class check (or an alias set by hand) has one.
    folder, root = candidate(tmp_path, ["only"]), str(tmp_path / "r")
    scores = metrics(tmp_path, 1.0, 1.0)
    first = register(folder, scores, root, gate_params())
    assert not first.promoted
    ModelRegistry(root, "gate").set_alias("production", first.version)
    again = register(folder, scores, root, gate_params())
    assert again.promoted and again.was_production
    assert again.reason.startswith("nothing changed since it was registered")


def test_an_alias_left_on_a_deleted_version_is_no_production(tmp_path: Path) -> None:
    """publish reuses a deleted version's number; the new model there is not "unchanged"."""
    first = register(
        candidate(tmp_path, ["a", "b"]), metrics(tmp_path, 0.98, 0.97), str(tmp_path / "r"),
        gate_params(),
    )  # fmt: skip
    assert first.promoted and not first.was_production
    shutil.rmtree(tmp_path / "r" / "gate" / first.version)  # aliases.json still names it
    other = candidate(tmp_path, ["a", "b"], name="other")
    (other / "model.tflite").write_bytes(b"another model")
    again = register(other, metrics(tmp_path, 0.95, 0.94), str(tmp_path / "r"), gate_params())
    assert again.version == first.version  # the number, reused
    assert again.promoted and not again.was_production
    assert again.reason.endswith("; first production model")


def test_the_cli_reaches_the_gate_for_a_one_class_model(tmp_path: Path) -> None:
    """The candidate's checks take its labels' shape only; the gate says why it stays candidate."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": "gate"}}))
    args = ["--model", str(candidate(tmp_path, ["cat"])), "--metrics", metrics(tmp_path, 1.0, 1.0)]
    result = register_cli(tmp_path, args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("register: gate version 1 kept as candidate (")
    assert "the model knows 1 class ('cat')" in result.stdout
    assert ModelRegistry(tmp_path / "r", "gate").aliases() == {"candidate": "1"}


@pytest.mark.parametrize(
    ("test", "problem"),
    [
        ({"accuracy": 98, "macro_f1": 0.9}, "test.accuracy: Input should be less than or equal"),
        ({"accuracy": 0.9, "macro_f1": "good"}, "test.macro_f1: Input should be a valid number"),
        ({"accuracy": 0.9}, "test.macro_f1: Field required"),
    ],
)
def test_register_validates_metrics_like_the_cli(
    test: dict[str, object], problem: str, tmp_path: Path
) -> None:
    """`register()` called directly (as a notebook or a pipeline would) checks metrics.json
    with the CLI's validator, and publishes nothing."""
    from trainer.inputs import InputError

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test": test}))
    root = tmp_path / "r"
    with pytest.raises(InputError, match="evaluate stage") as caught:
        register(candidate(tmp_path, ["a", "b"]), str(path), str(root), gate_params())
    assert problem in str(caught.value)
    assert not root.exists()
