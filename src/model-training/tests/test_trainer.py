import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support import TinyPipeline, run_cli, write_params

from common.contracts import Preprocess
from common.params import RegistryParams
from common.registry import ModelRegistry
from trainer.evaluate import classification_metrics, confusion_matrix, tflite_predict
from trainer.model import build_model
from trainer.register import register


def test_model_takes_raw_pixels_and_outputs_probabilities() -> None:
    model = build_model("small_cnn", Preprocess(image_size=16, color_mode="grayscale"), 10)
    out = model.predict(np.full((2, 16, 16, 1), 255.0, np.float32), verbose=0)
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


# What evaluate wrote for the matrix of test_classification_metrics_by_hand before its
# scores became contract models (issue 12): the bytes must not change.
METRICS_BYTES = """\
{
  "test": {
    "accuracy": 0.6,
    "examples": 5,
    "loss": 0.5,
    "macro_f1": 0.43333333333333335,
    "tflite_accuracy": 0.6
  }
}
"""
EVALUATION_BYTES = """\
{
  "confusion_matrix": [
    [
      1,
      1,
      0
    ],
    [
      0,
      2,
      0
    ],
    [
      1,
      0,
      0
    ]
  ],
  "labels": [
    "a",
    "b",
    "c"
  ],
  "per_class": {
    "a": {
      "precision": 0.5,
      "recall": 0.5,
      "support": 2
    },
    "b": {
      "precision": 0.6666666666666666,
      "recall": 1.0,
      "support": 2
    },
    "c": {
      "precision": 0.0,
      "recall": 0.0,
      "support": 1
    }
  }
}
"""


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="available: small_cnn"):
        build_model("resnet", Preprocess(image_size=16, color_mode="grayscale"), 10)


def test_classification_metrics_by_hand() -> None:
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    matrix = confusion_matrix(true, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores, details = classification_metrics(matrix, ["a", "b", "c"])
    assert scores.accuracy == pytest.approx(0.6)
    assert details.per_class["b"].model_dump() == {
        "precision": 2 / 3,
        "recall": 1.0,
        "support": 2,
    }
    # F1: a = 0.5, b = 0.8, c = 0 → macro 0.4333
    assert scores.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_evaluate_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    """metrics.json and evaluation.json as evaluate writes them, pinned byte for byte."""
    from common.contracts import Metrics, SplitMetrics

    matrix = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    scores, details = classification_metrics(matrix, ["a", "b", "c"])
    test = SplitMetrics(
        accuracy=scores.accuracy, macro_f1=scores.macro_f1, loss=0.5, tflite_accuracy=0.6,
        examples=5,
    )  # fmt: skip
    Metrics(test=test).write(tmp_path / "metrics.json")
    details.write(tmp_path / "evaluation.json")
    assert (tmp_path / "metrics.json").read_text() == METRICS_BYTES
    assert (tmp_path / "evaluation.json").read_text() == EVALUATION_BYTES


def test_evaluate_hands_the_gate_its_numbers_as_metrics_json_holds_them(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    """The kfp pipeline's gate reads --accuracy-file and --macro-f1-file (output
    parameters): bare numbers, the same as metrics.json's, in folders made for them."""
    root = tiny_pipeline.root
    gate = tmp_path / "outputs"
    args = ["--model", "models/candidate", "--data", "data/processed/digits"]
    files = ["--metrics", str(tmp_path / "m.json"), "--details", str(tmp_path / "d.json")]
    numbers = ["--accuracy-file", str(gate / "a/data"), "--macro-f1-file", str(gate / "f/data")]
    run_cli([sys.executable, "-m", "trainer", "evaluate", *args, *files, *numbers], root, {})
    test = json.loads((tmp_path / "m.json").read_text())["test"]
    assert float((gate / "a/data").read_text()) == test["accuracy"]
    assert float((gate / "f/data").read_text()) == test["macro_f1"]


def test_candidate_holds_every_export(tiny_pipeline: TinyPipeline) -> None:
    candidate = tiny_pipeline.candidate
    for name in ("model.keras", "model.tflite", "labels.json", "preprocess.json", "lineage.json"):
        assert (candidate / name).is_file(), name
    assert (candidate / "saved_model" / "saved_model.pb").is_file()
    lineage = json.loads((candidate / "lineage.json").read_text())
    stats = json.loads((tiny_pipeline.processed / "stats.json").read_text())
    assert lineage["data_hash"] == stats["data_hash"]
    assert lineage["params"]["train"]["epochs"] == 6
    # Per-run facts stay out of the DVC-hashed lineage; the run record carries them.
    assert not {"git_sha", "git_dirty", "wandb_run_id", "trained_at"} & lineage.keys()
    run = json.loads((candidate / "training_run.json").read_text())
    assert {"wandb_run_id", "trained_at", "model_hash"} <= run.keys()


def test_tiny_model_learns_and_tflite_agrees(tiny_pipeline: TinyPipeline) -> None:
    metrics = json.loads((tiny_pipeline.root / "reports/metrics.json").read_text())["test"]
    assert metrics["accuracy"] >= 0.8, metrics
    assert abs(metrics["tflite_accuracy"] - metrics["accuracy"]) <= 0.02

    import keras

    from common.images import decode_image, to_model_pixels

    spec = Preprocess(image_size=16, color_mode="grayscale")
    paths = [path for path, _ in tiny_pipeline.test_images()[:20]]
    images = np.stack([to_model_pixels(decode_image(p.read_bytes()), spec) for p in paths])
    keras_pred = keras.models.load_model(tiny_pipeline.candidate / "model.keras").predict(
        images.astype(np.float32), verbose=0
    )
    assert np.array_equal(
        tflite_predict(tiny_pipeline.candidate / "model.tflite", images), keras_pred.argmax(axis=1)
    )


def metrics_file(tmp_path: Path, accuracy: float) -> str:
    path = tmp_path / f"metrics-{accuracy}.json"
    test = {"accuracy": accuracy, "macro_f1": accuracy, "examples": 10}
    path.write_text(json.dumps({"test": test}))
    return str(path)


def test_gate_promotes_only_above_the_threshold(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    params = RegistryParams(model_name="gate", min_accuracy=0.9)
    registry_root = str(tmp_path / "registry")

    first = register(tiny_pipeline.candidate, metrics_file(tmp_path, 0.95), registry_root, params)
    assert first.promoted and first.version == "1"

    worse = register(tiny_pipeline.candidate, metrics_file(tmp_path, 0.5), registry_root, params)
    assert not worse.promoted and worse.version == "2"
    assert "0.5000 < threshold 0.9000" in worse.reason

    registry = ModelRegistry(registry_root, "gate")
    assert registry.aliases() == {"production": "1", "candidate": "2"}
    version = tmp_path / "registry/gate/1"
    assert (version / "model.tflite").is_file() and (version / "saved_model").is_dir()
    assert "Test metrics" in (version / "model_card.md").read_text()

    again = register(tiny_pipeline.candidate, metrics_file(tmp_path, 0.95), registry_root, params)
    assert again.version == "1", "the same candidate and metrics must not make a new version"


@pytest.mark.slow
def test_wandb_offline_run_records_the_metrics(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"epochs": 1, "tracking": "wandb"}})
    run_cli(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            "--data",
            str(tiny_pipeline.processed),
            "--out",
            "candidate",
        ],
        tmp_path,
        env={"MEGA_WANDB_MODE": "offline", "MEGA_WANDB_DIR": "runs", "WANDB_API_KEY": ""},
    )
    run_id = json.loads((tmp_path / "candidate/training_run.json").read_text())["wandb_run_id"]
    assert run_id
    [run_file] = (tmp_path / "runs").rglob(f"run-{run_id}.wandb")
    records = run_file.read_bytes()
    stats = json.loads((tiny_pipeline.processed / "stats.json").read_text())
    for key in (
        b"epoch/accuracy",  # per-epoch metrics
        b"epoch/val_loss",
        b"data_hash",  # the data version, with the params
        stats["data_hash"].encode(),
        b"learning_rate",
        b"val/confusion_matrix",  # the validation confusion matrix
        b"digits-small_cnn",  # the model artifact…
        b"candidate",  # …with its aliases
        f"data-{stats['data_hash'][:12]}".encode(),
    ):
        assert key in records, key


