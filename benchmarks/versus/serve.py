"""Serving against the tools a team would pick instead of ours.

Every server classifies the same upload with the same registered `.tflite` (the
version the serving alias names, as benchmarks/serve.py finds it) and is driven by
benchmarks/serve.py's load generator: 32 concurrent keep-alive clients posting a
multipart file to /v1/predict, a warm-up, then `SECONDS` measured. Each round runs
every server in turn (`alternate`); each line gives the round whose ratio is the
median, with that round's two rates.

- ours: `python -m api_service`, every check, metric and access log on;
- ceiling: benchmarks/serve.py's upload endpoint that returns a constant;
- fastapi-def-1w / -2w: a plain FastAPI app, sync `def` endpoint, Pillow + LiteRT
  per request, under uvicorn with 1 and 2 worker processes;
- litserve: LitServe with its batching (max_batch_size and batch_timeout: our
  max_batch and max_wait_ms, 32 and 0 ms by default);
- bentoml: BentoML with adaptive batching (max_batch_size 32, max_latency_ms 1000,
  the guide's value), a front service calling a batchable classifier service.

The peers run in their own environments (`env.peer_python`); their programs are in
`peer_side/` and import nothing from the project. A peer that cannot install or
start prints `name: unavailable (reason)`. BentoML's home (`BENTOML_HOME`, default
`~/bentoml`, where it keeps its Prometheus files) is a folder of the run's temporary
folder, removed with it.

While it runs, each server's figures of each round go to stderr: req/s counts the
answers with status 200 only; p50 and p99 are over every answer, failed ones too;
"failed" counts other statuses and broken connections (BentoML answers 503 to
requests its dispatcher cannot serve within `max_latency_ms`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads the import path, and its common.py would hide the
# project's `common` package: import the shared modules as `versus.*` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from api_service.settings import ServingSettings  # noqa: E402
from versus.common import alternate, announce, median_round, ratio_line, unavailable_line  # noqa: E402
from versus.env import PeerUnavailableError, peer_python  # noqa: E402
from versus.scripts import load_benchmark  # noqa: E402

PEER_SIDE = HERE / "peer_side"
SECONDS = 10.0
UNIT = "req/s"
# Our micro-batching defaults, given to the batching peers.
MAX_BATCH = ServingSettings.model_fields["max_batch"].default
MAX_WAIT_MS = ServingSettings.model_fields["max_wait_ms"].default
BENTOML_MAX_LATENCY_MS = 1000  # BentoML's guide's value for adaptive batching
# Said once before the servers' per-round lines (stderr), which do not explain themselves.
READING = (
    "  per round, each server in turn: req/s counts 200 answers only; p50/p99 are over every\n"
    "  answer, failed ones too; failed = other statuses and broken connections (bentoml's\n"
    f"  are 503s: requests its dispatcher cannot serve within max_latency_ms "
    f"{BENTOML_MAX_LATENCY_MS}).\n"
    "  ceiling = serve.py's upload endpoint answering a constant, no inference: FastAPI's\n"
    "  routing and upload parsing alone, the reference rate of serve_vs_ceiling."
)


@dataclass(frozen=True)
class Peer:
    """A peer server: its printed name, its line, its environment and its program."""

    name: str
    line: str
    env: str
    script: str
    args: tuple[str, ...] = ()
    home_var: str | None = None  # its variable for a folder it writes beside its runs


PEERS = (
    Peer("fastapi-def-1w", "serve_vs_fastapi_def_1w", "fastapi-litert", "fastapi_litert.py",
         ("--workers", "1")),
    Peer("fastapi-def-2w", "serve_vs_fastapi_def_2w", "fastapi-litert", "fastapi_litert.py",
         ("--workers", "2")),
    Peer("litserve", "serve_vs_litserve", "litserve", "litserve_app.py",
         ("--max-batch", str(MAX_BATCH), "--timeout-ms", str(MAX_WAIT_MS))),
    Peer("bentoml", "serve_vs_bentoml", "bentoml", "bentoml_service.py",
         ("--max-batch", str(MAX_BATCH), "--max-latency-ms", str(BENTOML_MAX_LATENCY_MS)),
         "BENTOML_HOME"),
)  # fmt: skip


@dataclass
class Runs:
    """Each server's results per round, and why a server could not run."""

    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def peer_commands(model_dir: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each available peer's command (bench_server adds --port), and why others are not."""
    commands: dict[str, list[str]] = {}
    missing: dict[str, str] = {}
    for peer in PEERS:
        try:
            python = peer_python(peer.env)
        except PeerUnavailableError as exc:
            missing[peer.name] = str(exc)
            continue
        script = str(PEER_SIDE / peer.script)
        commands[peer.name] = [str(python), script, "--model-dir", str(model_dir), *peer.args]
    return commands, missing


def side(
    name: str, command: list[str], env: dict[str, str], image: Path, runs: Runs, logs: Path
) -> Callable[[], float]:
    """A round of one server: its rate in req/s (0 once it failed; the reason is kept)."""
    bench = load_benchmark("serve")
    runs.results[name] = []

    def run() -> float:
        if name in runs.failures:
            return 0.0
        log = logs / f"{name}.log"
        try:
            result = bench.bench_server(
                name, command, env, image, seconds=SECONDS, probe_health=False, log=log
            )
        except (RuntimeError, TimeoutError, OSError) as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            runs.failures[name] = "; ".join([str(exc), *tail])
            return 0.0
        runs.results[name].append(result)
        return float(result["rate"])

    return run


def best_peer_lines(rates: dict[str, list[float]], runs: Runs, ran: list[str]) -> list[str]:
    """`serve_vs_best_peer` and `serve_p99_ms`, both from the same round.

    A round's best peer is the fastest peer of that round; the round shown is the one
    whose ratio ours / best is the median, and p99 is ours' and that peer's there.
    """
    ours = rates["ours"]
    best = [max(ran, key=lambda name: rates[name][i]) for i in range(len(ours))]
    per_round = [rates[name][i] for i, name in enumerate(best)]
    median = median_round(ours, per_round)
    peer = best[median.index]
    p99 = {name: runs.results[name][median.index]["p99_ms"] for name in ("ours", peer)}
    return [
        ratio_line("serve_vs_best_peer", ours, per_round, f"best peer {peer}", UNIT),
        f"serve_p99_ms: ours {p99['ours']:.1f} vs best peer {peer} {p99[peer]:.1f} "
        f"({load_benchmark('serve').CLIENTS} clients; the round of serve_vs_best_peer)",
    ]


def summary(rates: dict[str, list[float]], runs: Runs, missing: dict[str, str]) -> list[str]:
    """The printed lines: ours against each peer, the best peer, p99, and the ceiling."""
    lines = []
    ours = rates["ours"]
    ran = [p.name for p in PEERS if p.name in rates and p.name not in runs.failures]
    for peer in PEERS:
        reason = missing.get(peer.name) or runs.failures.get(peer.name)
        if reason:
            lines.append(unavailable_line(peer.line, reason))
        else:
            lines.append(ratio_line(peer.line, ours, rates[peer.name], peer.name, UNIT))
    if ran:
        lines += best_peer_lines(rates, runs, ran)
    lines.append(
        ratio_line("serve_vs_ceiling", ours, rates["ceiling"], "ceiling", UNIT, share=True)
    )
    return lines


def peer_env(peer: Peer, env: dict[str, str], scratch: Path) -> dict[str, str]:
    """`env` for `peer`, its home folder (if it writes one) under `scratch`."""
    if peer.home_var is None:
        return env
    return {**env, peer.home_var: str(scratch / f"{peer.name}-home")}


def compare(rounds: int = 3) -> list[str]:
    """Run ours, the ceiling and every peer alternately for `rounds` rounds; the lines.

    Raises RegistryError without a registered model (`make run` first), and
    RuntimeError when ours or the ceiling fails to serve.
    """
    bench = load_benchmark("serve")
    model_dir, image, env = bench.registered_model()
    # The peers' interpreters are their own: nothing of ours on their import path.
    base_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    commands, missing = peer_commands(model_dir)
    runs = Runs()
    print(
        f"serving {model_dir} · image {image.name} · {bench.CLIENTS} clients × {SECONDS:.0f} s"
        f" · {rounds} round{'s' if rounds > 1 else ''}\n{READING}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="versus-serve-") as tmp:
        logs = Path(tmp)
        # Ours with the batching the batching peers get, whatever the shell or .env set.
        ours_env = {**env, "MEGA_MAX_BATCH": str(MAX_BATCH), "MEGA_MAX_WAIT_MS": str(MAX_WAIT_MS)}
        sides = {
            "ours": side("ours", bench.ours_command(), ours_env, image, runs, logs),
            "ceiling": side(
                "ceiling", bench.baseline_command("ceiling", model_dir), env, image, runs, logs
            ),
        }
        for peer in PEERS:
            if peer.name in commands:
                penv = peer_env(peer, base_env, logs)
                sides[peer.name] = side(peer.name, commands[peer.name], penv, image, runs, logs)
        rates = alternate(sides, rounds, announce("", rounds))
    for ours_side in ("ours", "ceiling"):
        if ours_side in runs.failures:
            raise RuntimeError(f"{ours_side} failed: {runs.failures[ours_side]}")
    return summary(rates, runs, missing)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print("\n".join(compare(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
