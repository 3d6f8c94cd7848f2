import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from collector.collect import collect
from collector.digits import iter_digits
from common.contracts import ManifestItem, write_manifest
from common.params import ProcessParams
from common.tfrecord import parse_examples
from processor.datacard import write_data_card
from processor.dedup import NearDuplicateIndex
from processor.process import ProcessError, assign_split, process

RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}
# The tests' split: with 250 digits (or the background below) every class reaches
# every split, which the processor requires.
TEST_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}
RAW_ITEMS = 250


def _params(**overrides: object) -> ProcessParams:
    """Processing parameters for tiny test sets: one item per class is enough."""
    return ProcessParams.model_validate({"min_per_class": 1, "split": TEST_SPLIT, **overrides})


def _noise_png(rng: np.random.Generator) -> bytes:
    return _encoded(Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)), "PNG")


def _with_background(files: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    """`files` plus two classes, bg0 and bg1, of noise images that reach every split."""
    rng = np.random.default_rng(11)
    background = {f"bg{i % 2}-{i}.png": (f"bg{i % 2}", _noise_png(rng)) for i in range(BACKGROUND)}
    return {**background, **files}


BACKGROUND = 60


def shas_by_split(folder: Path, compression: str = "") -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        files = [str(p) for p in sorted(folder.glob(f"{split}-*.tfrecord"))]
        records = tf.data.TFRecordDataset(files, compression_type=compression) if files else []
        result[split] = {
            tf.train.Example.FromString(r.numpy())
            .features.feature["image/sha256"]
            .bytes_list.value[0]
            .decode()
            for r in records
        }
    return result


def test_split_is_deterministic_and_follows_the_ratios() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    splits = [assign_split(h, RATIOS) for h in hashes]
    assert splits == [assign_split(h, RATIOS) for h in hashes]
    share = splits.count("train") / len(splits)
    assert 0.77 < share < 0.83


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    collect(iter_digits(limit=RAW_ITEMS), out=str(folder), source="digits")
    return folder


def test_process_writes_shards_labels_and_stats(raw: Path, tmp_path: Path) -> None:
    params = _params(image_size=12, shard_target_mb=0.01)
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
    params = _params(image_size=12)
    serial = process(str(raw), str(tmp_path / "serial"), params, "digits", workers=1)
    parallel = process(str(raw), str(tmp_path / "parallel"), params, "digits", workers=2)
    assert serial.data_hash == parallel.data_hash


def test_rerun_replaces_the_output_whole(raw: Path, tmp_path: Path) -> None:
    process(str(raw), str(tmp_path), _params(shard_target_mb=0.005), "digits", workers=1)
    many = len(list(tmp_path.glob("*.tfrecord")))
    stats = process(str(raw), str(tmp_path), _params(), "digits", workers=1)
    assert len(list(tmp_path.glob("*.tfrecord"))) == len(stats.shards) < many


def test_gzip_shards_read_back(raw: Path, tmp_path: Path) -> None:
    stats = process(str(raw), str(tmp_path), _params(compression="gzip"), "digits", workers=1)
    assert stats.compression == "gzip"
    assert sum(len(v) for v in shas_by_split(tmp_path, "GZIP").values()) == RAW_ITEMS


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
    assert result.returncode == 1
    assert "run the collect stage first" in result.stderr


def _encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "cmyk.jpg": _encoded(photo.convert("CMYK"), "JPEG"),
        "palette-transparent.png": _encoded(palette, "PNG", transparency=0),
        "sixteen-bit.png": _encoded(
            Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)), "PNG"
        ),
        "exif-rotated.jpg": _encoded(photo.convert("RGB"), "JPEG", exif=exif.tobytes()),
        "tiny.png": _encoded(Image.new("L", (4, 4), 200), "PNG"),
        "truncated.jpg": _encoded(photo, "JPEG")[:300],
    }


def _raw_store(folder: Path, files: dict[str, tuple[str, bytes]]) -> None:
    """A raw store written directly, bypassing the collector's own validation."""
    items = []
    for name, (label, data) in files.items():
        sha = hashlib.sha256(data).hexdigest()
        path = f"images/{label}/{sha}{Path(name).suffix}"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        items.append(
            ManifestItem(path=path, label=label, sha256=sha, source=name, width=1, height=1)
        )
    write_manifest(str(folder / "manifest.jsonl"), items)


def test_every_odd_image_kind_is_handled_or_rejected_with_a_reason(tmp_path: Path) -> None:
    odd = _odd_images()
    odd_files = {name: (f"bg{i % 2}", data) for i, (name, data) in enumerate(odd.items())}
    _raw_store(tmp_path / "raw", _with_background(odd_files))
    params = _params(image_size=16, color_mode="rgb", min_size=8)
    stats = process(str(tmp_path / "raw"), str(tmp_path / "out"), params, "odd", workers=1)
    rejected = {item.item.rsplit(".", 1)[-1] + ":" + item.reason for item in stats.rejected}
    assert sum(stats.totals.values()) == BACKGROUND + 4, stats.rejected
    assert any("smaller than min_size 8 on a side" in r for r in rejected)
    assert any("not a readable image" in r for r in rejected)
    assert len(stats.rejected) == 2


