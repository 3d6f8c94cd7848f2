"""Train the classifier on the processed shards and export the candidate.

`train` runs steps, each a short function with a typed result: set up the strategy,
read the inputs and build the models (trainer.prepare), open the run folder
(trainer.runs), fit, report to the tracker, export, clean up. It returns a
`TrainSummary`, which the CLI formats.

Fault tolerance: each worker backs its state up at every epoch end under the run
directory (`BackupAndRestore`, local or gs://), with the per-epoch history beside
it, so a killed run started again with the same inputs resumes where it stopped.
The run directory is removed once the candidate is exported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import storage
from common.contracts import EPOCH_LOG
from common.params import PipelineParams
from common.settings import Settings
from trainer.data import steps_per_epoch
from trainer.distribute import Task, patch_keras_for_multiworker
from trainer.evaluate import confusion_matrix
from trainer.export import export_atomically, export_model
from trainer.lineage import build_lineage
from trainer.prepare import Inputs, Models, Setup, build_models, read_inputs, set_up
from trainer.runs import RunFolder, clean_up, open_run
from trainer.tracking import Tracker

# Where Vertex AI wants TensorBoard logs written.
TENSORBOARD_DIR = "AIP_TENSORBOARD_LOG_DIR"


class EpochHistory(keras.callbacks.Callback):
    """Per-epoch metrics kept in the run directory, so a resumed run has every epoch.

    It sits before `BackupAndRestore` in the callback list: an epoch's row is
    written before its backup, and a row whose backup never happened is dropped
    when that epoch runs again.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri
        self.rows: list[dict[str, float]] = []
        self.first_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.rows = storage.read_json(self.uri) if storage.exists(self.uri) else []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
        del self.rows[epoch:]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": float(epoch + 1), **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        storage.write_json(self.uri, self.rows)


