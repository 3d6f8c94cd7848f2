"""Train the classifier on the processed shards and export the candidate.

Fault tolerance: each worker backs its state up at every epoch end under the run
directory (`BackupAndRestore`, local or gs://), with the per-epoch history beside
it, so a killed run started again with the same inputs resumes where it stopped.
The run directory is removed once the candidate is exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common import storage
from common.contracts import EPOCH_LOG, LABELS, PREPROCESS, STATS, Preprocess, Stats, read_labels
from common.params import PipelineParams
from common.settings import Settings
from trainer import budget
from trainer.data import fits_in_cache, make_dataset, steps_per_epoch
from trainer.distribute import make_strategy, patch_keras_for_multiworker, strategy_label
from trainer.evaluate import confusion_matrix
from trainer.export import export_model
from trainer.lineage import build_lineage
from trainer.model import build_model, with_augmentation
from trainer.tracking import Tracker

RUNS_ROOT = ".mega/runs"
WANDB_ID = "wandb_run_id.txt"


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


def default_run_dir(out: str, params: PipelineParams, data_hash: str) -> str:
    """Vertex AI's checkpoint folder, else `.mega/runs/<key>`.

    The key covers the output, the training parameters and the data version, so
    only a restart of the same run finds (and resumes) its backup.
    """
    if os.environ.get("AIP_CHECKPOINT_DIR"):
        return os.environ["AIP_CHECKPOINT_DIR"]
    key = json.dumps(
        {"out": out, "train": params.train.model_dump(), "data_hash": data_hash}, sort_keys=True
    )
    return storage.join(RUNS_ROOT, hashlib.sha256(key.encode()).hexdigest()[:16])


# A backup touched within this long may belong to a training running now in the same
# checkout (one epoch of a large model can take over an hour) or to a run killed today
# that the user will start again: never removed. Older ones are kept newest first up to
# STALE_BACKUPS_KEPT, so a long run interrupted last week can still resume.
RECENT_BACKUP_SECONDS = 24 * 3600
STALE_BACKUPS_KEPT = 2


def _last_modified(folder: Path) -> float:
    """The newest modification time (s since the epoch) of `folder` and all it holds."""
    return max(
        (p.stat().st_mtime for p in (folder, *folder.rglob("*"))),
        default=folder.stat().st_mtime,
    )


def remove_stale_runs(
    keep: str,
    root: str = RUNS_ROOT,
    *,
    now: float | None = None,
    recent_seconds: float = RECENT_BACKUP_SECONDS,
    keep_old: int = STALE_BACKUPS_KEPT,
) -> list[tuple[str, int]]:
    """Bound the backups other runs left under `root`; returns each removed (folder, bytes).

    A backup is only ever resumed by a run with the same key (the same output,
    parameters and data), so those of killed runs with other parameters would stay
    on disk for good. `keep` (this run's folder) and every backup modified in the
    last `recent_seconds` (a live or just-killed run) stay; of the older ones the
    `keep_old` most recently modified stay, and the rest are deleted. `now` is the
    reference time in seconds since the epoch (default: the clock).
    """
    folder = Path(root)
    if storage.is_gcs(root) or not folder.is_dir():
        return []
    now = time.time() if now is None else now
    others = [
        (_last_modified(run), run)
        for run in folder.iterdir()
        if run.is_dir() and run.resolve() != Path(keep).resolve()
    ]
    old = sorted(
        ((mtime, run) for mtime, run in others if now - mtime >= recent_seconds), reverse=True
    )
    removed = []
    for _, run in old[keep_old:]:
        size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
        shutil.rmtree(run, ignore_errors=True)
        removed.append((str(run), size))
    return sorted(removed)


def _check_memory(
    model: keras.Model, params: PipelineParams, spec: Preprocess, totals: dict[str, int], step: int
) -> None:
    """Refuse (`budget.TooLargeError`) a training whose estimated peak memory does not fit."""
    cached = [n for n in (totals.get("train", 0), totals.get("val", 0)) if n]
    cache_bytes = sum(
        n * math.prod(spec.shape) for n in cached if fits_in_cache(n, spec, params.train.cache_mb)
    )
    budget.check_fits(
        budget.estimate(model, step, cache_bytes),
        budget.available_memory(),
        model=params.train.model,
        image="×".join(str(d) for d in spec.shape),
        batch_size=params.train.batch_size,
    )


def remove_tree(uri: str) -> None:
    """Delete a local folder or every object under a gs:// prefix."""
    if storage.is_gcs(uri):
        for name in list(storage.list_files(uri)):
            storage.delete(name)
    else:
        shutil.rmtree(uri, ignore_errors=True)


def _predict_classes(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted classes, computed locally (no distributed step, so the chief
    can do it alone while other workers have finished)."""
    true, pred = [], []
    for images, labels in dataset:
        pred.append(np.asarray(model(images, training=False)).argmax(axis=1))
        true.append(labels.numpy())
    return np.concatenate(true), np.concatenate(pred)


def train(
    data: str,
    out: str,
    params: PipelineParams,
    settings: Settings,
    *,
    strategy: str = "auto",
    run_dir: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Fit the model named in params on `data` and export it to `out`; returns a summary.

    `callbacks` run after the trainer's own (after the epoch's backup).
    """
    # First: MultiWorkerMirroredStrategy must set up collectives before any other op.
    distribution, task = make_strategy(strategy)
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    spec = Preprocess.read(storage.join(data, PREPROCESS))
    labels = read_labels(storage.join(data, LABELS))
    stats = Stats.read(storage.join(data, STATS))
    totals = stats.totals
    replicas = int(distribution.num_replicas_in_sync)
    strategy_name = strategy_label(distribution)
    global_batch = cfg.batch_size * replicas
    common_args = {"spec": spec, "batch_size": global_batch, "cache_mb": cfg.cache_mb}
    train_ds = make_dataset(
        data,
        "train",
        shuffle=True,
        seed=cfg.seed,
        count=totals["train"],
        shuffle_buffer=cfg.shuffle_buffer,
        **common_args,  # type: ignore[arg-type]
    )
    val_ds = (
        make_dataset(data, "val", count=totals["val"], **common_args)  # type: ignore[arg-type]
        if totals.get("val")
        else None
    )
    if task.num_workers > 1:
        # Shards are few and uneven: each worker reads them all and keeps every
        # n-th example, rather than splitting by file.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        train_ds = train_ds.with_options(options)
        val_ds = val_ds.with_options(options) if val_ds is not None else None

    with distribution.scope():
        serving = build_model(
            cfg.model, spec, len(labels), weights=cfg.weights, fine_tune_layers=cfg.fine_tune_layers
        )
        # Fit through the random layers; export `serving`, which shares the weights.
        model = with_augmentation(serving, spec, cfg.augment)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            # Keras 3.15 fails to trace several steps per execution across replicas
            # ("must feed a value for placeholder ... while/cond"): one step per call there.
            steps_per_execution=cfg.steps_per_execution if replicas == 1 else 1,
        )

    # Examples one step holds in this process's memory (replicas on this machine).
    _check_memory(model, params, spec, totals, global_batch // max(task.num_workers, 1))

    run = run_dir or default_run_dir(out, params, stats.data_hash)
    stale: list[tuple[str, int]] = []
    if run_dir is None and task.is_chief and not os.environ.get("AIP_CHECKPOINT_DIR"):
        stale = remove_stale_runs(run)
    worker_dir = storage.join(run, task.tag)  # each worker backs up its own copy
    history = EpochHistory(storage.join(worker_dir, EPOCH_LOG))
    backup = keras.callbacks.BackupAndRestore(
        storage.join(worker_dir, "backup"), double_checkpoint=True, delete_checkpoint=False
    )
    # Only the chief tracks: other workers' metrics are the same numbers.
    tracker = Tracker(enabled=cfg.tracking == "wandb" and task.is_chief, settings=settings)
    wandb_id_uri = storage.join(run, WANDB_ID)
    previous_id = storage.read_text(wandb_id_uri).strip() if storage.exists(wandb_id_uri) else None
    tracker.start(
        config={
            **params.model_dump(),
            "data": data,
            "data_hash": stats.data_hash,
            "strategy": strategy_name,
            "replicas": replicas,
            "workers": task.num_workers,
            "global_batch_size": global_batch,
        },
        job_type="train",
        run_id=previous_id,
    )
    try:
        if tracker.run_id and tracker.run_id != previous_id:
            storage.write_text(wandb_id_uri, tracker.run_id)
        if task.num_workers > 1:
            patch_keras_for_multiworker()
            # Keras 3 pins the strategy on the model and, before the first step, reduces
            # a sample (x, y) batch across workers, which MultiWorkerMirroredStrategy
            # rejects. Unpinned, the model builds while tracing the train step, under
            # the same strategy through the scope below.
            for pinned in (model, serving):
                pinned._distribute_strategy = None
        started = time.monotonic()
        with distribution.scope():
            # Endless datasets with a fixed number of steps keep one iterator for the
            # whole run. A fresh iterator each epoch costs little alone, but under a
            # distribution strategy it re-traces and re-creates per-device buffers:
            # about a fifth of each short epoch here (benchmarks/train.py).
            model.fit(
                train_ds.repeat(),
                steps_per_epoch=steps_per_epoch(totals["train"], global_batch),
                validation_data=val_ds.repeat() if val_ds is not None else None,
                validation_steps=(
                    steps_per_epoch(totals["val"], global_batch) if val_ds is not None else None
                ),
                epochs=cfg.epochs,
                callbacks=[history, backup, *tracker.callbacks(), *callbacks],
                shuffle=False,  # the dataset shuffles itself
                verbose=2,
            )
        seconds = time.monotonic() - started
        curves = {
            key: [row[key] for row in history.rows] for key in history.rows[-1] if key != "epoch"
        }
        if val_ds is not None and tracker.run is not None:
            true, pred = _predict_classes(serving, val_ds)
            tracker.log_confusion_matrix("val/confusion_matrix", true, pred, labels)
            tracker.summary(
                {"val/confusion_matrix_counts": confusion_matrix(true, pred, len(labels)).tolist()}
            )
        tracker.summary({"train_seconds": seconds, "replicas": replicas})
        lineage = build_lineage(
            data=data,
            data_hash=stats.data_hash,
            params=params.model_dump(),
            wandb_run=tracker.run_id,
        )
        sidecars: dict[str, Any] = {
            "labels": labels,
            "spec": spec,
            "lineage": lineage,
            "history": curves,
        }
        if task.is_chief:

            def log_model(folder: Path) -> None:
                tracker.log_model(
                    folder,
                    f"{params.dataset}-{cfg.model}",
                    aliases=["candidate", f"data-{stats.data_hash[:12]}"],
                )

            _export_atomically(serving, out, on_staged=log_model, **sidecars)
        else:
            # Saving may involve every worker, so non-chief workers save too, then
            # throw their copy away: only the chief writes artifacts.
            with tempfile.TemporaryDirectory(prefix=f"trainer-{task.tag}-") as tmp:
                export_model(serving, Path(tmp), with_tflite=False, **sidecars)
    finally:
        tracker.finish()
    remove_tree(worker_dir)
    if task.is_chief:
        storage.delete(wandb_id_uri)
        if not storage.is_gcs(run):
            # Other workers remove their own folders; the run folder goes once empty.
            with contextlib.suppress(OSError):
                Path(run).rmdir()
    resumed_from = cfg.epochs if history.first_epoch is None else history.first_epoch
    return {
        "epochs": len(history.rows),
        "resumed_from": resumed_from,
        "seconds": seconds,
        "final": {k: v[-1] for k, v in curves.items()},
        "strategy": strategy_name,
        "replicas": replicas,
        "global_batch_size": global_batch,
        "task": task.tag,
        "workers": task.num_workers,
        "is_chief": task.is_chief,
        "wandb_run_id": tracker.run_id,
        "wandb_dir": tracker.run_dir,
        "removed_backups": stale,
    }


def _export_atomically(
    model: keras.Model,
    out: str,
    on_staged: Callable[[Path], None] | None = None,
    **sidecars: Any,
) -> None:
    """Export into a staging folder, then swap it in (or upload it for gs://).

    `on_staged` sees the complete staged folder before it goes live.
    """
    if storage.is_gcs(out):
        with tempfile.TemporaryDirectory(prefix="trainer-") as tmp:
            export_model(model, Path(tmp), **sidecars)
            if on_staged is not None:
                on_staged(Path(tmp))
            storage.upload_tree(tmp, out)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)
    try:
        export_model(model, staging, **sidecars)
        if on_staged is not None:
            on_staged(staging)
        storage.replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