def test_changed_file_is_rejected(tmp_path: Path) -> None:
    data = _odd_images()["cmyk.jpg"]
    _raw_store(tmp_path / "raw", _with_background({"x.jpg": ("a", data)}))
    [stored] = (tmp_path / "raw/images/a").iterdir()
    stored.write_bytes(data + b"tampered")
    with pytest.raises(ProcessError, match=r"fewer than min_per_class=1 usable items: 'a' \(0\)"):
        process(str(tmp_path / "raw"), str(tmp_path / "out"), _params(), "x", workers=1)


def test_class_below_the_minimum_is_named(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match=r"'[0-9]' \(\d+\).*lower process.min_per_class"):
        process(str(raw), str(tmp_path), _params(min_per_class=24), "digits", workers=1)
    assert not tmp_path.exists() or not list(tmp_path.glob("*.tfrecord"))


def test_near_duplicates_are_dropped_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 200, (32, 32), dtype=np.uint8)
    files = {
        "a.png": ("bg0", _encoded(Image.fromarray(base), "PNG")),
        "a-brighter.png": ("bg0", _encoded(Image.fromarray(base + 5), "PNG")),
        "other.png": (
            "bg1",
            _encoded(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)), "PNG"),
        ),
    }
    _raw_store(tmp_path / "raw", _with_background(files))
    kept = process(str(tmp_path / "raw"), str(tmp_path / "a"), _params(), "n", workers=1)
    assert sum(kept.totals.values()) == BACKGROUND + 3
    params = _params(near_duplicates=True, near_duplicate_distance=4)
    dropped = process(str(tmp_path / "raw"), str(tmp_path / "b"), params, "n", workers=1)
    assert sum(dropped.totals.values()) == BACKGROUND + 2
    [near] = dropped.rejected
    assert "near duplicate of images/bg0/" in near.reason


def test_near_duplicate_index_finds_within_distance() -> None:
    index = NearDuplicateIndex(max_distance=3)
    index.add(0b1011, "a")
    assert index.find(0b1011 ^ (1 << 40) ^ (1 << 63) ^ 1) == "a"
    assert index.find(0b1011 ^ 0b1111 << 20) is None


