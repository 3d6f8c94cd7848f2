"""Training for real: input pipeline, models, strategies, resume, gate, plots.

Strategy and resume tests run the trainer in subprocesses (`train_hook.py`), so
logical devices, cluster settings and SIGKILL never touch this test process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import TinyPipeline, free_port, run_cli, write_params

from common.contracts import STATS, Preprocess, Stats
from common.params import AugmentParams, RegistryParams
from common.registry import ModelRegistry
from trainer import distribute
from trainer.register import register

HOOK = Path(__file__).with_name("train_hook.py")
GRAY16 = Preprocess(image_size=16, color_mode="grayscale")


def hook(
    tiny: TinyPipeline, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start train_hook.py on the tiny processed data, in `cwd` (holding params.yaml)."""
    return subprocess.Popen(
        [sys.executable, str(HOOK), "--data", str(tiny.processed), *args],
        cwd=cwd,
        env={**os.environ, "MEGA_WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"timed out:\n{output[-3000:]}") from None
    return output


# --- models ------------------------------------------------------------------------------


def test_overfits_one_batch() -> None:
    """A model that can learn at all memorizes 32 random images and labels."""
    import keras

    from trainer.model import build_model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 16, 16, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 32)
    model = build_model("small_cnn", GRAY16, 10)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    first = float(model.evaluate(images, labels, verbose=0))
    model.fit(images, labels, batch_size=32, epochs=80, verbose=0)
    last = float(model.evaluate(images, labels, verbose=0))
    assert first > 1.5, first  # ≈ ln(10) before training
    assert last < 0.05, last


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_transfer_model_adapts_gray_small_images_offline(name: str) -> None:
    from trainer.model import build_model

    model = build_model(name, GRAY16, 10, weights="none")
    assert model.input_shape == (None, 16, 16, 1)  # serving still sends processed pixels
    layer_names = {layer.name for layer in model.layers}
    assert {"to_backbone_size", "gray_to_rgb"} <= layer_names
    out = np.asarray(model(np.full((2, 16, 16, 1), 200.0, np.float32), training=False))
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_imagenet_weights_offline_fail_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from trainer import model as models

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    closed = free_port()  # nothing listens there: connection refused, like being offline
    monkeypatch.setattr(models, "weights_url", lambda backbone: f"http://127.0.0.1:{closed}/w/")
    started = time.monotonic()
    with pytest.raises(models.WeightsUnavailableError, match=r"train\.weights: none"):
        models.build_model("mobilenet_v3_small", GRAY16, 10, weights="imagenet")
    assert time.monotonic() - started < 5

    # Weights already in the Keras cache need no network.
    cache = tmp_path / "keras/models"
    cache.mkdir(parents=True)
    (cache / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5").write_bytes(b"")
    models.check_weights_available("mobilenet_v3_small")


def test_augmentation_only_while_training() -> None:
    from trainer.model import build_model, with_augmentation

    augment = AugmentParams(rotation=0.1, zoom=0.1, translation=0.1, contrast=0.2)
    serving = build_model("small_cnn", GRAY16, 10)
    model = with_augmentation(serving, GRAY16, augment)
    assert [layer.name for layer in model.layers[1:5]] == [
        "aug_rotation",
        "aug_zoom",
        "aug_translation",
        "aug_contrast",
    ]
    assert model.layers[5] is serving, "the fitted model must share the served model's weights"
    assert not [layer for layer in serving.layers if layer.name.startswith("aug_")]
    assert with_augmentation(serving, GRAY16, AugmentParams()) is serving
    pixels = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 1)).astype(np.float32)
    first = np.asarray(model(pixels, training=False))
    np.testing.assert_array_equal(first, np.asarray(model(pixels, training=False)))
    np.testing.assert_allclose(first, np.asarray(serving(pixels, training=False)), rtol=1e-6)
    augmented = model.layers[1](pixels, training=True)
    assert not np.allclose(np.asarray(augmented), pixels)


# --- input pipeline ----------------------------------------------------------------------


