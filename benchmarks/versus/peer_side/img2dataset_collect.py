"""Download a URL list with img2dataset; runs in img2dataset's own venv (no project imports).

`python img2dataset_collect.py URLS OUT --processes P --threads T` writes the images
as files under OUT (img2dataset's `files` output: `OUT/<shard>/<key>.<ext>` beside a
`.json` per image and a parquet per shard). Its fastest configuration for a
like-for-like collection: no resizing and no re-encoding (so no decode either), no
retries (the server never fails), default SHA-256 per image.
"""

from __future__ import annotations

import argparse
import math

from img2dataset import download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", help="a text file, one URL a line")
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    with open(args.urls, encoding="utf-8") as handle:
        count = sum(1 for line in handle if line.strip())
    # One shard per process at least, so every process has work from the start.
    per_shard = max(1, math.ceil(count / args.processes))
    download(
        url_list=args.urls,
        output_folder=args.out,
        input_format="txt",
        output_format="files",
        processes_count=args.processes,
        thread_count=args.threads,
        number_sample_per_shard=per_shard,
        resize_mode="no",
        disable_all_reencoding=True,
        timeout=30,
        retries=0,
        enable_wandb=False,
    )


if __name__ == "__main__":
    main()