def test_split_stability_when_ten_percent_more_items_arrive(tmp_path: Path) -> None:
    collect(iter_digits(limit=RAW_ITEMS), out=str(tmp_path / "raw"), source="digits")
    before = shas_by_split(_processed(tmp_path, "before"))
    collect(iter_digits(limit=RAW_ITEMS * 11 // 10), out=str(tmp_path / "raw"), source="digits")
    after = shas_by_split(_processed(tmp_path, "after"))
    for split, shas in before.items():
        assert shas <= after[split], f"items left {split}"
    assert sum(map(len, after.values())) > sum(map(len, before.values()))


def _processed(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    process(str(tmp_path / "raw"), str(out), _params(), "digits", workers=1)
    return out


def test_data_card(raw: Path, tmp_path: Path) -> None:
    stats = process(str(raw), str(tmp_path / "out"), _params(), "digits", workers=1)
    card = write_data_card(stats, str(tmp_path / "reports"))
    text = card.read_text()
    assert stats.data_hash in text
    assert "| 0 |" in text
    png = (tmp_path / "reports/data_card.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    again = write_data_card(stats, str(tmp_path / "reports2"))
    assert (again.parent / "data_card.png").read_bytes() == png


def test_the_same_image_under_two_labels_is_named(tmp_path: Path) -> None:
    data = _encoded(Image.new("L", (16, 16), 128), "PNG")
    other = _encoded(Image.new("L", (16, 16), 20), "PNG")
    files = {"a.png": ("bg0", data), "b.png": ("bg1", other)}
    _raw_store(tmp_path / "raw", _with_background(files))
    # The collector keeps one file per label and hash, so add the conflicting row by hand.
    manifest = tmp_path / "raw/manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    row = next(r for r in rows if r["source"] == "a.png")
    conflict = {**row, "path": row["path"].replace("/bg0/", "/bg1/"), "label": "bg1"}
    (tmp_path / "raw" / conflict["path"]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "raw" / conflict["path"]).write_bytes(data)
    manifest.write_text(manifest.read_text() + json.dumps(conflict) + "\n")
    stats = process(str(tmp_path / "raw"), str(tmp_path / "out"), _params(), "x", workers=1)
    [rejected] = stats.rejected
    assert "labelled 'bg0' and 'bg1'" in rejected.reason


# --- Data that cannot give an honest model is refused, naming the problem and the fix.


def _in_splits(rng: np.random.Generator, wanted: set[str], ratios: dict[str, float]) -> bytes:
    """A noise PNG whose content hash puts it in one of the `wanted` splits."""
    while True:
        data = _noise_png(rng)
        if assign_split(hashlib.sha256(data).hexdigest(), ratios) in wanted:
            return data


def test_a_single_class_is_refused_before_any_work(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    _raw_store(tmp_path / "raw", {f"{i}.png": ("cat", _noise_png(rng)) for i in range(40)})
    with pytest.raises(ProcessError, match=r"only 1 class \('cat'\).*at least 2.*one more class"):
        process(str(tmp_path / "raw"), str(tmp_path / "out"), _params(), "one", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("small_in", "missing"),
    [({"train"}, "val, test"), ({"train", "val"}, "test"), ({"test"}, "train, val")],
)
def test_a_class_missing_from_a_split_is_named(
    tmp_path: Path, small_in: set[str], missing: str
) -> None:
    rng = np.random.default_rng(6)
    small = {f"s{i}.png": ("small", _in_splits(rng, small_in, TEST_SPLIT)) for i in range(12)}
    _raw_store(tmp_path / "raw", _with_background(small))
    with pytest.raises(ProcessError) as caught:
        process(str(tmp_path / "raw"), str(tmp_path / "out"), _params(), "gap", workers=1)
    message = str(caught.value)
    assert f"'small' has no example in {missing}" in message
    assert "bg0" not in message and "bg1" not in message
    assert "process.split" in message and "Collect more" in message
    assert not (tmp_path / "out").exists()


def test_no_val_split_needs_no_val_examples(tmp_path: Path) -> None:
    ratios = {"train": 0.8, "val": 0.0, "test": 0.2}
    rng = np.random.default_rng(7)
    small = {f"s{i}.png": ("small", _in_splits(rng, {"train", "test"}, ratios)) for i in range(12)}
    _raw_store(tmp_path / "raw", _with_background(small))
    stats = process(
        str(tmp_path / "raw"), str(tmp_path / "out"), _params(split=ratios), "noval", workers=1
    )
    assert stats.totals["val"] == 0 and stats.counts["test"]["small"] > 0


def test_the_cli_refuses_one_class_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    _raw_store(tmp_path / "raw", {f"{i}.png": ("cat", _noise_png(rng)) for i in range(20)})
    (tmp_path / "params.yaml").write_text("process: {min_per_class: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--raw", "raw", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("process: error: ") and "only 1 class ('cat')" in line


def test_what_the_collector_kept_under_its_pixel_limit_is_not_refused_here(
    tmp_path: Path,
) -> None:
    # Regression: collect.max_pixels was raised, but the processor kept its own 40 Mpx limit.
    from collector.collect import CollectOptions, collect_source
    from collector.sources import PairsSource

    big = _encoded(Image.new("L", (6500, 6500), 200), "PNG")  # 42.25 Mpx
    # With a background of two classes that reach every split, as the processor requires.
    items = [("bg0", big), *_with_background({}).values()]
    raw = str(tmp_path / "raw")
    collected = collect_source(
        PairsSource(name="t", pairs=items), raw, CollectOptions(max_pixels=50_000_000)
    )
    assert not collected.failed
    (tmp_path / "params.yaml").write_text(
        "collect:\n  max_pixels: 50000000\n"
        f"process: {{min_per_class: 1, split: {json.dumps(TEST_SPLIT)}}}\n"
    )
    subprocess.run(
        [sys.executable, "-m", "processor", "--raw", raw, "--out", "out"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert not [r for r in stats["rejected"] if "pixel" in r["reason"]], stats["rejected"]


def test_the_collectors_size_limits_travel_in_preprocess_json(tmp_path: Path) -> None:
    """params.yaml's collect.max_bytes and collect.max_pixels are recorded for serving,
    and a raw file over them is refused with the collector's reason."""
    from common.images import byte_limit_reason

    big = _noise_png(np.random.default_rng(3)) + bytes(3000)  # trailing bytes: still valid
    files = _with_background({"big.png": ("bg0", big)})
    raw = tmp_path / "raw"
    _raw_store(raw, files)
    (tmp_path / "params.yaml").write_text(
        "collect:\n  max_bytes: 2000\n  max_pixels: 123456\n"
        f"process: {{min_per_class: 1, split: {json.dumps(TEST_SPLIT)}}}\n"
    )
    subprocess.run(
        [sys.executable, "-m", "processor", "--raw", str(raw), "--out", "out"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    spec = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert (spec["max_bytes"], spec["max_pixels"]) == (2000, 123456)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    reasons = [r["reason"] for r in stats["rejected"]]
    assert reasons == [byte_limit_reason(len(big), 2000)]
