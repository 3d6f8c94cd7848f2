"""Distribution strategies: one device, several GPUs, several workers.

`auto` picks MultiWorkerMirroredStrategy when a cluster is described (`TF_CONFIG`,
or Vertex AI's `CLUSTER_SPEC`, converted here), MirroredStrategy when more than
one GPU is visible, and the default strategy otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")

# Vertex AI names its worker pools by position; TF_CONFIG names them by role.
VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps"}


class StrategyError(ValueError):
    """The requested strategy cannot run in this environment."""


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster."""

    type: str = "chief"
    index: int = 0
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.type == "chief"

    @property
    def tag(self) -> str:
        """A name unique in the cluster: `chief` or `worker-<i>`."""
        return "chief" if self.is_chief else f"{self.type}-{self.index}"


def tf_config_from_cluster_spec(cluster_spec: dict[str, Any]) -> dict[str, Any]:
    """Vertex AI's CLUSTER_SPEC (worker pools by position) as a TF_CONFIG (roles)."""
    cluster = {
        VERTEX_POOLS.get(pool, pool): list(hosts)
        for pool, hosts in cluster_spec.get("cluster", {}).items()
        if hosts
    }
    task = cluster_spec.get("task", {})
    return {
        "cluster": cluster,
        "task": {
            "type": VERTEX_POOLS.get(task.get("type", "workerpool0"), task.get("type")),
            "index": int(task.get("index", 0)),
        },
    }


def cluster_config(environ: MutableMapping[str, str] | None = None) -> dict[str, Any] | None:
    """The parsed TF_CONFIG, setting it from CLUSTER_SPEC when only that is present."""
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG")
    if not raw and env.get("CLUSTER_SPEC"):
        raw = json.dumps(tf_config_from_cluster_spec(json.loads(env["CLUSTER_SPEC"])))
        env["TF_CONFIG"] = raw  # TensorFlow's cluster resolver reads it from there
    if not raw:
        return None
    try:
        config: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    if not isinstance(config.get("cluster"), dict) or "task" not in config:
        raise StrategyError("TF_CONFIG needs a `cluster` object and a `task`")
    return config


def task_of(config: dict[str, Any] | None) -> Task:
    """This process's task; with no chief, worker 0 acts as chief (TensorFlow's rule)."""
    if config is None:
        return Task()
    cluster = config["cluster"]
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    kind, index = str(config["task"].get("type", "worker")), int(config["task"].get("index", 0))
    if kind not in ("chief", "worker"):
        raise StrategyError(f"task type {kind!r} is not supported (only chief and worker)")
    if kind == "worker" and index == 0 and "chief" not in cluster:
        kind = "chief"
    return Task(type=kind, index=index, num_workers=workers)


def _mirrored() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    # Without GPUs, mirror over every logical CPU device (tests split the CPU in two).
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Task]:
    """The strategy `name` stands for here, and this process's task.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy must
    configure the runtime's collective ops first.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    config = cluster_config()
    task = task_of(config)
    if name == "auto":
        if config is not None and task.num_workers > 1:
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        if config is None:
            raise StrategyError(
                "--strategy multiworker needs a cluster: set TF_CONFIG (or CLUSTER_SPEC on "
                "Vertex AI) on every worker; see docs/training.md"
            )
        return tf.distribute.MultiWorkerMirroredStrategy(), task
    if name == "mirrored":
        return _mirrored(), Task()
    return tf.distribute.get_strategy(), Task()


def strategy_label(strategy: tf.distribute.Strategy) -> str:
    """A short name for summaries: `default`, `mirrored` or `multiworker`."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multiworker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def patch_keras_for_multiworker() -> None:
    """Work around Keras 3's mean of per-step metrics across workers.

    Keras reduces every metric of a multi-worker step with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for the scalar loss and
    accuracy ("Invalid reduction dimension 0 for input with 0 dimensions"). Scalars
    are averaged over replicas instead (axis=None); everything else, and every
    other strategy, goes through Keras unchanged. Idempotent.
    """
    from keras.src.backend.tensorflow import trainer as keras_trainer

    original = keras_trainer.reduce_per_replica
    if getattr(original, "_mega_patched", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        multiworker = (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        )
        if not multiworker or reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def mean(value: Any) -> Any:
            if isinstance(value, tf.distribute.DistributedValues):
                rank = strategy.experimental_local_results(value)[0].shape.rank
            elif isinstance(value, tf.Tensor):
                rank = value.shape.rank
            else:
                return value
            return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica._mega_patched = True  # type: ignore[attr-defined]
    keras_trainer.reduce_per_replica = reduce_per_replica
