"""Our side of `versus/collect.py`: collect a manifest of URLs, 32 in flight.

`python collect_ours.py MANIFEST OUT` runs the collector as a user's code would call it
(`collect_source` with a manifest source; defaults but `concurrency: 32`): every image
decoded and checked with Pillow, hashed, deduplicated, written through a temporary
name and a rename, synced in batches and journaled. Exits 1 if any item failed.
"""

from __future__ import annotations

import sys

from collector.collect import CollectOptions, collect_source
from collector.fetch import FetchOptions
from collector.sources import ManifestSource

CONCURRENCY = 32


def main() -> None:
    manifest, out = sys.argv[1], sys.argv[2]
    options = CollectOptions(fetch=FetchOptions(concurrency=CONCURRENCY))
    result = collect_source(ManifestSource(name="manifest", uri=manifest), out, options)
    if result.failed:
        sys.exit(f"{len(result.failed)} failed, e.g. {result.failed[0]}")


if __name__ == "__main__":
    main()
