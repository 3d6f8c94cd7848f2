"""Processing against a Dask bag doing the same decode, resize, encode and write.

The workload is benchmarks/process.py's: 5,000 distinct photo-like 256×256 JPEGs
under 10 labels, with their manifest. Each round runs, in turn:

- ours: `processor.process` as benchmarks/process.py runs it (forked workers, JPEG
  draft decoding, the input contract's checks, de-duplication, the split, PNG in
  TFRecord shards, stats.json), into a fresh folder, in this process;
- dask: peer_side/dask_process.py in the Dask environment: a `dask.bag` over the
  manifest mapping Pillow open → convert → resize (32×32, bilinear) → PNG file per
  image (at the processor's `png_compress_level`, by Pillow, whose rows are filtered
  where ours at level 0 are not), `scheduler="processes"`, 2
  workers. Its time is from before it reads the manifest (its imports excluded) to
  the last file written, as it reports it.

Prints `process_vs_dask: <median ratio>x (ours X images/s vs dask Y images/s)`, or
`process_vs_dask: unavailable (reason)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads the import path, and its common.py would hide the
# project's `common` package: import the shared modules as `versus.*` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from versus.common import alternate, ratio_line, unavailable_line  # noqa: E402
from versus.env import PeerUnavailableError, peer_python  # noqa: E402
from versus.scripts import load_benchmark  # noqa: E402

IMAGES = 5_000
WORKERS = 2
LINE = "process_vs_dask"


def ours_side(raw: Path, scratch: Path) -> Callable[[], float]:
    """One run of the processor into a fresh folder: images per second."""
    from processor.process import process

    params = load_benchmark("process").PARAMS
    runs = iter(range(1_000))

    def run() -> float:
        out = scratch / f"ours-{next(runs)}"
        started = time.perf_counter()
        stats = process(str(raw), str(out), params, "bench")
        return float(stats.examples) / (time.perf_counter() - started)

    return run


def dask_side(python: Path, raw: Path, scratch: Path) -> Callable[[], float]:
    """One run of the Dask job into a fresh folder: images per second as it times itself.

    Raises RuntimeError when the job fails or does not write every image.
    """
    params = load_benchmark("process").PARAMS
    runs = iter(range(1_000))

    def run() -> float:
        command = [str(python), str(HERE / "peer_side" / "dask_process.py"), "--raw", str(raw)]
        command += ["--out", str(scratch / f"dask-{next(runs)}"), "--size", str(params.image_size)]
        command += ["--mode", params.color_mode, "--workers", str(WORKERS)]
        command += ["--png-compress-level", str(params.png_compress_level)]  # the same zlib level
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the Dask job failed: {done.stderr.strip()[-500:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if report["images"] != IMAGES:
            raise RuntimeError(f"the Dask job wrote {report['images']} of {IMAGES} images")
        return float(report["images"]) / float(report["seconds"])

    return run


def compare(rounds: int = 3) -> list[str]:
    """Ours and the Dask bag alternately on the same raw store, `rounds` times each."""
    try:
        python = peer_python("dask")
    except PeerUnavailableError as exc:
        return [unavailable_line(LINE, str(exc))]
    with tempfile.TemporaryDirectory(prefix="versus-process-") as tmp:
        scratch = Path(tmp)
        load_benchmark("process").make_raw_store(scratch / "raw", IMAGES)
        sides = {
            "ours": ours_side(scratch / "raw", scratch),
            "dask": dask_side(python, scratch / "raw", scratch),
        }
        try:
            rates = alternate(sides, rounds)
        except RuntimeError as exc:
            return [unavailable_line(LINE, str(exc))]
    return [ratio_line(LINE, rates["ours"], rates["dask"], "dask", "images/s")]


if __name__ == "__main__":
    print("\n".join(compare(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