def test_pipeline_batches_caches_and_shuffles_reproducibly(tiny_pipeline: TinyPipeline) -> None:
    from trainer.data import fits_in_cache, make_dataset

    count = Stats.read(tiny_pipeline.processed / STATS).totals["train"]
    assert fits_in_cache(count, GRAY16, cache_mb=1) and not fits_in_cache(count, GRAY16, 0.01)

    def labels(seed: int, cache_mb: float = 1) -> list[int]:
        dataset = make_dataset(
            str(tiny_pipeline.processed),
            "train",
            spec=GRAY16,
            batch_size=50,
            shuffle=True,
            seed=seed,
            count=count,
            cache_mb=cache_mb,
        )
        batches = list(dataset)
        # uint8 all the way: the model casts and rescales inside itself.
        assert batches[0][0].dtype.name == "uint8" and batches[0][0].shape[1:] == (16, 16, 1)
        assert sum(len(y) for _, y in batches) == count
        return [int(v) for _, y in batches for v in y]

    unshuffled = [
        int(v)
        for _, y in make_dataset(str(tiny_pipeline.processed), "train", spec=GRAY16, batch_size=50)
        for v in y
    ]
    assert labels(3) == labels(3)
    assert labels(3) != unshuffled and sorted(labels(3)) == sorted(unshuffled)
    # Without the cache the serialized records are shuffled instead: same data, reproducible.
    assert labels(3, cache_mb=0) == labels(3, cache_mb=0)
    assert sorted(labels(3, cache_mb=0)) == sorted(unshuffled)


def test_repeated_pipeline_keeps_epochs_whole(tiny_pipeline: TinyPipeline) -> None:
    """`fit` runs one endless iterator for `steps_per_epoch` steps at a time: each such
    run of steps must be exactly one reshuffled epoch, short last batch included."""
    from trainer.data import make_dataset, steps_per_epoch

    count = Stats.read(tiny_pipeline.processed / STATS).totals["train"]
    assert count % 50, "the tiny split should end in a short batch"
    steps = steps_per_epoch(count, 50)
    for cache_mb in (1, 0):
        dataset = make_dataset(
            str(tiny_pipeline.processed),
            "train",
            spec=GRAY16,
            batch_size=50,
            shuffle=True,
            count=count,
            cache_mb=cache_mb,
        )
        batches = iter(dataset.repeat())
        epochs = [[int(v) for _ in range(steps) for v in next(batches)[1]] for _ in range(2)]
        assert len(epochs[0]) == len(epochs[1]) == count
        assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]


def test_cached_split_is_a_new_permutation_every_epoch(tiny_pipeline: TinyPipeline) -> None:
    """Held in memory, each epoch is the whole split (every record once, by its sha256),
    in a new order; the orders are fixed by the seed."""
    from trainer.data import make_dataset, steps_per_epoch

    count = Stats.read(tiny_pipeline.processed / STATS).totals["train"]
    split = sorted(
        bytes(v)
        for *_, ids in make_dataset(
            str(tiny_pipeline.processed), "train", spec=GRAY16, batch_size=64, with_ids=True
        )
        for v in ids.numpy()
    )
    assert len(split) == len(set(split)) == count

    def epochs(seed: int) -> list[list[bytes]]:
        dataset = make_dataset(
            str(tiny_pipeline.processed),
            "train",
            spec=GRAY16,
            batch_size=32,
            shuffle=True,
            seed=seed,
            count=count,
            cache_mb=1,
            with_ids=True,
        )
        batches = iter(dataset.repeat())
        steps = steps_per_epoch(count, 32)
        return [
            [bytes(v) for _ in range(steps) for v in next(batches)[2].numpy()] for _ in range(3)
        ]

    first = epochs(5)
    assert all(sorted(epoch) == split for epoch in first)
    assert first[0] != first[1] != first[2] != first[0]
    assert epochs(5) == first and epochs(6) != first


def test_in_memory_batches_gather_whole_epochs() -> None:
    from trainer.data import in_memory

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * 10
    labels = np.arange(10, dtype=np.int64)
    ordered = [b[1].numpy().tolist() for b in in_memory((images, labels), 4)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    batches = iter(in_memory((images, labels), 4, shuffle=True, seed=1).repeat())
    orders = []
    for _ in range(2):
        epoch = [next(batches) for _ in range(3)]
        for pixels, indices in epoch:  # images and labels stay paired
            assert pixels.numpy().ravel().tolist() == [10 * i for i in indices.numpy()]
        orders.append([int(i) for _, indices in epoch for i in indices])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10))
    assert orders[0] != orders[1]


