"""Running ours and a peer alternately, and the lines `benchmarks/peers.py` prints.

Every comparison runs each side once per round, in turn, for several rounds, so slow
drift on a shared machine (other jobs, thermal limits) falls on both sides alike. The
printed ratio is the median of the per-round ratios, with each side's median rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

ROUNDS = 3


def alternate(
    sides: dict[str, Callable[[], float]], rounds: int = ROUNDS
) -> dict[str, list[float]]:
    """Each side's result per round, the sides run in turn in every round.

    `sides` maps a name to a run returning one figure (a rate, say); the dict's order
    is the order within a round. Returns name → `rounds` figures, in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            results[name].append(run())
    return results


def median_ratio(ours: list[float], peer: list[float]) -> float:
    """The median over rounds of ours / peer, round by round (same length lists)."""
    if len(ours) != len(peer) or not ours:
        raise ValueError("ours and peer need one figure per round each")
    return statistics.median(o / p for o, p in zip(ours, peer, strict=True))


def ratio_line(
    name: str, ours: list[float], peer: list[float], peer_name: str, unit: str = "images/s"
) -> str:
    """`name: 1.23x (ours 900 images/s vs PEER 730 images/s)`: higher is better for ours."""
    return (
        f"{name}: {median_ratio(ours, peer):.2f}x (ours {statistics.median(ours):,.0f} {unit} "
        f"vs {peer_name} {statistics.median(peer):,.0f} {unit})"
    )


def unavailable_line(name: str, reason: str) -> str:
    """The line for a comparison whose peer could not be installed or run."""
    return f"{name}: unavailable ({reason})"
