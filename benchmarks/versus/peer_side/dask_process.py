"""The Dask job a team would write to prepare an image folder: a bag of files mapped
through decode, resize and PNG encode, each result written to its own file.

Runs in its own environment (benchmarks/versus/peers/dask.in) and imports nothing
from the project. It reads the raw store's `manifest.jsonl` (one JSON object per
line with `path` and `label`), and for every item opens the image with Pillow,
converts it to RGB or grayscale, resizes it (bilinear) and writes
`OUT/<label>/<stem>.png` at zlib level `--png-compress-level`, on Dask's
multiprocessing scheduler. No de-duplication,
validation, split assignment, shards or statistics. Prints one JSON line:
`{"images": N, "seconds": S}`, timed from before the manifest is read (imports
excluded) to the last file written.

    python dask_process.py --raw RAW --out OUT --size 32 --mode rgb --workers 2 \
        --png-compress-level 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dask.bag as db
from PIL import Image


def convert(item: dict, raw: str, out: str, size: int, mode: str, level: int) -> int:
    """Decode, resize, encode and write one image; 1 for the count."""
    image = Image.open(Path(raw) / item["path"]).convert(mode)
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    target = Path(out) / item["label"] / (Path(item["path"]).stem + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG", compress_level=level)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--mode", choices=["rgb", "grayscale"], default="rgb")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--png-compress-level", type=int, default=6, choices=range(10))
    args = parser.parse_args()
    mode = "L" if args.mode == "grayscale" else "RGB"
    started = time.perf_counter()
    lines = (Path(args.raw) / "manifest.jsonl").read_text().splitlines()
    bag = db.from_sequence([json.loads(line) for line in lines if line.strip()])
    written = bag.map(convert, args.raw, args.out, args.size, mode, args.png_compress_level).sum()
    count = written.compute(scheduler="processes", num_workers=args.workers)
    print(json.dumps({"images": int(count), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