def test_cached_split_checks_its_size_and_image_shape(tiny_pipeline: TinyPipeline) -> None:
    import tensorflow as tf

    from trainer.data import make_dataset

    count = Stats.read(tiny_pipeline.processed / STATS).totals["train"]
    data = str(tiny_pipeline.processed)
    with pytest.raises(ValueError, match=f"hold {count} examples, not {count + 1}"):
        make_dataset(data, "train", spec=GRAY16, batch_size=8, count=count + 1, cache_mb=1)
    wrong = Preprocess(image_size=8, color_mode="grayscale")
    with pytest.raises(tf.errors.InvalidArgumentError):
        make_dataset(data, "train", spec=wrong, batch_size=8, count=count, cache_mb=1)


def damage_shard(shard: Path, damage: str, gzip_compressed: bool = False) -> None:
    """Damage one shard as a failed copy or a disk would: `cut` short (for GZIP, to half:
    a cut trailer alone loses no record), a `flipped` byte in the middle, or cut at a
    `record_boundary` (after 10 records: framing intact, records missing)."""
    import gzip
    import struct

    stored = shard.read_bytes()
    if damage == "record_boundary":
        records = gzip.decompress(stored) if gzip_compressed else stored
        end = 0
        for _ in range(10):
            (length,) = struct.unpack_from("<Q", records, end)
            end += 12 + length + 4
        stored = gzip.compress(records[:end], mtime=0) if gzip_compressed else records[:end]
    elif damage == "cut":
        stored = stored[: len(stored) // 2] if gzip_compressed else stored[:-3]
    else:
        flipped = bytearray(stored)
        flipped[len(flipped) // 2] ^= 0xFF
        stored = bytes(flipped)
    shard.write_bytes(stored)


def damaged_copy(
    processed: Path, folder: Path, damage: str, compression: str = "none", split: str = "train"
) -> Path:
    """A copy of `processed` (its shards GZIP-compressed if `compression` says so) whose
    last `split` shard is damaged (`damage_shard`)."""
    import gzip
    import shutil

    shutil.copytree(processed, folder)
    if compression == "gzip":
        for shard in folder.glob("*.tfrecord"):
            shard.write_bytes(gzip.compress(shard.read_bytes(), mtime=0))
        stats = json.loads((folder / STATS).read_text())
        (folder / STATS).write_text(json.dumps({**stats, "compression": "gzip"}))
    shard = sorted(folder.glob(f"{split}-*.tfrecord"))[-1]
    damage_shard(shard, damage, gzip_compressed=compression == "gzip")
    return folder


@pytest.mark.parametrize("cache_mb", [1, 0], ids=["in_memory", "streamed"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("damage", ["cut", "flipped", "record_boundary"])
def test_a_damaged_shard_is_an_input_error(
    tiny_pipeline: TinyPipeline, tmp_path: Path, damage: str, compression: str, cache_mb: float
) -> None:
    """Held in memory or streamed, plain or GZIP, a shard that fails its checksums or
    lacks records is an InputError that names the shard (streamed, where TensorFlow
    names no file: the folder) and says to re-run the process stage, not a TensorFlow
    traceback from inside `fit`."""
    from trainer.data import damaged_shards_as_input_errors, make_dataset
    from trainer.inputs import InputError

    data = damaged_copy(tiny_pipeline.processed, tmp_path / "processed", damage, compression)
    count = Stats.read(tiny_pipeline.processed / STATS).totals["train"]
    with (
        pytest.raises(InputError, match=f"^{re.escape(str(data))}.*; re-run the process stage"),
        damaged_shards_as_input_errors(str(data)),
    ):
        for _ in make_dataset(
            str(data), "train", spec=GRAY16, batch_size=8, count=count, cache_mb=cache_mb
        ):
            pass


def test_a_streamed_split_is_checked_against_stats_json_without_a_count(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    """evaluate and optimize pass no count: stats.json's total is asserted instead, so
    a test split missing records is not evaluated on fewer examples in silence."""
    from trainer.data import damaged_shards_as_input_errors, make_dataset
    from trainer.inputs import InputError

    data = damaged_copy(tiny_pipeline.processed, tmp_path / "p", "record_boundary", split="test")
    with (
        pytest.raises(InputError, match=r"do not hold the examples stats\.json counts"),
        damaged_shards_as_input_errors(str(data)),
    ):
        for _ in make_dataset(str(data), "test", spec=GRAY16, batch_size=8, with_ids=True):
            pass


@pytest.mark.parametrize(
    "message",
    [
        "Checksum does not match: stored 1 vs. calculated on the restored bytes 2",
        "truncated block read",
        "block checksum mismatch: stored 1, computed 2",
    ],
)
def test_other_data_loss_is_not_blamed_on_the_shards(message: str) -> None:
    """A damaged checkpoint (tensor bundle, table) raises DataLossError too; it must not
    read as bad data."""
    import tensorflow as tf

    from trainer.data import damaged_shards_as_input_errors

    with (
        pytest.raises(tf.errors.DataLossError, match=re.escape(message)),
        damaged_shards_as_input_errors("data/processed/digits"),
    ):
        raise tf.errors.DataLossError(None, None, message)


@pytest.mark.parametrize("command", ["train", "evaluate", "optimize"])
def test_commands_name_a_damaged_shard_in_one_line(
    tiny_pipeline: TinyPipeline, tmp_path: Path, command: str
) -> None:
    """Each command that reads the shards ends with exit 2 and one line naming the data
    and the fix; train streams them here (`train.cache_mb` 0), so the damage shows
    inside `fit`."""
    data = damaged_copy(tiny_pipeline.processed, tmp_path / "processed", "flipped")
    damage_shard(sorted(data.glob("test-*.tfrecord"))[-1], "flipped")
    write_params(tmp_path, {"train": {"cache_mb": 0}})
    candidate = str(tiny_pipeline.candidate)
    args = {
        "train": ["--out", "candidate"],
        "evaluate": ["--model", candidate, "--metrics", "m.json", "--details", "d.json"],
        "optimize": ["--model", candidate, "--out", "optimized", "--report", "o.json"],
    }[command]
    result = subprocess.run(
        [sys.executable, "-m", "trainer", command, "--data", str(data), *args],
        cwd=tmp_path,
        env={**os.environ, "MEGA_WANDB_MODE": "disabled", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: error: {data}"), result.stderr[-3000:]
    assert "re-run the process stage" in last and "Traceback" not in result.stderr


# --- strategies --------------------------------------------------------------------------


def test_cluster_spec_becomes_tf_config() -> None:
    env = {
        "CLUSTER_SPEC": json.dumps(
            {
                "cluster": {"workerpool0": ["a:2222"], "workerpool1": ["b:2222", "c:2222"]},
                "environment": "cloud",
                "task": {"type": "workerpool1", "index": 1},
            }
        )
    }
    config = distribute.cluster_config(env)
    assert config == {
        "cluster": {"chief": ["a:2222"], "worker": ["b:2222", "c:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert json.loads(env["TF_CONFIG"]) == config
    task = distribute.task_of(config)
    assert (task.is_chief, task.tag, task.num_workers) == (False, "worker-1", 3)
    # Without a chief, worker 0 is the chief.
    assert distribute.task_of(
        {"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker"}}
    ).is_chief


def test_bad_strategies_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    with pytest.raises(distribute.StrategyError, match="unknown strategy 'bogus'"):
        distribute.make_strategy("bogus")
    with pytest.raises(distribute.StrategyError, match="needs a cluster: set TF_CONFIG"):
        distribute.make_strategy("multiworker")


def test_mirrored_on_two_logical_cpus(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"epochs": 2, "batch_size": 16}})
    process = hook(
        tiny_pipeline,
        tmp_path,
        "--out=candidate",
        "--strategy=mirrored",
        "--logical-cpus=2",
        "--summary-out=summary.json",
    )
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == "mirrored"
    assert summary["replicas"] == 2 and summary["global_batch_size"] == 32
    history = json.loads((tmp_path / "candidate/history.json").read_text())
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    assert (tmp_path / "candidate/model.tflite").is_file()


@pytest.mark.slow
def test_validation_scores_each_image_once(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    """Keras runs whole executions of steps_per_execution steps: on an endless validation
    set it would round 4 steps up to 6 and count a third of the images twice."""
    train = {"epochs": 2, "batch_size": 16, "steps_per_execution": 3, "learning_rate": 1e-4}
    write_params(tmp_path, {"train": train})
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
        {"MEGA_WANDB_MODE": "disabled"},
    )
    stats = Stats.read(tiny_pipeline.processed / STATS)
    examples = stats.totals["val"]
    assert examples % 16 and -(-examples // 16) % 3, "the case needs a partial execution"
    history = json.loads((tmp_path / "candidate/history.json").read_text())
    for accuracy in history["val_accuracy"]:
        correct = accuracy * examples
        assert abs(correct - round(correct)) < 1e-3, f"{accuracy} is no k/{examples}"


@pytest.mark.slow
def test_multiworker_two_processes_on_loopback(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"epochs": 2, "batch_size": 16}})
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            hook(
                tiny_pipeline,
                tmp_path,
                f"--out=out-{index}",
                "--strategy=multiworker",
                f"--weights-out=weights-{index}.npz",
                f"--summary-out=summary-{index}.json",
                env={
                    "TF_CONFIG": tf_config,
                    "CUDA_VISIBLE_DEVICES": "-1",
                    # Each its own folder here, to tell who wrote (Vertex gives all one).
                    "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / f"tensorboard-{index}"),
                },
            )
        )
    outputs = [finish(p) for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    chief, worker = (json.loads((tmp_path / f"summary-{i}.json").read_text()) for i in range(2))
    assert chief["is_chief"] and not worker["is_chief"]
    assert chief["workers"] == 2 and chief["strategy"] == "multiworker"
    assert (tmp_path / "out-0/model.tflite").is_file()
    assert not (tmp_path / "out-1").exists(), "only the chief may write artifacts"
    assert list((tmp_path / "tensorboard-0").rglob("events.out.tfevents.*"))
    assert not (tmp_path / "tensorboard-1").exists(), "only the chief writes TensorBoard logs"
    first, second = (np.load(tmp_path / f"weights-{i}.npz") for i in range(2))
    assert len(first.files) == len(second.files) > 0
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    runs = tmp_path / ".mega/runs"
    assert runs.is_dir(), "the run directory was never used"
    leftovers = [p for p in runs.rglob("*") if p.is_file()]
    assert not leftovers, f"backups must be cleaned up: {leftovers}"


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"epochs": 3}})
    process = hook(tiny_pipeline, tmp_path, "--out=candidate", "--kill-after-epoch=1")
    output = finish(process)
    assert process.returncode == -9, output[-3000:]
    assert not (tmp_path / "candidate").exists()
    [backup] = (tmp_path / ".mega/runs").rglob("training_metadata.json")
    assert json.loads(backup.read_text())["epoch"] == 1

    train_cli = [sys.executable, "-m", "trainer", "train", "--data", str(tiny_pipeline.processed)]
    result = run_cli(
        [*train_cli, "--out", "candidate"],
        tmp_path,
        env={"MEGA_WANDB_MODE": "disabled"},
    )
    assert "Epoch 1/3" not in result.stdout and "Epoch 2/3" in result.stdout
    assert "train: 3 epochs in" in result.stdout and "resumed after epoch 1" in result.stdout
    history = json.loads((tmp_path / "candidate/history.json").read_text())
    assert len(history["loss"]) == 3, "3 epochs in total, not 4"
    assert not any((tmp_path / ".mega/runs").iterdir()), "the run folder goes after success"


@pytest.mark.slow
@pytest.mark.integration
def test_vertex_job_restarted_resumes_from_its_checkpoint_dir(
    tiny_pipeline: TinyPipeline, tmp_path: Path, storage_emulator: str
) -> None:
    """As a Vertex AI job runs the trainer: no --out (AIP_MODEL_DIR), params.yaml on gs://,
    AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR set. Killed after epoch 1 and started
    again with the same environment (a worker restart), it resumes from the checkpoint dir.

    The AIP_* folders are local: TensorFlow's own gs:// file system (the backup, the
    TensorBoard logs) cannot be pointed at the storage emulator.
    """
    from common import storage

    params = f"{storage_emulator}/job/params.yaml"
    storage.write_bytes(params, write_params(tmp_path, {"train": {"epochs": 3}}).read_bytes())
    (tmp_path / "params.yaml").unlink()  # the job has only the gs:// copy
    job = tmp_path / "job"
    env = {
        "AIP_MODEL_DIR": f"{job}/model/",  # as Vertex AI sets them: with a slash
        "AIP_CHECKPOINT_DIR": f"{job}/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": f"{job}/logs/",
    }
    args = ["--data", str(tiny_pipeline.processed), "--params", params]
    process = hook(tiny_pipeline, tmp_path, "--kill-after-epoch=1", "--cli", *args, env=env)
    output = finish(process)
    assert process.returncode == -9, output[-3000:]
    assert not (job / "model").exists()
    [backup] = (job / "checkpoints").rglob("training_metadata.json")
    assert json.loads(backup.read_text())["epoch"] == 1

    train_cli = [sys.executable, "-m", "trainer", "train", *args]
    result = run_cli(train_cli, tmp_path, env={"MEGA_WANDB_MODE": "disabled", **env})
    assert "Epoch 1/3" not in result.stdout and "Epoch 2/3" in result.stdout
    assert "train: 3 epochs in" in result.stdout and "resumed after epoch 1" in result.stdout
    assert f"candidate in {job}/model/" in result.stdout
    history = json.loads((job / "model/history.json").read_text())
    assert len(history["loss"]) == 3, "3 epochs in total, not 4"
    assert (job / "model/model.tflite").is_file()
    assert not (job / "checkpoints/chief").exists(), "the backup goes after success"
    assert not (tmp_path / ".mega").exists(), "AIP_CHECKPOINT_DIR is the run directory"
    logs = {path.parent.name for path in (job / "logs").rglob("events.out.tfevents.*")}
    assert logs == {"train", "validation"}


# --- evaluation and gate -----------------------------------------------------------------


def test_evaluation_writes_plots(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    from trainer.evaluate import evaluate

    result = evaluate(
        tiny_pipeline.candidate, str(tiny_pipeline.processed), GRAY16, plots=str(tmp_path)
    )
    assert set(result.details.document()["per_class"]["3"]) == {"precision", "recall", "support"}
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    curves = (tmp_path / "training_curves.csv").read_text().splitlines()
    assert curves[0].split(",") == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(curves) == 1 + 6  # the tiny pipeline trains 6 epochs
    predictions = (tmp_path / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted,sha256"
    assert len(predictions) - 1 == result.metrics.test.examples


def _metrics(tmp_path: Path, accuracy: float) -> str:
    path = tmp_path / f"metrics-{accuracy}.json"
    test = {"accuracy": accuracy, "macro_f1": accuracy, "examples": 10}
    path.write_text(json.dumps({"test": test}))
    return str(path)


def test_gate_first_better_and_worse_models(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    params = RegistryParams(model_name="gate", min_accuracy=0.9, min_improvement=0.01)
    root = str(tmp_path / "registry")
    registry = ModelRegistry(root, "gate")

    first = register(tiny_pipeline.candidate, _metrics(tmp_path, 0.93), root, params)
    assert first.promoted and "first production model" in first.reason

    worse = register(tiny_pipeline.candidate, _metrics(tmp_path, 0.92), root, params)
    assert not worse.promoted
    assert "does not beat production version 1 (0.9300)" in worse.reason
    assert registry.aliases() == {"production": "1", "candidate": "2"}

    within_margin = register(tiny_pipeline.candidate, _metrics(tmp_path, 0.935), root, params)
    assert not within_margin.promoted and "margin 0.0100" in within_margin.reason

    better = register(tiny_pipeline.candidate, _metrics(tmp_path, 0.95), root, params)
    assert better.promoted and "beats production version 1" in better.reason
    assert registry.aliases()["production"] == better.version == "4"


def test_register_cli_says_why_it_kept_a_candidate(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    write_params(tmp_path, {"registry": {"model_name": "cli-gate", "min_accuracy": 0.5}})
    args = [sys.executable, "-m", "trainer", "register", "--model", str(tiny_pipeline.candidate)]
    args += ["--registry", "models"]
    run_cli([*args, "--metrics", _metrics(tmp_path, 0.9)], tmp_path)
    out = run_cli([*args, "--metrics", _metrics(tmp_path, 0.8)], tmp_path).stdout
    assert out.startswith("register: cli-gate version 2 kept as candidate")
    assert "does not beat production version 1 (0.9000)" in out


def test_wandb_mode_online_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import Settings
    from trainer.tracking import wandb_mode

    monkeypatch.delenv("MEGA_WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    assert wandb_mode(Settings()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    assert wandb_mode(Settings()) == "online"
    monkeypatch.setenv("MEGA_WANDB_MODE", "offline")  # forced offline wins over the key
    assert wandb_mode(Settings()) == "offline"
