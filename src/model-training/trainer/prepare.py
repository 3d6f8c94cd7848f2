"""Before fitting: the distribution strategy, the inputs and the compiled models.

The first steps of `trainer.train.train`, each returning a typed result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import tensorflow as tf

from common import storage
from common.contracts import LABELS, PREPROCESS, STATS, Preprocess, Stats, read_labels
from common.params import PipelineParams, TrainParams
from trainer import budget
from trainer.data import fits_in_cache, make_dataset
from trainer.distribute import Task, make_strategy, strategy_label
from trainer.model import build_model, with_augmentation


@dataclass(frozen=True)
class Setup:
    """How this process trains: the distribution strategy and its place in the cluster."""

    distribution: tf.distribute.Strategy
    task: Task
    strategy: str  # the strategy's name for people: default, mirrored, multiworker
    replicas: int  # devices training in sync over the whole cluster
    global_batch: int  # examples per step over all replicas


@dataclass(frozen=True)
class Inputs:
    """The processed folder as training reads it."""

    spec: Preprocess
    labels: list[str]
    data_hash: str
    totals: dict[str, int]  # examples per split
    train: tf.data.Dataset  # (uint8 images (B, H, W, C), class indices (B,)), shuffled
    val: tf.data.Dataset | None  # None when the val split is empty


@dataclass(frozen=True)
class Models:
    """The exported model and the one fitted (the same weights behind augmentation)."""

    serving: keras.Model  # raw 0–255 pixels in, class probabilities out
    fitted: keras.Model  # compiled; its random layers act only while training


def set_up(strategy: str, seed: int, batch_size: int) -> Setup:
    """The distribution strategy (`distribute.make_strategy`), seeded and deterministic.

    Raises:
        StrategyError: the strategy is unknown or cannot run here.
    """
    # First: MultiWorkerMirroredStrategy must set up collectives before any other op.
    distribution, task = make_strategy(strategy)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    replicas = int(distribution.num_replicas_in_sync)
    return Setup(distribution, task, strategy_label(distribution), replicas, batch_size * replicas)


def read_inputs(data: str, cfg: TrainParams, setup: Setup) -> Inputs:
    """The spec, labels and data version of the processed folder `data`, and its datasets.

    Raises:
        FileNotFoundError: a file or the shards of a split are missing.
    """
    spec = Preprocess.read(storage.join(data, PREPROCESS))
    labels = read_labels(storage.join(data, LABELS))
    stats = Stats.read(storage.join(data, STATS))
    totals = stats.totals
    common_args = {"spec": spec, "batch_size": setup.global_batch, "cache_mb": cfg.cache_mb}
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
    if setup.task.num_workers > 1:
        # Shards are few and uneven: each worker reads them all and keeps every
        # n-th example, rather than splitting by file.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        train_ds = train_ds.with_options(options)
        val_ds = val_ds.with_options(options) if val_ds is not None else None
    return Inputs(spec, labels, stats.data_hash, totals, train_ds, val_ds)


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


def build_models(params: PipelineParams, inputs: Inputs, setup: Setup) -> Models:
    """The model params names, compiled under the strategy, if its training fits in memory.

    Raises:
        budget.TooLargeError: the estimated peak memory exceeds what is available.
        WeightsUnavailableError: pretrained weights are neither cached nor downloadable.
    """
    cfg = params.train
    with setup.distribution.scope():
        serving = build_model(
            cfg.model,
            inputs.spec,
            len(inputs.labels),
            weights=cfg.weights,
            fine_tune_layers=cfg.fine_tune_layers,
        )
        # Fit through the random layers; export `serving`, which shares the weights.
        model = with_augmentation(serving, inputs.spec, cfg.augment)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            # Keras 3.15 fails to trace several steps per execution across replicas
            # ("must feed a value for placeholder ... while/cond"): one step per call there.
            steps_per_execution=cfg.steps_per_execution if setup.replicas == 1 else 1,
        )
    # Examples one step holds in this process's memory (replicas on this machine).
    step = setup.global_batch // max(setup.task.num_workers, 1)
    _check_memory(model, params, inputs.spec, inputs.totals, step)
    return Models(serving=serving, fitted=model)
