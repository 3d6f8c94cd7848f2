import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from collector.collect import collect
from collector.digits import iter_digits
from common.params import ProcessParams
from common.tfrecord import parse_example
from processor.process import assign_split, process

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_split_is_deterministic_and_follows_the_ratios() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    splits = [assign_split(h, RATIOS) for h in hashes]
    assert splits == [assign_split(h, RATIOS) for h in hashes]
    share = splits.count("train") / len(splits)
    assert 0.77 < share < 0.83


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    collect(iter_digits(limit=120), out=str(folder), source="digits")
    return folder


def test_process_writes_shards_labels_and_stats(raw: Path, tmp_path: Path) -> None:
    params = ProcessParams(image_size=12, shard_size=40)
    stats = process(str(raw), str(tmp_path), params, dataset="digits")
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels == [str(d) for d in range(10)]
    assert sum(stats["totals"].values()) == 120
    train_shards = sorted(tmp_path.glob("train-*.tfrecord"))
    assert [p.name for p in train_shards][-1].endswith(f"-of-{len(train_shards):05d}.tfrecord")
    assert not list(tmp_path.glob(".*"))  # no partial files left behind
    images = [
        parse_example(record, channels=1)
        for record in tf.data.TFRecordDataset([str(p) for p in train_shards])
    ]
    assert len(images) == stats["totals"]["train"]
    image, label = images[0]
    assert image.shape == (12, 12, 1) and image.dtype == tf.uint8
    assert 0 <= int(label) < 10
    assert json.loads((tmp_path / "preprocess.json").read_text()) == {
        "image_size": 12,
        "color_mode": "grayscale",
    }


def test_output_is_identical_across_processes(raw: Path, tmp_path: Path) -> None:
    # Regression: protobuf map order made shard bytes vary with the hash seed.
    (tmp_path / "params.yaml").write_text("process: {image_size: 12}\n")
    hashes = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run(
            [sys.executable, "-m", "processor", "--raw", str(raw), "--out", str(out)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            capture_output=True,
        )
        hashes.append(json.loads((out / "stats.json").read_text())["data_hash"])
    assert hashes[0] == hashes[1]


def test_missing_manifest_says_to_collect_first(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--raw", str(tmp_path / "raw"), "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "run the collect stage first" in result.stderr
