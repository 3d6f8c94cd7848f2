"""Processing a raw store: shards, labels, stats, splits, re-runs and the data card."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from raw_builder import (
    RAW_ITEMS,
    TEST_SPLIT,
    labelled_images,
    process_params,
    shas_by_split,
    write_raw_store,
)

from common.tfrecord import parse_examples
from processor.datacard import write_data_card
from processor.process import ProcessError, assign_split, process

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
    write_raw_store(folder, labelled_images(RAW_ITEMS))
    return folder


def test_process_writes_shards_labels_and_stats(raw: Path, tmp_path: Path) -> None:
    params = process_params(image_size=12, shard_target_mb=0.01)
    stats = process(str(raw), str(tmp_path), params, dataset="digits", workers=1)
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels == [str(d) for d in range(10)]
    assert sum(stats.totals.values()) == RAW_ITEMS
    train_shards = sorted(tmp_path.glob("train-*.tfrecord"))
    assert len(train_shards) > 1
    assert train_shards[-1].name.endswith(f"-of-{len(train_shards):05d}.tfrecord")
    assert not list(tmp_path.glob(".*"))  # no partial files left behind
    [batch] = tf.data.TFRecordDataset([str(p) for p in train_shards]).batch(1000)
    images, labels = parse_examples(batch, channels=1, image_size=12)
    assert images.shape == (stats.totals["train"], 12, 12, 1) and images.dtype == tf.uint8
    assert all(0 <= int(label) < 10 for label in labels)
    assert json.loads((tmp_path / "preprocess.json").read_text()) == {
        "image_size": 12,
        "color_mode": "grayscale",
        "resize": "stretch",
        "min_size": 8,  # serving refuses smaller images too
        "max_bytes": 20 * 1024 * 1024,  # the collector's limits: serving takes what they take
        "max_pixels": 40_000_000,
    }


def test_parallel_and_serial_runs_agree(raw: Path, tmp_path: Path) -> None:
    params = process_params(image_size=12)
    serial = process(str(raw), str(tmp_path / "serial"), params, "digits", workers=1)
    parallel = process(str(raw), str(tmp_path / "parallel"), params, "digits", workers=2)
    assert serial.data_hash == parallel.data_hash


def test_rerun_replaces_the_output_whole(raw: Path, tmp_path: Path) -> None:
    process(str(raw), str(tmp_path), process_params(shard_target_mb=0.005), "digits", workers=1)
    many = len(list(tmp_path.glob("*.tfrecord")))
    stats = process(str(raw), str(tmp_path), process_params(), "digits", workers=1)
    assert len(list(tmp_path.glob("*.tfrecord"))) == len(stats.shards) < many


def test_gzip_shards_read_back(raw: Path, tmp_path: Path) -> None:
    stats = process(
        str(raw), str(tmp_path), process_params(compression="gzip"), "digits", workers=1
    )
    assert stats.compression == "gzip"
    assert sum(len(v) for v in shas_by_split(tmp_path, "GZIP").values()) == RAW_ITEMS


def idat_zlib_header(png: bytes) -> bytes:
    """The first two bytes of a PNG's first IDAT chunk: the zlib header, which names the level."""
    start = png.index(b"IDAT") + 4
    return png[start : start + 2]


def encoded_images(folder: Path) -> dict[str, bytes]:
    """Every example's `image/encoded` under `folder`, by its `image/sha256`."""
    images = {}
    for record in tf.data.TFRecordDataset([str(p) for p in sorted(folder.glob("*.tfrecord"))]):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        images[feature["image/sha256"].bytes_list.value[0].decode()] = feature[
            "image/encoded"
        ].bytes_list.value[0]
    return images


def test_png_compress_level_sets_the_stored_pngs_and_keeps_the_pixels(
    raw: Path, tmp_path: Path
) -> None:
    by_level = {}
    for level in (0, 9):
        out = tmp_path / str(level)
        process(str(raw), str(out), process_params(png_compress_level=level), "digits", workers=1)
        by_level[level] = encoded_images(out)
    assert by_level[0].keys() == by_level[9].keys() and len(by_level[0]) == RAW_ITEMS
    # zlib's header: 0x78 0x01 for levels 0–1 (level 0 stores), 0x78 0xDA for 7–9.
    assert {idat_zlib_header(png) for png in by_level[0].values()} == {b"\x78\x01"}
    assert {idat_zlib_header(png) for png in by_level[9].values()} == {b"\x78\xda"}
    for sha, png in by_level[0].items():
        stored, packed = tf.io.decode_png(png), tf.io.decode_png(by_level[9][sha])
        assert tf.reduce_all(stored == packed), sha


def test_output_is_identical_across_processes(raw: Path, tmp_path: Path) -> None:
    # Regression: protobuf map order made shard bytes vary with the hash seed.
    (tmp_path / "params.yaml").write_text(
        f"process: {{image_size: 12, min_per_class: 1, split: {json.dumps(TEST_SPLIT)}}}\n"
    )
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
    assert result.returncode == 2  # an input path given on the command line is missing
    [line] = result.stderr.splitlines()
    assert line.startswith(f"process: error: --raw {tmp_path / 'raw'}: no manifest.jsonl")
    assert "run the collect stage first" in line


def test_class_below_the_minimum_is_named(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match=r"'[0-9]' \(\d+\).*lower process.min_per_class"):
        process(str(raw), str(tmp_path), process_params(min_per_class=24), "digits", workers=1)
    assert not tmp_path.exists() or not list(tmp_path.glob("*.tfrecord"))


def test_split_stability_when_ten_percent_more_items_arrive(tmp_path: Path) -> None:
    write_raw_store(tmp_path / "raw", labelled_images(RAW_ITEMS))
    before = shas_by_split(_processed(tmp_path, "before"))
    write_raw_store(tmp_path / "raw", labelled_images(RAW_ITEMS * 11 // 10))
    after = shas_by_split(_processed(tmp_path, "after"))
    for split, shas in before.items():
        assert shas <= after[split], f"items left {split}"
    assert sum(map(len, after.values())) > sum(map(len, before.values()))


def _processed(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    process(str(tmp_path / "raw"), str(out), process_params(), "digits", workers=1)
    return out


def test_data_card(raw: Path, tmp_path: Path) -> None:
    stats = process(str(raw), str(tmp_path / "out"), process_params(), "digits", workers=1)
    card = write_data_card(stats, str(tmp_path / "reports"))
    assert card == str(tmp_path / "reports/data_card.md")
    text = Path(card).read_text()
    assert stats.data_hash in text
    assert "| 0 |" in text
    png = (tmp_path / "reports/data_card.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    again = write_data_card(stats, str(tmp_path / "reports2"))
    assert (Path(again).parent / "data_card.png").read_bytes() == png


def test_data_card_on_gcs(
    raw: Path, tmp_path: Path, storage_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gs:// report folder (the Vertex AI pipeline's) gets both files; the card was
    written to a local `gs:/…` folder instead (a `Path` had eaten a slash)."""
    from common import storage

    monkeypatch.chdir(tmp_path)
    stats = process(str(raw), str(tmp_path / "out"), process_params(), "digits", workers=1)
    card = write_data_card(stats, f"{storage_emulator}/run/data_card")
    assert card == f"{storage_emulator}/run/data_card/data_card.md"
    assert stats.data_hash in storage.read_text(card)
    assert storage.read_bytes(f"{storage_emulator}/run/data_card/data_card.png").startswith(
        b"\x89PNG"
    )
    assert not (tmp_path / "gs:").exists()
