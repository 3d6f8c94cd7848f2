"""Ours against the tools a team would use instead, side by side on this machine.

Run `make run` first (the serve area needs a registered model, the inputs area the
default digits), then `make bench-peers`: about 8 minutes on 2 cores for every
area once the peers' venvs exist. A first run builds them (about 1 GB; seconds from a
warm uv cache, longer when the packages come from the network).

Four areas, each in `benchmarks/versus/<area>.py`:

- collect: the collector vs img2dataset (same URL list and concurrency, a loopback
  server with injected latency), at 10,000 and 2,000 URLs;
- inputs: the trainer's tf.data input vs `keras.utils.image_dataset_from_directory`
  (first epoch with the build, and steady epochs) on the digits and on 5,000
  photo-like 128×128 JPEGs;
- serve: the API vs a plain FastAPI `def` endpoint with LiteRT (1 and 2 workers),
  LitServe and BentoML with batching, on the same model, images and load generator;
- process: the processor vs a Dask bag doing the same decode, resize, encode and write.

Every comparison runs ours and the peer alternately for three rounds and prints
`name: <ratio>x (ours X vs PEER Y; median of 3 rounds (round k))`: the median of
the per-round ratios, with the two rates of the round that gave it, and whether
the line's target in docs/performance.md is met. A legend is printed first. Peers
run from cached venvs of their own (`versus/env.py`), never from the project's; a
peer that cannot be installed or run is printed as unavailable.

    .venv/bin/python benchmarks/peers.py                  # every area
    .venv/bin/python benchmarks/peers.py --only serve,process --rounds 1
    .venv/bin/python benchmarks/peers.py --lock litserve  # re-pin one peer
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `versus` package beside us

from versus.common import LEGEND, ROUNDS
from versus.env import PEERS_DIR, PeerUnavailableError, env_root, lock

AREAS = ("collect", "inputs", "serve", "process")
# What the areas import from the project's environment (`make setup`), checked up front
# so that another Python fails with one line instead of a traceback minutes in.
PROJECT_MODULES = (
    "common", "collector", "processor", "trainer", "api_service",
    "fastapi", "numpy", "PIL", "psutil", "tensorflow", "keras",
)  # fmt: skip


def peer_names() -> list[str]:
    """The peers with a requirements source in `versus/peers/` (`--lock` takes these)."""
    return sorted(path.stem for path in PEERS_DIR.glob("*.in"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; exits 2 (argparse) on an unknown area or fewer than 1 round."""
    parser = argparse.ArgumentParser(
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog=f"The peers' venvs are kept in {env_root()} (XDG_CACHE_HOME).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(AREAS),
        metavar="AREAS",
        help=f"areas to run, comma-separated, from {', '.join(AREAS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="alternating rounds per comparison (default: %(default)s)",
    )
    parser.add_argument(
        "--lock",
        metavar="PEER",
        help=f"compile versus/peers/PEER.in into PEER.txt and exit; PEER is one of "
        f"{', '.join(peer_names())}",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(AREAS))
    if unknown:
        parser.error(f"unknown area {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def missing_module() -> str | None:
    """The first of `PROJECT_MODULES` this Python cannot import, or None."""
    return next((name for name in PROJECT_MODULES if importlib.util.find_spec(name) is None), None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.lock:
        try:
            print(f"peers: wrote {lock(args.lock)}")
        except PeerUnavailableError as exc:
            sys.exit(f"peers: cannot lock {args.lock}: {exc}")
        return
    missing = missing_module()
    if missing is not None:
        sys.exit(
            f"peers: this Python ({sys.executable}) has no module {missing!r}: run "
            "`.venv/bin/python benchmarks/peers.py` or `make bench-peers` (after `make setup`)"
        )
    print(LEGEND, flush=True)
    for area in args.only.split(","):
        started = time.monotonic()
        print(f"== {area}", flush=True)
        module = importlib.import_module(f"versus.{area}")
        for line in module.compare(args.rounds):
            print(line, flush=True)
        print(f"({area}: {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
