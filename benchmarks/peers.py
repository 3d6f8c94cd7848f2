"""Ours against the tools a team would use instead, side by side on this machine.

Four areas, each in `benchmarks/versus/<area>.py`:

- collect: the collector vs img2dataset (same URL list and concurrency, a loopback
  server with injected latency), at 2,000 and 10,000 URLs;
- inputs: the trainer's tf.data input vs `keras.utils.image_dataset_from_directory`
  (first epoch with the build, and steady epochs) on the digits and on 5,000
  photo-like 128×128 JPEGs;
- serve: the API vs a plain FastAPI `def` endpoint with LiteRT (1 and 2 workers),
  LitServe and BentoML with batching, on the same model, images and load generator;
- process: the processor vs a Dask bag doing the same decode, resize, encode and write.

Every comparison runs ours and the peer alternately for three rounds and prints
`name: <median ratio>x (ours X vs PEER Y)`. Peers run from cached venvs of their own
(`versus/env.py`), never from the project's; a peer that cannot be installed or run is
printed as unavailable. The serve area needs a registered model (`make run` first).

    python benchmarks/peers.py                   # every area (about 20 min)
    python benchmarks/peers.py --only collect    # one or more areas, comma-separated
    python benchmarks/peers.py --lock litserve   # re-pin one peer's requirements
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `versus` package beside us

from versus.common import ROUNDS
from versus.env import PeerUnavailableError, lock

AREAS = ("collect", "inputs", "serve", "process")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(AREAS), help="areas, comma-separated")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds")
    parser.add_argument("--lock", metavar="PEER", help="compile versus/peers/PEER.in and exit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(AREAS))
    if unknown:
        parser.error(f"unknown area {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.lock:
        try:
            print(f"peers: wrote {lock(args.lock)}")
        except PeerUnavailableError as exc:
            sys.exit(f"peers: cannot lock {args.lock}: {exc}")
        return
    for area in args.only.split(","):
        started = time.monotonic()
        print(f"== {area}", flush=True)
        module = importlib.import_module(f"versus.{area}")
        for line in module.compare(args.rounds):
            print(line, flush=True)
        print(f"({area}: {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