def _predict_classes(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted classes, computed locally (no distributed step, so the chief
    can do it alone while other workers have finished)."""
    true, pred = [], []
    for images, labels in dataset:
        pred.append(np.asarray(model(images, training=False)).argmax(axis=1))
        true.append(labels.numpy())
    return np.concatenate(true), np.concatenate(pred)


@dataclass(frozen=True)
class Fit:
    """What `model.fit` did, over every epoch including those of an interrupted run."""

    epochs: int
    resumed_from: int  # epochs an earlier, killed run had finished (0: a fresh start)
    seconds: float  # wall time of this process's fit
    curves: dict[str, list[float]]  # per metric (loss, val_accuracy, ...), one per epoch


@dataclass(frozen=True)
class TrainSummary:
    """What `train` did, for the CLI to report; `asdict` gives a JSON-ready mapping."""

    epochs: int
    resumed_from: int
    seconds: float
    final: dict[str, float]  # each metric after the last epoch
    strategy: str
    replicas: int
    global_batch_size: int
    task: str  # chief or worker-<i>
    workers: int
    is_chief: bool  # only the chief exports the candidate
    wandb_run_id: str | None
    wandb_dir: str | None
    removed_backups: list[tuple[str, int]]


@contextlib.contextmanager
def tracking(
    params: PipelineParams,
    settings: Settings,
    data: str,
    inputs: Inputs,
    setup: Setup,
    run: RunFolder,
) -> Iterator[Tracker]:
    """A W&B run (resumed when `run` kept the id of an interrupted one), finished on exit.

    Only the chief tracks: other workers' metrics are the same numbers.
    """
    tracker = Tracker(
        enabled=params.train.tracking == "wandb" and setup.task.is_chief, settings=settings
    )
    previous_id = storage.read_text(run.wandb_id).strip() if storage.exists(run.wandb_id) else None
    tracker.start(
        config={
            **params.model_dump(),
            "data": data,
            "data_hash": inputs.data_hash,
            "strategy": setup.strategy,
            "replicas": setup.replicas,
            "workers": setup.task.num_workers,
            "global_batch_size": setup.global_batch,
        },
        job_type="train",
        run_id=previous_id,
    )
    try:
        if tracker.run_id and tracker.run_id != previous_id:
            storage.write_text(run.wandb_id, tracker.run_id)
        yield tracker
    finally:
        tracker.finish()


def validation(inputs: Inputs, setup: Setup) -> tuple[tf.data.Dataset | None, int | None]:
    """The validation data for `fit` and its steps (None: until the data ends).

    Keras runs whole executions of `steps_per_execution` steps, so on an endless dataset
    it rounds the validation steps up and scores some images twice. With one replica
    (the only case where steps_per_execution exceeds 1) the split is given once, finite;
    several replicas keep the endless dataset with an exact step count.
    """
    if inputs.val is None:
        return None, None
    if setup.replicas == 1:
        return inputs.val, None
    return inputs.val.repeat(), steps_per_epoch(inputs.totals["val"], setup.global_batch)


def fit(
    models: Models,
    inputs: Inputs,
    setup: Setup,
    epochs: int,
    run: RunFolder,
    callbacks: Sequence[keras.callbacks.Callback],
) -> Fit:
    """Fit for `epochs` in all, resuming from `run`'s backup; `callbacks` run after it."""
    history = EpochHistory(storage.join(run.worker, EPOCH_LOG))
    backup = keras.callbacks.BackupAndRestore(
        storage.join(run.worker, "backup"), double_checkpoint=True, delete_checkpoint=False
    )
    if setup.task.num_workers > 1:
        patch_keras_for_multiworker()
        # Keras 3 pins the strategy on the model and, before the first step, reduces
        # a sample (x, y) batch across workers, which MultiWorkerMirroredStrategy
        # rejects. Unpinned, the model builds while tracing the train step, under
        # the same strategy through the scope below.
        for pinned in (models.fitted, models.serving):
            pinned._distribute_strategy = None
    train_steps = steps_per_epoch(inputs.totals["train"], setup.global_batch)
    val, val_steps = validation(inputs, setup)
    started = time.monotonic()
    with setup.distribution.scope():
        # Endless datasets with a fixed number of steps keep one iterator for the
        # whole run. A fresh iterator each epoch costs little alone, but under a
        # distribution strategy it re-traces and re-creates per-device buffers:
        # about a fifth of each short epoch here (benchmarks/train.py).
        models.fitted.fit(
            inputs.train.repeat(),
            steps_per_epoch=train_steps,
            validation_data=val,
            validation_steps=val_steps,
            epochs=epochs,
            callbacks=[history, backup, *callbacks],
            shuffle=False,  # the dataset shuffles itself
            verbose=2,
        )
    seconds = time.monotonic() - started
    rows = history.rows
    curves = {key: [row[key] for row in rows] for key in rows[-1] if key != "epoch"}
    resumed_from = epochs if history.first_epoch is None else history.first_epoch
    return Fit(epochs=len(rows), resumed_from=resumed_from, seconds=seconds, curves=curves)


def tensorboard(task: Task) -> list[keras.callbacks.Callback]:
    """A TensorBoard callback writing to `AIP_TENSORBOARD_LOG_DIR` (a folder or gs:// URI,
    set by Vertex AI for a job with a TensorBoard), on the chief only; else none.

    Other workers' curves are the same numbers, and several writers in one folder would
    show each epoch several times.
    """
    log_dir = os.environ.get(TENSORBOARD_DIR)
    if not log_dir or not task.is_chief:
        return []
    return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")]


def report(
    tracker: Tracker, serving: keras.Model, inputs: Inputs, fitted: Fit, replicas: int
) -> None:
    """Send the validation confusion matrix and the run's timing to the tracker."""
    if inputs.val is not None and tracker.run is not None:
        true, pred = _predict_classes(serving, inputs.val)
        tracker.log_confusion_matrix("val/confusion_matrix", true, pred, inputs.labels)
        counts = confusion_matrix(true, pred, len(inputs.labels)).tolist()
        tracker.summary({"val/confusion_matrix_counts": counts})
    tracker.summary({"train_seconds": fitted.seconds, "replicas": replicas})


def export(
    serving: keras.Model,
    out: str,
    params: PipelineParams,
    data: str,
    inputs: Inputs,
    fitted: Fit,
    task: Task,
    tracker: Tracker,
) -> str | None:
    """Export the candidate with its sidecars to `out`; returns `out`, or None off the chief.

    Saving may involve every worker, so non-chief workers save too, then throw their
    copy away: only the chief writes artifacts (and logs them to the tracker).
    """
    lineage = build_lineage(
        data=data, data_hash=inputs.data_hash, params=params.model_dump(), wandb_run=tracker.run_id
    )
    sidecars: dict[str, Any] = {
        "labels": inputs.labels,
        "spec": inputs.spec,
        "lineage": lineage,
        "history": fitted.curves,
    }
    if not task.is_chief:
        with tempfile.TemporaryDirectory(prefix=f"trainer-{task.tag}-") as tmp:
            export_model(serving, Path(tmp), with_tflite=False, **sidecars)
        return None

    def log_model(folder: Path) -> None:
        tracker.log_model(
            folder,
            f"{params.dataset}-{params.train.model}",
            aliases=["candidate", f"data-{inputs.data_hash[:12]}"],
        )

    export_atomically(serving, out, on_staged=log_model, **sidecars)
    return out


def train(
    data: str,
    out: str,
    params: PipelineParams,
    settings: Settings,
    *,
    strategy: str = "auto",
    run_dir: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainSummary:
    """Fit the model named in params on `data` and export it to `out`.

    `callbacks` run after the trainer's own (after the epoch's backup).

    Raises:
        FileNotFoundError, ValueError: the processed data is incomplete or invalid.
        StrategyError, budget.TooLargeError, WeightsUnavailableError: see each step.
    """
    cfg = params.train
    setup = set_up(strategy, cfg.seed, cfg.batch_size)
    inputs = read_inputs(data, cfg, setup)
    models = build_models(params, inputs, setup)
    run = open_run(out, params, inputs.data_hash, setup.task, run_dir)
    with tracking(params, settings, data, inputs, setup, run) as tracker:
        fitted = fit(
            models,
            inputs,
            setup,
            cfg.epochs,
            run,
            [*tracker.callbacks(), *tensorboard(setup.task), *callbacks],
        )
        report(tracker, models.serving, inputs, fitted, setup.replicas)
        export(models.serving, out, params, data, inputs, fitted, setup.task, tracker)
    clean_up(run, setup.task)
    return TrainSummary(
        epochs=fitted.epochs,
        resumed_from=fitted.resumed_from,
        seconds=fitted.seconds,
        final={key: values[-1] for key, values in fitted.curves.items()},
        strategy=setup.strategy,
        replicas=setup.replicas,
        global_batch_size=setup.global_batch,
        task=setup.task.tag,
        workers=setup.task.num_workers,
        is_chief=setup.task.is_chief,
        wandb_run_id=tracker.run_id,
        wandb_dir=tracker.run_dir,
        removed_backups=run.removed,
    )