def test_train_report_formats_every_case_of_the_summary() -> None:
    """The lines `trainer train` prints, as before the summary became typed."""
    from trainer.__main__ import train_report
    from trainer.train import TrainSummary

    chief = TrainSummary(
        epochs=3,
        resumed_from=0,
        seconds=6.61,
        final={"loss": 0.1, "val_accuracy": 0.99},
        strategy="default",
        replicas=1,
        global_batch_size=64,
        task="chief",
        workers=1,
        is_chief=True,
        wandb_run_id=None,
        wandb_dir=None,
        removed_backups=[],
    )
    assert train_report(chief, "models/candidate") == [
        "train: 3 epochs in 6.6s, val accuracy 0.9900 (strategy default, 1 replica(s), "
        "global batch 64); candidate in models/candidate"
    ]
    resumed = dataclasses.replace(
        chief,
        resumed_from=1,
        final={"loss": 0.1},  # no val split
        wandb_run_id="abc",
        wandb_dir=".wandb/wandb/offline-run-x",
        removed_backups=[(".mega/runs/a", 1_500_000), (".mega/runs/b", 500_000)],
    )
    assert train_report(resumed, "out") == [
        "train: removed 2 old backup(s) of runs with other parameters (2.0 MB): "
        ".mega/runs/a, .mega/runs/b",
        "train: 3 epochs in 6.6s, resumed after epoch 1, val accuracy nan (strategy default, "
        "1 replica(s), global batch 64); candidate in out; W&B run abc in "
        ".wandb/wandb/offline-run-x",
    ]
    worker = dataclasses.replace(
        chief, task="worker-1", workers=2, is_chief=False, strategy="multiworker", replicas=2
    )
    assert train_report(worker, "out") == [
        "train: worker-1 finished 3 epochs (strategy multiworker, 2 replica(s) on 2 workers); "
        "only the chief exports, this worker's copy was discarded"
    ]
