"""Processing throughput and memory.

1. 5,000 synthetic 256×256 JPEGs: `processor.process` (forked process pool, JPEG
   draft decoding, TensorFlow-free TFRecord writer) against a naive single-process
   Pillow loop writing TFRecords with TensorFlow, in this process; TensorFlow's
   import is excluded from the baseline's time. Prints
   `process: <ratio>x (ours X/s vs baseline Y/s)`.
2. 20,000 images through `python -m processor`, sampling the resident memory of
   the whole process tree. Prints `process_peak_rss_mb: <n>`.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import psutil
from PIL import Image

from common.contracts import ManifestItem, write_manifest
from common.params import ProcessParams

# TensorFlow is imported only for the baseline, after ours ran: the processor
# forks its workers only from a process without TensorFlow.

SIZE = 256
PARAMS = ProcessParams(image_size=32, color_mode="rgb")


def make_raw_store(folder: Path, count: int) -> None:
    """`count` distinct photo-like JPEGs (gradients, a shape, noise) under 10 labels."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    items = []
    for index in range(count):
        base = np.stack(
            [np.add.outer(ramp * rng.random(), ramp * rng.random()) / 2 for _ in range(3)],
            axis=-1,
        )
        y, x = rng.integers(20, SIZE - 60, 2)
        base[y : y + 40, x : x + 40] = rng.integers(0, 255, 3)
        base += rng.normal(0, 8, base.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        label = str(index % 10)
        path = f"images/{label}/{sha}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        items.append(
            ManifestItem(
                path=path, label=label, sha256=sha, source="bench", width=SIZE, height=SIZE
            )
        )
    write_manifest(str(folder / "manifest.jsonl"), items)


def naive_baseline(raw: Path, out: Path) -> int:
    """The usual notebook loop: open, convert, resize, encode, write; one process."""
    import tensorflow as tf

    from common.tfrecord import make_example

    out.mkdir(parents=True, exist_ok=True)
    lines = (raw / "manifest.jsonl").read_text().splitlines()
    items = [ManifestItem.model_validate_json(line) for line in lines]
    labels = sorted({item.label for item in items})
    with tf.io.TFRecordWriter(str(out / "all.tfrecord")) as writer:
        for item in items:
            image = (
                Image.open(raw / item.path)
                .convert("RGB")
                .resize((32, 32), Image.Resampling.BILINEAR)
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=PARAMS.png_compress_level)
            writer.write(make_example(buffer.getvalue(), item.sha256, labels.index(item.label)))
    return len(items)


def peak_tree_rss_mb(command: list[str], cwd: Path) -> float:
    """Run `command` and sample the summed RSS of it and its children until it exits."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(process.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(stderr.decode()[-2000:])
    return peak / 2**20


def main() -> None:
    from processor.process import process

    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        root = Path(tmp)
        make_raw_store(root / "raw5k", 5_000)
        started = time.perf_counter()
        stats = process(str(root / "raw5k"), str(root / "ours"), PARAMS, "bench")
        ours = stats.examples / (time.perf_counter() - started)
        import tensorflow  # noqa: F401 - the baseline's import is not part of its time

        started = time.perf_counter()
        count = naive_baseline(root / "raw5k", root / "naive")
        baseline = count / (time.perf_counter() - started)
        print(f"process: {ours / baseline:.2f}x (ours {ours:,.0f}/s vs baseline {baseline:,.0f}/s)")

        make_raw_store(root / "raw20k", 20_000)
        (root / "params.yaml").write_text("process: {image_size: 32, color_mode: rgb}\n")
        peak = peak_tree_rss_mb(
            [sys.executable, "-m", "processor", "--raw", "raw20k", "--out", "out20k"], root
        )
        print(f"process_peak_rss_mb: {peak:.0f} (20,000 images, main process and workers)")


if __name__ == "__main__":
    main()
