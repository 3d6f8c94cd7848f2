"""Settings the schema allows but memory cannot hold are refused at start, with numbers.

Also: the small CNN's size no longer grows with the image, and backups left by
runs with other parameters do not pile up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import run_cli, write_params

from common.contracts import Preprocess
from trainer.budget import TooLargeError, check_fits, estimate
from trainer.model import build_model

GB = 10**9


@pytest.mark.parametrize("size", [8, 16, 31, 64, 224, 1024])
@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_small_cnn_size_does_not_grow_with_the_image(size: int, color_mode: str) -> None:
    model = build_model("small_cnn", Preprocess(image_size=size, color_mode=color_mode), 10)
    assert model.count_params() < 500_000, model.count_params()


def test_default_digits_model_is_unchanged() -> None:
    """16-pixel digits keep the two-block Flatten head the default run's accuracy comes from."""
    model = build_model("small_cnn", Preprocess(image_size=16, color_mode="grayscale"), 10)
    assert model.count_params() == 151_306
    assert "head_grid_pool" not in [layer.name for layer in model.layers]


def test_estimate_counts_weights_and_activations() -> None:
    model = build_model("small_cnn", Preprocess(image_size=16, color_mode="grayscale"), 10)
    found = estimate(model, examples_per_step=64, cache_bytes=1000)
    assert found.weights_bytes == 151_306 * 4 * 4
    # pixels, rescale, conv 16²×32, pool 8²×32, conv 8²×64, pool 4²×64, flatten, dropout,
    # dense 128, softmax 10
    per_example = 256 + 256 + 8192 + 2048 + 4096 + 1024 + 1024 + 1024 + 128 + 10
    assert found.activation_bytes_per_example == per_example * 4 * 2
    assert found.total_bytes == found.weights_bytes + 64 * per_example * 8 + 1000


def test_1024_pixels_refused_with_the_estimate_and_a_batch_that_fits() -> None:
    model = build_model("small_cnn", Preprocess(image_size=1024, color_mode="grayscale"), 10)
    found = estimate(model, examples_per_step=64)
    with pytest.raises(TooLargeError) as refused:
        check_fits(found, 24 * GB, model="small_cnn", image="1024×1024×1", batch_size=64)
    message = str(refused.value)
    assert "small_cnn on 1024×1024×1 images with train.batch_size 64 needs about" in message
    assert "GB available" in message and "in params.yaml" in message
    fitting = int(message.split("lower train.batch_size to ")[1].split()[0])
    assert 1 <= fitting < 64
    smaller = estimate(model, examples_per_step=fitting)
    check_fits(smaller, 24 * GB, model="small_cnn", image="1024×1024×1", batch_size=fitting)


def test_backbone_too_big_for_any_batch_names_the_image_size() -> None:
    model = build_model(
        "efficientnet_b0", Preprocess(image_size=1024, color_mode="rgb"), 10, weights="none"
    )
    with pytest.raises(TooLargeError, match=r"lower process\.image_size"):
        check_fits(
            estimate(model, examples_per_step=8),
            1 * GB,
            model="efficientnet_b0",
            image="1024×1024×3",
            batch_size=8,
        )


def test_unknown_available_memory_is_not_a_refusal() -> None:
    model = build_model("small_cnn", Preprocess(image_size=16, color_mode="grayscale"), 10)
    check_fits(estimate(model, 10**9), None, model="small_cnn", image="16×16×1", batch_size=1)


def _backup(root: Path, name: str, age_hours: float, now: float, size: int = 0) -> Path:
    """A run folder whose every entry was last modified `age_hours` before `now`."""
    run = root / name
    (run / "chief" / "backup").mkdir(parents=True)
    (run / "chief" / "backup" / "weights.h5").write_bytes(b"x" * size)
    for path in (run, *run.rglob("*")):
        os.utime(path, (now - age_hours * 3600, now - age_hours * 3600))
    return run


def test_stale_backups_are_bounded_but_live_and_recent_ones_stay(tmp_path: Path) -> None:
    from trainer.runs import RECENT_BACKUP_SECONDS, STALE_BACKUPS_KEPT, remove_stale_runs

    assert (RECENT_BACKUP_SECONDS, STALE_BACKUPS_KEPT) == (24 * 3600, 2)  # as docs/training.md
    now = 2_000_000_000.0
    root = tmp_path / "runs"
    _backup(root, "current", 100, now)
    _backup(root, "live", 0.01, now)  # another training in this checkout, mid-epoch
    _backup(root, "killed-today", 23, now)
    _backup(root, "last-week", 24 * 7, now, size=10)  # the two newest old ones stay
    _backup(root, "last-month", 24 * 30, now, size=20)
    _backup(root, "older-a", 24 * 60, now, size=1000)
    _backup(root, "older-b", 24 * 90, now, size=7)
    # A file written just now deep in an old-looking folder makes it recent.
    resumed = _backup(root, "resumed-now", 24 * 100, now)
    os.utime(resumed / "chief" / "backup" / "weights.h5", (now, now))

    removed = remove_stale_runs(str(root / "current"), root=str(root), now=now)

    assert removed == [(str(root / "older-a"), 1000), (str(root / "older-b"), 7)]
    assert sorted(p.name for p in root.iterdir()) == [
        "current",
        "killed-today",
        "last-month",
        "last-week",
        "live",
        "resumed-now",
    ]
    assert remove_stale_runs(str(root / "current"), root=str(root), now=now) == []
    assert remove_stale_runs(str(root / "current"), root=str(tmp_path / "absent")) == []


@pytest.mark.slow
def test_trainer_refuses_1024_pixels_at_start_and_leaves_no_backup(tmp_path: Path) -> None:
    """The case as a user meets it: allowed settings, a clear refusal, nothing left behind."""
    write_params(
        tmp_path,
        {
            # The test data's default size: fewer digits leave a class out of a split,
            # which the processor refuses.
            "process": {"image_size": 1024},
            "train": {"batch_size": 256},
        },
    )
    env = {"MEGA_WANDB_MODE": "disabled"}
    run_cli([sys.executable, "-m", "collector", "--out", "raw", "--no-progress"], tmp_path, env)
    run_cli([sys.executable, "-m", "processor", "--raw", "raw", "--out", "data"], tmp_path, env)
    stale = tmp_path / ".mega/runs/0123456789abcdef"
    stale.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--data", "data", "--out", "candidate"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("train: error: small_cnn on 1024×1024×1 images"), result.stderr
    assert "needs about" in result.stderr and "Traceback" not in result.stderr
    assert "lower train.batch_size to" in result.stderr
    assert not (tmp_path / "candidate").exists()
    assert [p.name for p in (tmp_path / ".mega/runs").iterdir()] == [stale.name], (
        "a refused run must not create a backup"
    )
