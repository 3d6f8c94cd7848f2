"""Train the classifier on the processed shards and export the candidate."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from common import storage
from common.contracts import LABELS, PREPROCESS, STATS, Preprocess, read_labels
from common.params import PipelineParams
from common.settings import Settings
from trainer.data import make_dataset
from trainer.export import export_model
from trainer.lineage import build_lineage
from trainer.model import build_model
from trainer.tracking import Tracker


def train(data: str, out: str, params: PipelineParams, settings: Settings) -> dict[str, Any]:
    """Fit the model named in params on `data` and export it to `out`; returns a summary."""
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    spec = Preprocess.model_validate(storage.read_json(storage.join(data, PREPROCESS)))
    labels = read_labels(storage.join(data, LABELS))
    stats = storage.read_json(storage.join(data, STATS))
    totals = stats["totals"]
    train_ds = make_dataset(
        data,
        "train",
        channels=spec.channels,
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        count=totals["train"],
    )
    val_ds = (
        make_dataset(
            data, "val", channels=spec.channels, batch_size=cfg.batch_size, count=totals["val"]
        )
        if totals.get("val")
        else None
    )

    model = build_model(cfg.model, spec, len(labels))
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    tracker = Tracker(enabled=cfg.tracking == "wandb", settings=settings)
    tracker.start(config={**params.model_dump(), "data_hash": stats["data_hash"]}, job_type="train")
    started = time.monotonic()
    try:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            callbacks=tracker.callbacks(),
            shuffle=False,  # the dataset shuffles itself
            verbose=2,
        )
        seconds = time.monotonic() - started
        curves = {k: [float(v) for v in values] for k, values in history.history.items()}
        tracker.summary({"train_seconds": seconds})
        lineage = build_lineage(
            data=data,
            data_hash=stats["data_hash"],
            params=params.model_dump(),
            wandb_run=tracker.run_id,
        )
        _export_atomically(model, out, labels=labels, spec=spec, lineage=lineage, history=curves)
    finally:
        tracker.finish()
    return {
        "epochs": cfg.epochs,
        "seconds": seconds,
        "final": {k: v[-1] for k, v in curves.items()},
        "wandb_run_id": tracker.run_id,
        "wandb_dir": tracker.run_dir,
    }


def _export_atomically(model: keras.Model, out: str, **sidecars: Any) -> None:
    """Export into a staging folder, then swap it in (or upload it for gs://)."""
    if storage.is_gcs(out):
        with tempfile.TemporaryDirectory(prefix="trainer-") as tmp:
            export_model(model, Path(tmp), **sidecars)
            storage.upload_tree(tmp, out)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)
    try:
        export_model(model, staging, **sidecars)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
