"""What the processor does with odd, changed, near-duplicate, conflicting and oversized input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_builder import (
    BACKGROUND,
    TEST_SPLIT,
    encoded,
    noise_png,
    process_params,
    with_background,
    write_raw_store,
)

from processor.dedup import NearDuplicateIndex
from processor.process import ProcessError, process


def _odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "palette-transparent.png": encoded(palette, "PNG", transparency=0),
        "sixteen-bit.png": encoded(
            Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)), "PNG"
        ),
        "exif-rotated.jpg": encoded(photo.convert("RGB"), "JPEG", exif=exif.tobytes()),
        "tiny.png": encoded(Image.new("L", (4, 4), 200), "PNG"),
        "truncated.jpg": encoded(photo, "JPEG")[:300],
    }


def test_every_odd_image_kind_is_handled_or_rejected_with_a_reason(tmp_path: Path) -> None:
    odd = _odd_images()
    odd_files = {name: (f"bg{i % 2}", data) for i, (name, data) in enumerate(odd.items())}
    write_raw_store(tmp_path / "raw", with_background(odd_files))
    params = process_params(image_size=16, color_mode="rgb", min_size=8)
    stats = process(str(tmp_path / "raw"), str(tmp_path / "out"), params, "odd", workers=1)
    rejected = {item.item.rsplit(".", 1)[-1] + ":" + item.reason for item in stats.rejected}
    assert sum(stats.totals.values()) == BACKGROUND + 4, stats.rejected
    assert any("smaller than min_size 8 on a side" in r for r in rejected)
    assert any("not a readable image" in r for r in rejected)
    assert len(stats.rejected) == 2


def test_changed_file_is_rejected(tmp_path: Path) -> None:
    data = _odd_images()["cmyk.jpg"]
    write_raw_store(tmp_path / "raw", with_background({"x.jpg": ("a", data)}))
    [stored] = (tmp_path / "raw/images/a").iterdir()
    stored.write_bytes(data + b"tampered")
    with pytest.raises(ProcessError, match=r"fewer than min_per_class=1 usable items: 'a' \(0\)"):
        process(str(tmp_path / "raw"), str(tmp_path / "out"), process_params(), "x", workers=1)


def test_near_duplicates_are_dropped_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 200, (32, 32), dtype=np.uint8)
    files = {
        "a.png": ("bg0", encoded(Image.fromarray(base), "PNG")),
        "a-brighter.png": ("bg0", encoded(Image.fromarray(base + 5), "PNG")),
        "other.png": (
            "bg1",
            encoded(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)), "PNG"),
        ),
    }
    write_raw_store(tmp_path / "raw", with_background(files))
    kept = process(str(tmp_path / "raw"), str(tmp_path / "a"), process_params(), "n", workers=1)
    assert sum(kept.totals.values()) == BACKGROUND + 3
    params = process_params(near_duplicates=True, near_duplicate_distance=4)
    dropped = process(str(tmp_path / "raw"), str(tmp_path / "b"), params, "n", workers=1)
    assert sum(dropped.totals.values()) == BACKGROUND + 2
    [near] = dropped.rejected
    assert "near duplicate of images/bg0/" in near.reason


def test_near_duplicate_index_finds_within_distance() -> None:
    index = NearDuplicateIndex(max_distance=3)
    index.add(0b1011, "a")
    assert index.find(0b1011 ^ (1 << 40) ^ (1 << 63) ^ 1) == "a"
    assert index.find(0b1011 ^ 0b1111 << 20) is None


def test_the_same_image_under_two_labels_is_named(tmp_path: Path) -> None:
    data = encoded(Image.new("L", (16, 16), 128), "PNG")
    other = encoded(Image.new("L", (16, 16), 20), "PNG")
    files = {"a.png": ("bg0", data), "b.png": ("bg1", other)}
    write_raw_store(tmp_path / "raw", with_background(files))
    # The collector keeps one file per label and hash, so add the conflicting row by hand.
    manifest = tmp_path / "raw/manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    row = next(r for r in rows if r["source"] == "a.png")
    conflict = {**row, "path": row["path"].replace("/bg0/", "/bg1/"), "label": "bg1"}
    (tmp_path / "raw" / conflict["path"]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "raw" / conflict["path"]).write_bytes(data)
    manifest.write_text(manifest.read_text() + json.dumps(conflict) + "\n")
    stats = process(str(tmp_path / "raw"), str(tmp_path / "out"), process_params(), "x", workers=1)
    [rejected] = stats.rejected
    assert "labelled 'bg0' and 'bg1'" in rejected.reason


def test_what_the_collector_kept_under_its_pixel_limit_is_not_refused_here(
    tmp_path: Path,
) -> None:
    # Regression: collect.max_pixels was raised, but the processor kept its own 40 Mpx limit.
    big = encoded(Image.new("L", (6500, 6500), 200), "PNG")  # 42.25 Mpx
    # With a background of two classes that reach every split, as the processor requires.
    raw = str(tmp_path / "raw")
    write_raw_store(tmp_path / "raw", with_background({"big.png": ("bg0", big)}))
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

    big = noise_png(np.random.default_rng(3)) + bytes(3000)  # trailing bytes: still valid
    files = with_background({"big.png": ("bg0", big)})
    raw = tmp_path / "raw"
    write_raw_store(raw, files)
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
